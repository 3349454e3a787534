"""The base class every fastoptim optimizer derives from.

An algorithm is a subclass that supplies four small pieces and nothing else:

* ``STATE_KEYS`` (or :meth:`Optimizer.state_keys`): the names of its zero-initialised per-parameter
  buffers, in the order its rule takes them;
* :meth:`Optimizer.check_group`: validation of its own hyperparameters;
* :meth:`Optimizer.scalars`: the per-step Python scalars (bias corrections, step sizes);
* :meth:`Optimizer.rule`: the elementwise maths, written once against the primitives of
  :mod:`fastoptim.runners.ops`.

The base class owns param groups and their validation and the step's dispatch. One ``step()``:
:func:`~fastoptim.bucketing.prepare_buckets` initialises missing state, counts the step and
buckets the parameters by device, dtype and step; the bucket's runner
(:mod:`fastoptim.runners`) applies :func:`~fastoptim.runners.apply.apply_rule`, which adds weight
decay (:mod:`fastoptim.weight_decay`) and low precision (:mod:`fastoptim.precision`) around the
rule. Reducing algorithms go through :mod:`fastoptim.reduction` instead; gradient release steps
one parameter at a time (:mod:`fastoptim.gradient_release`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor

from fastoptim import runners
from fastoptim.bucketing import create_state, creates_state_only, prepare_buckets
from fastoptim.distributed import Sharding, find_sharding, is_dtensor
from fastoptim.gradient_release import release_step
from fastoptim.reduction import ONE_PASS_KEY, informative_record, reduce_and_update, restore_record
from fastoptim.runners import BACKENDS, PLANNED_BACKENDS, Bucket, get_runner
from fastoptim.runners.apply import apply_rule
from fastoptim.runners.ops import Workspace
from fastoptim.state_formats import translate
from fastoptim.stochastic_rounding import STATE_KEY as ROUNDING_KEY
from fastoptim.stochastic_rounding import RoundingSource
from fastoptim.validation import check_bool, check_nonnegative
from fastoptim.weight_decay import check_weight_decay, decay_terms

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Complex dtypes, for the algorithms whose official code takes them (:attr:`Optimizer.COMPLEX`).
COMPLEX_DTYPES = (torch.complex64, torch.complex128)

#: What a rule returns: a function adding the update to its argument, and the new states.
RuleResult = tuple[Callable[[Any], Any], tuple[Any, ...]]
#: One param group's part of a step: the group and the buckets of its parameters with gradients.
Plan = tuple[dict[str, Any], list[Bucket]]


def hyperparameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()``, without ``self`` and ``params``."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


def _choose_backend(backend: Any, foreach: bool | None) -> str:
    if backend in PLANNED_BACKENDS:
        raise ValueError(f"backend={backend!r} is not available in this release; choose one of {BACKENDS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_bool(foreach, "foreach", allow_none=True)
    if foreach is None:
        return backend
    alias = "foreach" if foreach else "loop"
    if backend not in ("auto", alias):
        raise ValueError(f"foreach={foreach} contradicts backend={backend!r}; pass only one of them")
    return alias


def _split_names(params: list[Any]) -> tuple[list[Any], list[str] | None]:
    """``(name, tensor)`` pairs (``model.named_parameters()``, torch >= 2.6) -> tensors and names."""
    named = [isinstance(p, tuple) for p in params]
    if not any(named):
        return params, None
    if not all(named):
        raise ValueError("params: give all parameters of a group with names or none (some names are missing)")
    return [p for _, p in params], [name for name, _ in params]


#: The algorithm interface and the machinery's entry points: what an algorithm implements and the
#: runners call, not what a training loop uses (``docs/architecture.md`` documents them).
INTERNAL_HOOKS = frozenset(
    {
        "state_keys",
        "init_state",
        "check_group",
        "scalars",
        "global_scalars",
        "counts_in_reduction",
        "update_skipped",
        "begin_reduction",
        "sharded_statistics",
        "begin_group",
        "accumulate",
        "finalize",
        "update",
        "rule",
        "run_buckets",
        "weight_decay_terms",
        "workspace",
        "release_step",
    }
)


class _HidesHooks(type):
    """Leaves :data:`INTERNAL_HOOKS` out of ``dir(cls)``, so that ``help()`` shows the optimizer's API."""

    def __dir__(cls) -> list[str]:
        return [name for name in super().__dir__() if name not in INTERNAL_HOOKS]


class Optimizer(torch.optim.Optimizer, metaclass=_HidesHooks):
    """A ``torch.optim.Optimizer`` whose maths is one rule shared by every execution path.

    Args:
        params: Tensors to optimise, or dicts defining parameter groups.
        kahan_sum: Kahan-compensated parameter updates. None (default) turns it on for bfloat16
            and float16 parameters; it has no effect on float32/float64 parameters.
        backend: ``"auto"`` (default: per-tensor loop on CPU, foreach elsewhere), ``"loop"`` or
            ``"foreach"``.
        foreach: Alias of ``backend``: True means ``"foreach"``, False ``"loop"``.
        gradient_release: Allow :func:`fastoptim.prepare_for_gradient_release` to run the step
            for each parameter inside backward, as soon as its gradient is ready.
        shard_group: The ``torch.distributed.ProcessGroup`` over which the parameters are
            sharded, where the parameters do not show it (``ZeroRedundancyOptimizer``, a
            partition of one's own): statistics over more than one element are all-reduced over
            it. None (default): detected from DTensor parameters (FSDP2); see
            :mod:`fastoptim.distributed`.
        maximize: Maximize the objective: step along the gradient instead of against it, as
            torch.optim's ``maximize`` (default: False; a per-group option).
        stochastic_rounding: Write bf16 parameters stochastically rounded (unbiased, no
            compensation buffer; see :mod:`fastoptim.stochastic_rounding`) instead of with Kahan
            summation (default: False; a per-group option; not with ``kahan_sum=True`` nor fp16
            parameters).
        **defaults: The algorithm's hyperparameters, the default options of every param group.
            Subclasses pass ``**hyperparameters(locals())``, so that their signature is the
            single list of arguments.
    """

    #: Per-parameter buffers, zero-initialised, in the order the rule receives them.
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    #: True for algorithms with a global reduction: ``accumulate`` / ``finalize`` / ``update``
    #: replace ``rule`` (D-Adaptation, Prodigy).
    REDUCES: ClassVar[bool] = False
    #: True for reducing algorithms whose ``update`` needs nothing ``finalize`` computes (it
    #: returns ``{}`` or None): both phases then run in one pass over memory whenever the step's
    #: reduction cannot find the "no information" that makes ``finalize`` skip the update (see
    #: :func:`fastoptim.reduction.reduce_and_update`).
    ONE_PASS: ClassVar[bool] = False
    #: For :attr:`ONE_PASS` algorithms: the state buffers whose values decide whether the next
    #: reduction can find "no information" (and whatever else a one-pass step takes from the last
    #: step), so the only ones whose changes between steps are watched; None watches them all.
    #: Reading a state's version counter costs about 1 µs once a step has flushed the caches.
    REDUCTION_STATE_KEYS: ClassVar[tuple[str, ...] | None] = None
    #: True for reducing algorithms whose ``update`` also advances states (Prodigy's moments,
    #: moved out of the reduction's pass, which then reads fewer tensors): the update phase then
    #: runs, advancing the states without moving the parameters, also during optimizer
    #: accumulation and on a step ``finalize`` skips.
    UPDATE_ADVANCES_STATE: ClassVar[bool] = False
    #: Extra per-parameter buffers for sparse gradients; None (default) rejects sparse gradients.
    #: Sparse gradients run on the loop runner and get no L2 term (as the official DAdaptAdaGrad).
    SPARSE_STATE_KEYS: ClassVar[tuple[str, ...] | None] = None
    #: Optimizer attributes (beyond groups and state) that pickling and deepcopy keep.
    PICKLED_ATTRIBUTES: ClassVar[tuple[str, ...]] = ()
    #: True where the official code steps complex parameters as torch.optim does, through their
    #: real views (each real and imaginary part an element of its own).
    COMPLEX: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        gradient_release: bool = False,
        shard_group: Any = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
        **defaults: Any,
    ) -> None:
        if isinstance(params, (set, Tensor)):
            raise TypeError(
                f"params must be an ordered iterable of tensors or dicts, got {type(params).__name__}"
            )
        check_bool(kahan_sum, "kahan_sum", allow_none=True)
        check_bool(gradient_release, "gradient_release")
        if gradient_release and self.REDUCES:
            raise ValueError(
                f"{type(self).__name__} estimates its step size from sums over all parameters at every "
                "step, which gradient_release=True cannot provide while each parameter steps inside "
                "backward; use optimizer.step()"
            )
        self.backend = _choose_backend(backend, foreach)
        self.gradient_release = gradient_release
        self.optimizer_accumulation = False
        self._group_index: dict[int, int] | None = None
        self._workspaces = threading.local()
        self._informative_reduction: tuple[Any, ...] | None = None
        self.shard_group = shard_group
        #: Which ranks share the step's statistics (:mod:`fastoptim.distributed`); None: this one alone.
        self.sharding: Sharding | None = None
        self.has_dtensors = False
        #: Ids of the parameters gradient release stepped since the last step() whose gradient DDP
        #: keeps (see :mod:`fastoptim.gradient_release`): step() does not step them again.
        self.released: set[int] = set()
        self._rounding: RoundingSource | None = None
        options = {"kahan_sum": kahan_sum, "maximize": maximize, "stochastic_rounding": stochastic_rounding}
        super().__init__(params, {**defaults, **options})

    # ------------------------------------------------------------------ algorithm interface

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The state buffers a parameter of ``group`` needs; ``STATE_KEYS`` unless overridden."""
        return self.STATE_KEYS

    def init_state(self, group: dict[str, Any], param: Tensor, key: str) -> Tensor:
        """The initial value of state buffer ``key``; zeros shaped like ``param`` by default."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    def check_group(self, group: dict[str, Any]) -> None:
        """Validates the algorithm's own hyperparameters in ``group``; raises ValueError."""

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        """Returns the algorithm's scalars for a parameter at ``step`` (1 at the first update)."""
        return {}

    def global_scalars(self) -> dict[str, Any]:
        """Scalars computed once per ``step()`` over every group, before any update.

        For statistics over all gradients (Adan's global clipping). Called once per parameter
        instead under gradient release, where algorithms that need a global statistic refuse to
        run (they check at construction).
        """
        return {}

    def counts_in_reduction(self, group: dict[str, Any]) -> Any:
        """The options of ``group`` that decide whether its parameters count in the reduction.

        Part of what makes one step's reduction comparable with the last (``ONE_PASS``); a
        group with lr 0 does not count in most reducing algorithms.
        """
        return float(group["lr"]) > 0.0

    def update_skipped(self, params: list[Tensor]) -> None:
        """Reducing algorithms: called when ``finalize`` skipped the update of ``params``."""

    def begin_reduction(self, buckets: list[Bucket], one_pass: bool) -> None:
        """Reducing algorithms: called before each step's reduction runs over ``buckets``.

        Args:
            buckets: Every bucket the reduction runs over (their ``scalars`` may be changed).
            one_pass: Whether the update rides along (:attr:`ONE_PASS`): the states are as the
                last step, whose reduction was informative, left them.
        """

    def sharded_statistics(self, plans: list[Plan]) -> contextlib.AbstractContextManager[None]:
        """What an algorithm decides over whole sharded weights before their step runs.

        The step runs inside the returned context. AdamP and SGDP decide their projections here
        (:func:`fastoptim.projection.sharded_projections`); the default does nothing.
        """
        return contextlib.nullcontext()

    def begin_group(self, group: dict[str, Any]) -> None:
        """Called once per group at every ``step()``, even when no parameter has a gradient."""

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], Any]:
        """Reducing algorithms, phase one: ``(partial sums or None, new_state, step_into or None)``.

        Partial sums are 0-d device tensors (lists of them in the foreach runner); the machinery
        adds them up over every parameter of every group, on the device, in float64. A
        ``step_into`` returned here moves the parameter at once, with this step's scalars.
        """
        raise NotImplementedError

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        """Reducing algorithms: turns the global sums into phase-two scalars (None: no update).

        ``sums`` is None when no parameter contributed.
        """
        raise NotImplementedError

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        """Reducing algorithms, phase two: ``(step_into, new_state)`` as :meth:`rule` returns."""
        raise NotImplementedError

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        """The update: returns ``(step_into, new_state)``; see :mod:`fastoptim.runners.ops`.

        ``step_into(t)`` adds the parameter update to ``t`` and returns it; the machinery calls it
        on the parameter, or on the Kahan buffer, after any decoupled decay, so it must not read
        ``param``. ``param`` keeps its dtype (bf16 stays bf16), ``grad`` and ``state`` are float32
        or float64. ``s`` holds the algorithm's scalars plus ``lr``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ param groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group after checking its tensors and hyperparameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param groups must be dicts, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("params must be an ordered collection of tensors, not a set")
        params, names = _split_names(list(params))
        if self.param_groups and ("param_names" in self.param_groups[0]) != (names is not None):
            raise ValueError(
                "params: give every param group's parameters with names (model.named_parameters()) "
                "or none of them"
            )
        groups = enumerate(self.param_groups)
        where = {id(p): (g, i) for g, group in groups for i, p in enumerate(group["params"])}
        this = len(self.param_groups)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params must contain only tensors, got {type(p).__name__}")
            if p.dtype in COMPLEX_DTYPES and not self.COMPLEX:
                raise TypeError(
                    f"params: {type(self).__name__} does not step complex parameters (its official code does "
                    "not); Adam, AdamW, SGD, ADOPT and Adan do, through real views as torch.optim"
                )
            if p.dtype not in SUPPORTED_DTYPES + COMPLEX_DTYPES:
                raise TypeError(f"params: dtype {p.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
            if id(p) in where:
                g, j = where[id(p)]
                place = "earlier in this group" if g == this else f"in param group {g}"
                raise ValueError(f"params: parameter {i} of this group is already parameter {j} {place}")
            where[id(p)] = (this, i)
        group = {**param_group, "params": params}
        if names is not None:
            group["param_names"] = names
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check_common(group)
        self.check_group(group)
        self._detect_sharding(params)
        super().add_param_group(group)
        self._group_index = None
        self._positions = None

    def _detect_sharding(self, new: list[Tensor]) -> None:
        """Sets :attr:`sharding` for the parameters so far and ``new`` (raises before any change)."""
        every = [p for group in self.param_groups for p in group["params"]] + new
        fsdp_in_use = bool(self.defaults.get("fsdp_in_use", False))
        self.sharding = find_sharding(every, self.shard_group, fsdp_in_use)
        self.has_dtensors = any(map(is_dtensor, every))

    def _check_common(self, group: dict[str, Any]) -> None:
        check_nonnegative(group["lr"], "lr")
        check_bool(group["kahan_sum"], "kahan_sum", allow_none=True)
        check_bool(group.get("maximize", False), "maximize")
        rounding = group.get("stochastic_rounding", False)
        check_bool(rounding, "stochastic_rounding")
        if rounding and group["kahan_sum"] is True:
            raise ValueError(
                "stochastic_rounding=True with kahan_sum=True: choose one way to keep small updates"
            )
        if rounding and any(p.dtype == torch.float16 for p in group["params"]):
            raise ValueError("stochastic_rounding is for bf16 parameters; fp16 parameters keep kahan_sum")
        check_weight_decay(group)

    # ------------------------------------------------------------------ stepping

    @torch._disable_dynamo  # as torch.optim's own zero_grad and state_dict: see below
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimisation step on every parameter that has a gradient.

        ``torch.compile(optimizer.step)``, torch's recipe for compiling an optimizer, runs this
        step as it is: dynamo skips it (tracing it would recompile as schedulers and steps change
        the scalars). ``backend="compiled"`` is how fastoptim compiles its steps.

        Args:
            closure: Re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if creates_state_only(self):  # torch.distributed.checkpoint's state-creating step
            create_state(self)
            return loss
        update_params = not self.optimizer_accumulation
        plans = self._plans()
        with self.sharded_statistics(plans):
            if self.REDUCES:
                reduce_and_update(self, plans, update_params)
                return loss
            for _, buckets in plans:
                self.run_buckets(buckets, self.backend, update_params, apply_rule)
        return loss

    def _plans(self) -> list[Plan]:
        """Each group with gradients and its buckets (state initialised, step counted)."""
        shared = self.global_scalars()
        released, self.released = self.released, set()  # stepped inside backward (under DDP)
        plans = []
        for group in self.param_groups:
            self.begin_group(group)
            params = [p for p in group["params"] if p.grad is not None and id(p) not in released]
            if params:
                plans.append((group, prepare_buckets(self, group, params, shared)))
        return plans

    def run_buckets(self, buckets: list[Bucket], backend: str, update_params: bool, apply: Any) -> list[Any]:
        """Runs ``apply`` over ``buckets`` on ``backend``; returns what the runners returned."""
        results = []
        for bucket in buckets:
            runner = get_runner(backend, bucket.device, sparse=bucket.sparse)
            results += runner.run(self, bucket, update_params, apply)
        return results

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        """Returns the L2 coefficient and the decoupled decay rate the machinery applies.

        See :func:`fastoptim.weight_decay.decay_terms`. Algorithms with a decay rule of their
        own override this and return zeros for the part they handle in their rule.
        """
        return decay_terms(group, lr)

    @property
    def rounding(self) -> RoundingSource:
        """The seeds of stochastic rounding (made on first use: it draws from torch's generator)."""
        if self._rounding is None:
            self._rounding = RoundingSource()
        return self._rounding

    @property
    def workspace(self) -> Workspace:
        """Scratch tensors of the loop runner, one set per thread.

        Autograd runs gradient-release hooks on one thread per device.
        """
        workspace = getattr(self._workspaces, "workspace", None)
        if workspace is None:
            workspace = self._workspaces.workspace = Workspace()
        return workspace

    def release_step(self, param: Tensor, grad: Tensor | None = None) -> None:
        """Steps one parameter inside backward (see :mod:`fastoptim.gradient_release`)."""
        release_step(self, param, grad)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict()``, plus what a one-pass step needs to resume.

        For :attr:`ONE_PASS` algorithms whose last reduction was informative, the entry
        :data:`~fastoptim.reduction.ONE_PASS_KEY` names the parameters it summed over, so that the
        resumed run's next step is the same one pass the uninterrupted run makes.
        """
        state_dict = super().state_dict()
        record = informative_record(self)
        if record is not None:
            state_dict[ONE_PASS_KEY] = record
        if self._rounding is not None:
            state_dict[ROUNDING_KEY] = self._rounding.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a ``state_dict()`` as ``torch.optim.Optimizer.load_state_dict`` does.

        What the runners keep of the replaced states (the compiled backend's aliases) is dropped
        with them, so that their memory is freed now, not at the next step (a resumed run would
        otherwise hold two copies of the optimizer's state through its first forward and backward).
        """
        state_dict = translate(self, dict(state_dict))  # also other libraries' (fastoptim.state_formats)
        record = state_dict.pop(ONE_PASS_KEY, None)
        rounding = state_dict.pop(ROUNDING_KEY, None)
        super().load_state_dict(state_dict)
        if rounding is not None:
            self.rounding.load_state_dict(rounding)
        runners.forget(self)
        restore_record(self, record)

    def __getstate__(self) -> dict[str, Any]:
        kept = ("backend", "gradient_release", "optimizer_accumulation", *self.PICKLED_ATTRIBUTES)
        return {**super().__getstate__(), **{name: getattr(self, name) for name in kept}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("gradient_release", False)
        self.__dict__.setdefault("optimizer_accumulation", False)
        self._group_index = None
        self._workspaces = threading.local()
        self._informative_reduction = None
        self.released = set()
        self.__dict__.setdefault("_rounding", None)
        self.shard_group = None  # process groups do not pickle; DTensor sharding is found again
        self._detect_sharding([])
