"""The base class every fastoptim optimizer derives from.

An algorithm is a subclass that supplies four small pieces and nothing else:

* ``STATE_KEYS`` (or :meth:`Optimizer.state_keys`): the names of its zero-initialised per-parameter
  buffers, in the order its rule takes them;
* :meth:`Optimizer.check_group`: validation of its own hyperparameters;
* :meth:`Optimizer.scalars`: the per-step Python scalars (bias corrections, step sizes);
* :meth:`Optimizer.rule`: the elementwise maths, written once against the primitives of
  :mod:`fastoptim.runners.ops`.

The base class owns everything else: param groups and validation, lazy state initialisation, the
per-parameter step counter, bucketing by device/dtype/step, backend dispatch, weight decay (L2,
decoupled, fully decoupled), low precision with Kahan summation, optimizer accumulation and the
per-parameter step that gradient release runs inside backward.
"""

from __future__ import annotations

import operator
import threading
import warnings
from collections.abc import Callable, Iterable
from itertools import chain
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor

from fastoptim.precision import is_low_precision
from fastoptim.runners import BACKENDS, PLANNED_BACKENDS, Bucket, get_runner
from fastoptim.runners.apply import apply_accumulate, apply_one_pass, apply_rule, apply_update
from fastoptim.runners.compiled_chunks import forget_kept_inputs
from fastoptim.runners.compiled_direct import StackedPartials
from fastoptim.runners.ops import Workspace
from fastoptim.validation import check_bool, check_nonnegative, check_positive

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: What a rule returns: a function adding the update to its argument, and the new states.
RuleResult = tuple[Callable[[Any], Any], tuple[Any, ...]]
#: A tensor's version counter (bumped by every in-place change).
_VERSION = operator.attrgetter("_version")
#: One param group's part of a step: the group and the buckets of its parameters with gradients.
Plan = tuple[dict[str, Any], list[Bucket]]


def _sum_partials(results: list[Any]) -> list[float] | None:
    """Adds up the partial sums of every tensor, on the device and in float64; one host sync.

    ``results`` holds, per tensor (or per list of tensors, from the foreach runner), None or a
    tuple of partial sums (each a 0-d tensor, or a list of them), or per compiled chunk a
    :class:`~fastoptim.runners.compiled_direct.StackedPartials` of its tensors' sums: one tensor
    instead of a 0-d tensor per tensor and sum, which made a 1000-tensor DAdaptSGD step about
    2 ms (6%) slower to allocate, hand back and stack.
    """
    stacked = [result for result in results if isinstance(result, StackedPartials)]
    rows = [result for result in results if result is not None and not isinstance(result, StackedPartials)]
    if not rows and not stacked:
        return None
    columns: list[Any] = list(zip(*rows, strict=True))
    if any(isinstance(value, list) for column in columns for value in column):
        columns = [
            [t for value in column for t in (value if isinstance(value, list) else [value])]
            for column in columns
        ]
    if not stacked:
        return torch.stack([torch.stack(column).to(torch.float64).sum() for column in columns]).tolist()
    width = stacked[0].width
    if any(part.width != width for part in stacked) or (columns and len(columns) != width):
        raise RuntimeError("the tensors of one step returned different numbers of partial sums")
    matrices = [part.values.view(-1, width) for part in stacked]
    if columns:
        matrices.append(torch.stack([torch.stack(column).to(torch.float64) for column in columns], dim=1))
    return torch.cat(matrices).t().contiguous().sum(dim=1).tolist()


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


class Optimizer(torch.optim.Optimizer):
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
    #: ``Optimizer._reduce_and_update``).
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
    #: True when the rule needs each parameter's shape (AdamP's projection); otherwise the
    #: compiled runner passes flattened tensors, so that one graph serves every shape.
    NEEDS_SHAPES: ClassVar[bool] = False
    #: True when the rule takes an optional last state, a scratch buffer for an update its step
    #: reads twice, and returns the update as its new value (AdamP); the compiled runner passes
    #: one for the weights where that is faster (:mod:`fastoptim.runners.update_scratch`).
    STAGES_UPDATE: ClassVar[bool] = False
    #: Scalars the compiled runner passes as float64 whatever the dtype (others are float32 for
    #: all but float64 parameters): those given to torch functions that take only a Python float,
    #: which dynamo accepts as a float64 0-d tensor only (AdamP's ``eps`` and ``wd_ratio``).
    FLOAT64_SCALARS: ClassVar[tuple[str, ...]] = ()
    #: Optimizer attributes (beyond groups and state) that pickling and deepcopy keep.
    PICKLED_ATTRIBUTES: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        gradient_release: bool = False,
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
        super().__init__(params, {**defaults, "kahan_sum": kahan_sum})

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
        params = list(params)
        seen: set[int] = set()
        for group in self.param_groups:
            seen.update(id(p) for p in group["params"])
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"params must contain only tensors, got {type(p).__name__}")
            if p.dtype not in SUPPORTED_DTYPES:
                raise TypeError(f"params: dtype {p.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
            if id(p) in seen:
                raise ValueError("params: a parameter appears more than once across parameter groups")
            seen.add(id(p))
        group = {**param_group, "params": params}
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check_common(group)
        self.check_group(group)
        super().add_param_group(group)
        self._group_index = None

    def _check_common(self, group: dict[str, Any]) -> None:
        check_nonnegative(group["lr"], "lr")
        check_nonnegative(group.get("weight_decay", 0.0), "weight_decay")
        check_bool(group["kahan_sum"], "kahan_sum", allow_none=True)
        for flag in ("decouple_wd", "decouple_lr"):
            if flag in group:
                check_bool(group[flag], flag)
        if group.get("decouple_lr"):
            if group.get("max_lr") is None:
                group["max_lr"] = float(group["lr"])
            try:
                check_positive(group["max_lr"], "max_lr")
            except ValueError as error:
                raise ValueError(
                    f"{error}: decouple_lr=True divides the learning rate by max_lr; "
                    "pass max_lr= the peak of your learning-rate schedule"
                ) from None
        elif group.get("max_lr") is not None:
            check_positive(group["max_lr"], "max_lr")

    # ------------------------------------------------------------------ stepping

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimisation step on every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update_params = not self.optimizer_accumulation
        shared = self.global_scalars()
        plans = []
        for group in self.param_groups:
            self.begin_group(group)
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                plans.append((group, self._prepare_buckets(group, params, shared)))
        if not self.REDUCES:
            for _, buckets in plans:
                self._run(buckets, self.backend, update_params, apply_rule)
            return loss
        self._reduce_and_update(plans, update_params)
        return loss

    def _reduce_and_update(self, plans: list[Plan], update_params: bool) -> None:
        """A reducing algorithm's step: the reduction, ``finalize``, then the update.

        ``finalize`` skips the update when the reduction finds no information (the official
        code returns early when a sum over the states ``s`` is zero), so the update of a
        :attr:`ONE_PASS` algorithm rides along with the reduction only when the sum cannot be
        zero: the last step's sum was nonzero, over the same parameters and groups, and nothing
        has touched their states since (same tensors, same version counters). The new sum is then
        zero only if every element of ``s`` cancels exactly; should that happen, the update is
        already done and a warning says so. The compiled backend runs the two-phase steps (the
        first, and those after a change) on the loop runner, so that it compiles one graph.
        """
        one_pass = self.ONE_PASS and self._informative_reduction == self._reduction_inputs(plans)
        self.begin_reduction([bucket for _, buckets in plans for bucket in buckets], one_pass)
        apply = apply_one_pass if one_pass else apply_accumulate
        backend = self.backend
        if self.ONE_PASS and not one_pass and backend == "compiled":
            backend = "loop"  # first and fallback steps are rare: not worth compiling two more graphs
        partials = [r for _, buckets in plans for r in self._run(buckets, backend, update_params, apply)]
        final = self.finalize(_sum_partials(partials))
        if final is None and one_pass:
            warnings.warn(
                f"{type(self).__name__}: the states s cancelled to exactly zero, so the official code "
                "would have skipped this step's update, which fastoptim had already applied in one pass",
                RuntimeWarning,
                stacklevel=4,
            )
        elif final is None:
            if self.UPDATE_ADVANCES_STATE:  # the states advance, the parameters stay (rare: eagerly)
                for _, buckets in plans:
                    self._run(buckets, "loop", False, apply_update)
            self.update_skipped([p for _, buckets in plans for bucket in buckets for p in bucket.params])
        elif not one_pass:
            for _, buckets in plans:
                for bucket in buckets:
                    bucket.scalars.__dict__.update(final)
                self._run(buckets, backend, update_params, apply_update)
        informative = self.ONE_PASS and final is not None
        self._informative_reduction = self._reduction_inputs(plans) if informative else None

    def _reduction_inputs(self, plans: list[Plan]) -> tuple[Any, ...]:
        """What the reduction sums over: groups, how they count, their parameters' states.

        The states are those of the parameters with gradients (:attr:`REDUCTION_STATE_KEYS` of
        them): which tensors, and their version counters (in-place changes such as
        ``restart_opt`` bump them).
        """
        inputs = []
        for group, buckets in plans:
            if self.REDUCTION_STATE_KEYS is None:
                columns = [column for bucket in buckets for column in bucket.states]
            else:
                keys = self.state_keys(group)
                watched = [keys.index(key) for key in self.REDUCTION_STATE_KEYS]
                columns = [bucket.states[index] for bucket in buckets for index in watched]
            states = list(chain.from_iterable(columns))
            versions = tuple(map(_VERSION, states))
            inputs.append((id(group), self.counts_in_reduction(group), tuple(map(id, states)), versions))
        return tuple(inputs)

    def _run(self, buckets: list[Bucket], backend: str, update_params: bool, apply: Any) -> list[Any]:
        results = []
        for bucket in buckets:
            runner = get_runner("loop" if bucket.sparse else backend, bucket.device)
            results += runner(self, bucket, update_params, apply)
        return results

    def _prepare_buckets(
        self, group: dict[str, Any], params: list[Tensor], shared: dict[str, Any]
    ) -> list[Bucket]:
        """Checks gradients, initialises missing state, counts the step, buckets the parameters.

        Buckets group parameters by (step, device, dtype, sparse gradient): the unit the runners
        work on.
        """
        if self.SPARSE_STATE_KEYS is None and any(p.grad.is_sparse for p in params):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        lr = float(group["lr"])
        dense_keys = self.state_keys(group)
        kahan_allowed = group["kahan_sum"] is not False
        buckets: dict[tuple[int, torch.device, torch.dtype, bool], Bucket] = {}
        for p in params:
            sparse = p.grad.is_sparse
            keys = (*dense_keys, *self.SPARSE_STATE_KEYS) if sparse else dense_keys
            state = self.state[p]
            for key in keys:
                if key not in state:
                    state[key] = self.init_state(group, p, key)
            step = state["step"] = state.get("step", 0) + 1
            bucket = buckets.get((step, p.device, p.dtype, sparse))
            if bucket is None:
                bucket = self._new_bucket(group, step, lr, p, len(keys), kahan_allowed, shared)
                buckets[(step, p.device, p.dtype, sparse)] = bucket
            bucket.params.append(p)
            bucket.grads.append(p.grad)
            for column, key in zip(bucket.states, keys, strict=True):
                column.append(state[key])
            if bucket.kahan_comps is not None:
                if "kahan_comp" not in state:
                    state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bucket.kahan_comps.append(state["kahan_comp"])
        return list(buckets.values())

    def _new_bucket(
        self,
        group: dict[str, Any],
        step: int,
        lr: float,
        p: Tensor,
        n_states: int,
        kahan_allowed: bool,
        shared: dict[str, Any],
    ) -> Bucket:
        low_precision = is_low_precision(p.dtype)
        sparse = p.grad.is_sparse
        l2, decay_rate = self.weight_decay_terms(group, lr)
        if sparse:
            l2 = 0.0
        scalars = SimpleNamespace(lr=lr, l2=l2, decay_rate=decay_rate, low_precision=low_precision)
        scalars.__dict__.update(shared)
        scalars.__dict__.update(self.scalars(group, step, lr))
        return Bucket(
            device=p.device,
            dtype=p.dtype,
            scalars=scalars,
            states=[[] for _ in range(n_states)],
            kahan_comps=[] if low_precision and kahan_allowed else None,
            sparse=sparse,
        )

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        """Returns the L2 coefficient and the decoupled decay rate the machinery applies.

        The L2 coefficient is added to the gradient before the rule; the decoupled rate is
        ``lr * wd`` (``decouple_wd``), or ``lr / max_lr * wd`` (``decouple_lr``), applied with the
        parameter write. Exactly one of them is nonzero, or neither. Algorithms with a decay rule
        of their own override this and return zeros for the part they handle in their rule.
        """
        weight_decay = group.get("weight_decay", 0.0)
        if not weight_decay:
            return 0.0, 0.0
        if group.get("decouple_lr"):
            return 0.0, lr / float(group["max_lr"]) * weight_decay
        if group.get("decouple_wd"):
            return 0.0, lr * weight_decay
        return weight_decay, 0.0

    @property
    def workspace(self) -> Workspace:
        """Scratch tensors of the loop runner, one set per thread.

        Autograd runs gradient-release hooks on one thread per device.
        """
        workspace = getattr(self._workspaces, "workspace", None)
        if workspace is None:
            workspace = self._workspaces.workspace = Workspace()
        return workspace

    # ------------------------------------------------------------------ gradient release

    def _group_of(self, param: Tensor) -> dict[str, Any] | None:
        if self._group_index is None:
            self._group_index = {
                id(p): i for i, group in enumerate(self.param_groups) for p in group["params"]
            }
        index = self._group_index.get(id(param))
        return None if index is None else self.param_groups[index]

    def release_step(self, param: Tensor) -> None:
        """Steps one parameter and frees its gradient; the gradient-release hook calls this.

        Parameters that are not in this optimizer keep their gradient untouched.
        """
        group = self._group_of(param)
        if group is None or param.grad is None:
            return
        with torch.no_grad():
            buckets = self._prepare_buckets(group, [param], self.global_scalars())
            self._run(buckets, "loop", not self.optimizer_accumulation, apply_rule)
        param.grad = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a ``state_dict()`` as ``torch.optim.Optimizer.load_state_dict`` does.

        The compiled backend's kept aliases of the replaced states are dropped with them, so that
        their memory is freed now, not at the next step (a resumed run would otherwise hold two
        copies of the optimizer's state through its first forward and backward).
        """
        super().load_state_dict(state_dict)
        forget_kept_inputs(self)
        self._informative_reduction = None  # the next reduction starts afresh (ONE_PASS)

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
