"""A graph pass: each state is written back as soon as its new value is known.

Functionalised graphs write mutated inputs back at their very end (``copy_(state, new)``), and
every later use of the new value reads the expression ``new``. Inductor then either recomputes it
from the old state wherever it is used, which keeps the old state alive until the last of those
uses and leaves the write-back to a loop of its own, or stores it in a temporary buffer. AdamP's
step reads its update ``m / (sqrt(v) / c + eps)`` twice, in the pass that sums ``p * u`` per
channel and in the pass that applies it: the update went to a temporary buffer of the
parameter's size, allocated and freed (page by page, from the operating system) every step.

Moving ``copy_(state, new)`` to just after the last read of the old state (usually right after
``new`` is computed) and pointing the later uses of ``new`` at the written state lets inductor
store the state in the loop that computes it and read it back where it is needed: AdamP's step
then reads ``g, p, m, v`` and writes ``m, v`` in its first pass and reads ``m, v, p`` and writes
``p`` in its second, with no temporary. The move never changes a result: no node after the new
position reads the old state.

A state whose new value itself needs the reduction (SGDP's momentum buffer, stored projected) is
written twice instead: the value the later pass starts from right after the first pass computes
it, so that the later pass reads it back rather than recomputing it from the gradient and the old
state, and the final value at the end, in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx

from fastoptim.runners.compiled.cpu_codegen.round_trips import meta_tensor

_COPY = torch.ops.aten.copy_.default
#: Ops that read a tensor's metadata, not its data.
_METADATA = tuple(
    getattr(getattr(torch.ops.aten, name), overload)
    for name, overload in (
        ("sym_size", "int"),
        ("sym_stride", "int"),
        ("sym_numel", "default"),
        ("sym_storage_offset", "default"),
    )
    if hasattr(torch.ops.aten, name)
)


#: Reductions: ops whose result has fewer elements than their input.
_REDUCTIONS = {
    torch.ops.aten.sum.default,
    torch.ops.aten.sum.dim_IntList,
    torch.ops.aten.amax.default,
    torch.ops.aten.amin.default,
    torch.ops.aten.max.default,
    torch.ops.aten.min.default,
    torch.ops.aten.max.dim,
    torch.ops.aten.min.dim,
    torch.ops.aten.mean.default,
    torch.ops.aten.mean.dim,
    torch.ops.aten.prod.default,
    torch.ops.aten.linalg_vector_norm.default,
}


def _reductions_before(nodes: list[fx.Node]) -> dict[fx.Node, frozenset[fx.Node]]:
    """Per node, the reductions whose results it reads, directly or not."""
    before: dict[fx.Node, frozenset[fx.Node]] = {}
    for node in nodes:
        reductions: set[fx.Node] = set()
        for i in node.all_input_nodes:
            reductions |= before.get(i, frozenset())
            if i.target in _REDUCTIONS:
                reductions.add(i)
        before[node] = frozenset(reductions)
    return before


def _any_use(new: fx.Node, test: Callable[[fx.Node], bool]) -> bool:
    """Whether ``test`` holds for a node that reads ``new``, directly or not (write-backs aside)."""
    pending, seen = list(new.users), set()
    while pending:
        node = pending.pop()
        if node in seen or node.target is _COPY or node.op == "output":
            continue
        seen.add(node)
        if test(node):
            return True
        pending.extend(node.users)
    return False


def _read_in_a_later_pass(new: fx.Node, before: dict[fx.Node, frozenset[fx.Node]]) -> bool:
    """Whether an elementwise use of ``new`` waits for a reduction ``new`` does not: a later pass."""
    return _any_use(new, lambda node: node.target not in _REDUCTIONS and bool(before[node] - before[new]))


def _summed_in_its_pass(new: fx.Node) -> bool:
    """Whether a reduction reads ``new``, directly or not.

    Inductor then kept ``new`` in a temporary of the state's size and wrote it back in a loop of
    its own (DAdaptAdan's ``s``, summed twice: a tensor written and read once more per step);
    written back early, the state is stored in the loop that computes and sums it.
    """
    return _any_use(new, lambda node: node.target in _REDUCTIONS)


def _is_view(node: fx.Node) -> bool:
    """Whether ``node``'s result shares memory with an input (``expand``, ``view``, ...)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.returns:
        return node.op == "call_function" and not isinstance(node.target, torch._ops.OpOverload)
    alias = schema.returns[0].alias_info
    return alias is not None and not alias.is_write


def _aliases(state: fx.Node) -> list[fx.Node]:
    """``state`` and every node whose result is a view of it, transitively."""
    aliases, pending = [state], [state]
    while pending:
        for user in pending.pop().users:
            if user not in aliases and _is_view(user):
                aliases.append(user)
                pending.append(user)
    return aliases


def write_back_early(graph: fx.Graph) -> None:
    """Moves each graph input's write-back to just after the last read of its old value.

    Only ``copy_(input, new)`` nodes whose result is unused and whose input has no other
    write-back are moved, and only where ``new`` is read again in a later pass (after a
    reduction) or summed in its own (:func:`_summed_in_its_pass`): uses of ``new`` after the new
    position then read the input. Where ``new`` is only read elementwise in its own pass,
    inductor computes and stores it once there anyway. Where ``new`` itself waits for a
    reduction, the state may instead hold a value of the first pass until the write-back
    (:func:`_stage_in_state`).
    """
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    before = _reductions_before(nodes)
    for copy in [n for n in nodes if n.op == "call_function" and n.target is _COPY]:
        if len(copy.args) != 2 or copy.kwargs or copy.users:
            continue
        state, new = copy.args
        if not isinstance(state, fx.Node) or state.op != "placeholder" or not isinstance(new, fx.Node):
            continue
        readers = [
            user
            for alias in _aliases(state)
            for user in (alias, *alias.users)
            if user is not copy and user is not state and user.target not in _METADATA
        ]
        if any(user.target is _COPY for user in readers):
            continue
        if before[new]:  # the new value waits for a reduction (the old state, an input, does not)
            _stage_in_state(state, new, readers, before, order)
            continue
        if not (_read_in_a_later_pass(new, before) or _summed_in_its_pass(new)):
            continue
        last = max([new, *readers], key=order.__getitem__)
        if order[last] + 1 >= order[copy]:
            continue
        if any(order[user] <= order[last] for user in new.users if user is not copy):
            continue  # ``new`` would still be read before the write-back: stored twice
        last.append(copy)
        order[copy] = order[last]
        for user in list(new.users):  # all after the write-back now (checked above)
            if user is not copy:
                user.replace_input_with(new, copy)


def _reads(node: fx.Node, target: fx.Node) -> bool:
    """Whether ``node`` reads ``target``, directly or not."""
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        if current is target:
            return True
        if current not in seen:
            seen.add(current)
            pending.extend(current.all_input_nodes)
    return False


def _same_tensor_type(a: fx.Node, b: fx.Node) -> bool:
    """Whether the two nodes' values are tensors of one dtype and shape (from inductor's meta)."""
    x, y = meta_tensor(a), meta_tensor(b)
    if x is None or y is None:
        return False
    return x.dtype == y.dtype and x.shape == y.shape


def _stage_in_state(
    state: fx.Node,
    new: fx.Node,
    readers: list[fx.Node],
    before: dict[fx.Node, frozenset[fx.Node]],
    order: dict[fx.Node, int],
) -> None:
    """For a state whose new value waits for a reduction: stores in it what the later pass reads.

    SGDP's momentum buffer ``b`` gets its projected value, which needs sums over the new
    ``b' = momentum b + g``, so the pass after the sums reads ``b'``; inductor recomputes it there
    from ``g`` and the old ``b`` (three tensors read, with ``p``). Where exactly one value ``b'``
    in the new value's making does not wait for a reduction, reads the old state and is laid out
    as the state, and nothing reads the old state after it, ``copy_(state, b')`` is added right
    after the last read of the old state, and the later pass reads ``b'`` back from the state (two
    tensors read); the final write-back then overwrites it in place.
    """
    aliases = set(_aliases(state))
    staged, pending, seen = [], [new], set()
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        for i in node.all_input_nodes:
            if before[i]:
                pending.append(i)
            elif i not in staged and i not in aliases and _same_tensor_type(i, state) and _reads(i, state):
                staged.append(i)
    if len(staged) != 1:
        return
    (value,) = staged
    last = max([value, *readers], key=order.__getitem__)
    later = [user for user in value.users if before[user] - before[value]]
    if not later or any(order[user] <= order[last] for user in later):
        return
    with last.graph.inserting_after(last):
        write = last.graph.call_function(_COPY, (state, value))
    write.meta = dict(value.meta)
    order[write], before[write] = order[last], before[value]
    for user in later:
        user.replace_input_with(value, write)
