"""Other libraries' optimizer state dicts, translated so that a run resumes in fastoptim.

``Optimizer.load_state_dict`` accepts, for the same algorithm, the state dicts of torch.optim
(Adam, AdamW, SGD), torch-adopt (ADOPT), adamp (AdamP, SGDP), dadaptation (all five), prodigyopt
(Prodigy), torch-optimi (Adam, AdamW, SGD, Lion), lion-pytorch (Lion) and pytorch-optimizer
(Adan). Their hyperparameters, step counts, group values (``d``, ``k``, the sums) and state
tensors are taken over; fastoptim-only fields (``kahan_sum``, ``maximize``, ``decouple_lr``, ...)
get their defaults. The next steps are the original optimizer's (to float32 rounding).

Each library's differences are listed in :data:`FORMATS` (renamed and dropped keys, a step kept
as a tensor or per group). Anything else that does not fit, such as another algorithm's state (a
state buffer this class does not keep, a hyperparameter of the algorithm that is missing) or a
buffer of the wrong shape, raises ``ValueError`` naming it before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastoptim.distributed import is_dtensor

if TYPE_CHECKING:
    from fastoptim.optimizer import Optimizer

#: Group options fastoptim has and some libraries do not store: filled with this class's default.
FASTOPTIM_ONLY = frozenset(
    {"kahan_sum", "maximize", "stochastic_rounding", "decouple_wd", "decouple_lr", "max_lr", "d0", "nesterov"}
)
#: Per-parameter entries that are optional in a state: created at the next step when missing.
OPTIONAL_STATE = frozenset({"step", "kahan_comp"})


@dataclass(frozen=True)
class Format:
    """How one library's state dicts differ from fastoptim's.

    Attributes:
        library: For messages and the docs.
        marks: Group keys only this library stores (how its state dicts are recognised).
        renamed_group: Its group key -> fastoptim's.
        dropped_group: Its group keys fastoptim has no use for.
        renamed_state: Its state key -> fastoptim's (where this class keeps the new key only).
        refused: Group key -> the value this library may have that fastoptim cannot continue.
        group: A last translation of a group (after the renames), in place.
        state: A last translation of a parameter's state, given its saved group and the step.
    """

    library: str
    marks: frozenset[str]
    renamed_group: dict[str, str] = field(default_factory=dict)
    dropped_group: frozenset[str] = frozenset()
    renamed_state: dict[str, str] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)
    group: Callable[[dict[str, Any], type], None] | None = None
    state: Callable[[dict[str, Any], dict[str, Any], int], None] | None = None


def _optimi_group(group: dict[str, Any], cls: type) -> None:
    if "beta1" in group:
        group["betas"] = (group.pop("beta1"), group.pop("beta2"))
    if isinstance(group.get("dampening"), bool) and cls.__name__ == "SGD":  # optimi: dampen by momentum
        group["dampening"] = float(group["momentum"]) if group["dampening"] else 0.0


def _optimi_state(state: dict[str, Any], group: dict[str, Any], step: int) -> None:
    """torch-optimi's Adam keeps its moments debiased (``m / (1 - beta1^t)``); fastoptim does not."""
    if "exp_avg_sq" in state and "beta1" in group and step > 0:
        state["exp_avg"] = state["exp_avg"] * (1 - group["beta1"] ** step)
        state["exp_avg_sq"] = state["exp_avg_sq"] * (1 - group["beta2"] ** step)


FORMATS = (
    Format(
        "torch.optim (and torch-adopt)",
        marks=frozenset({"differentiable", "capturable"}),
        renamed_group={"decoupled_weight_decay": "decouple_wd"},
        dropped_group=frozenset({"amsgrad", "foreach", "capturable", "differentiable", "fused"}),
        refused={"amsgrad": True},
    ),
    Format(
        "torch-optimi",
        marks=frozenset({"triton", "setup"}),
        dropped_group=frozenset({"foreach", "triton", "gradient_release", "setup", "torch_init", "step"}),
        renamed_state={"exp_avg": "momentum_buffer"},  # SGD's
        group=_optimi_group,
        state=_optimi_state,
    ),
    Format(
        "pytorch-optimizer",
        marks=frozenset({"weight_decouple"}),
        renamed_group={"weight_decouple": "no_prox"},
        dropped_group=frozenset({"foreach"}),
        renamed_state={"previous_grad": "neg_pre_grad"},  # both hold -g of the last step
    ),
)
#: adamp, dadaptation, prodigyopt and lion-pytorch store fastoptim's names already.
SAME_NAMES = Format("the official packages", marks=frozenset())


def _format_of(optimizer: Optimizer, groups: list[dict[str, Any]]) -> Format | None:
    """The library a state dict's groups come from; None for fastoptim's own."""
    keys = set().union(*(group.keys() for group in groups)) if groups else set()
    for fmt in FORMATS:
        if fmt.marks & keys:
            return fmt
    if all(set(optimizer.defaults) <= group.keys() for group in groups):
        return None
    return SAME_NAMES


def _group_step(group: dict[str, Any]) -> int | None:
    """A step count kept per group (torch-optimi, pytorch-optimizer; dadaptation's ``k``)."""
    for key in ("step", "k"):
        if key in group:
            value = group[key]
            return int(value.item() if isinstance(value, Tensor) else value)
    return None


def _translate_group(optimizer: Optimizer, fmt: Format, index: int, saved: dict[str, Any]) -> dict[str, Any]:
    group = dict(saved)
    for key, value in fmt.refused.items():
        if group.get(key) == value:
            raise ValueError(
                f"load_state_dict: param group {index} has {key}={value!r} ({fmt.library}), "
                f"which {type(optimizer).__name__} cannot continue"
            )
    for old, new in fmt.renamed_group.items():
        if old in group:
            group[new] = group.pop(old)
    if fmt.group is not None:
        fmt.group(group, type(optimizer))
    for key in fmt.dropped_group:
        group.pop(key, None)
    for key, default in optimizer.defaults.items():
        if key in group:
            continue
        if key not in FASTOPTIM_ONLY:
            raise ValueError(
                f"load_state_dict: param group {index} has no {key!r}: not a {type(optimizer).__name__} "
                f"state dict (read as {fmt.library}'s)"
            )
        group[key] = default
    return group


def _expected_shape(
    optimizer: Optimizer, group: dict[str, Any], param: Tensor, key: str
) -> torch.Size | None:
    """The shape ``init_state`` gives ``key`` for ``param`` (None where it cannot be told).

    Not told for DTensor parameters (whose states may follow their placement; distributed
    checkpoints load them into a template of this optimizer's own shapes).
    """
    if is_dtensor(param):
        return None
    try:
        meta = torch.empty(param.shape, dtype=param.dtype, device="meta")
        return optimizer.init_state(group, meta, key).shape
    except Exception:  # (Prodigy's p0 reads the values: its shape is checked by the step)
        return None


def _translate_state(
    optimizer: Optimizer,
    fmt: Format,
    where: str,
    param: Tensor,
    group: dict[str, Any],
    saved_group: dict[str, Any],
    saved: dict[str, Any],
) -> dict[str, Any]:
    keys = set(optimizer.state_keys(group))
    state = {}
    for key, value in saved.items():
        if value is None:  # (torch's SGD without momentum keeps a None buffer)
            continue
        new = fmt.renamed_state.get(key, key)
        state[new if new in keys and key not in keys else key] = value
    allowed = keys | OPTIONAL_STATE | set(optimizer.SPARSE_STATE_KEYS or ())
    name = type(optimizer).__name__
    unknown = sorted(set(state) - allowed)
    if unknown:
        raise ValueError(
            f"load_state_dict: {where} has {unknown}, which {name} does not keep: not a {name} state"
        )
    missing = sorted(keys - set(state))
    if missing:
        raise ValueError(f"load_state_dict: {where} lacks {missing}, which {name} needs")
    for key in sorted(keys):
        expected = _expected_shape(optimizer, group, param, key)
        value = state[key]
        if expected is not None and isinstance(value, Tensor) and value.shape != expected:
            raise ValueError(
                f"load_state_dict: {where}'s {key!r} has shape {tuple(value.shape)}, "
                f"its parameter needs {tuple(expected)}"
            )
    # a state kept per group (optimi, pytorch-optimizer, dadaptation's k), or at least one step
    step = state.get("step", _group_step(saved_group))
    if step is None and state:
        step = 1
    if step is not None:
        state["step"] = int(step.item() if isinstance(step, Tensor) else step)
        if fmt.state is not None:
            fmt.state(state, saved_group, state["step"])
    return state


def translate(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` in fastoptim's format for ``optimizer`` (a new dict; the input is not changed).

    Raises:
        ValueError: It does not fit ``optimizer`` (see the module's docstring); nothing changed.
    """
    saved_groups = state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        return state_dict  # torch's own check reports a group count that differs
    fmt = _format_of(optimizer, saved_groups)
    if fmt is None:  # fastoptim's own: checked, nothing renamed
        fmt, groups = SAME_NAMES, saved_groups
    else:
        groups = [_translate_group(optimizer, fmt, i, saved) for i, saved in enumerate(saved_groups)]
    owners = {}
    for saved, group, ours in zip(saved_groups, groups, optimizer.param_groups, strict=True):
        owners.update(zip(saved["params"], ((group, saved, p) for p in ours["params"]), strict=False))
    state = {}
    for key, saved_state in state_dict.get("state", {}).items():
        if key not in owners or not isinstance(saved_state, dict):
            state[key] = saved_state
            continue
        group, saved_group, param = owners[key]
        where = f"the state of parameter {key}"
        state[key] = _translate_state(optimizer, fmt, where, param, group, saved_group, saved_state)
    return {**state_dict, "param_groups": groups, "state": state}
