"""The graph pass that writes a state back as soon as its new value is known, where a later pass
reads that value."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fastoptim.runners.compiled.cpu_codegen.early_write_back import write_back_early

aten = torch.ops.aten


def _graph(
    after_a_sum: bool = True, old_state_read_late: bool = False, new_after_the_sum: bool = False
) -> fx.GraphModule:
    """``new = 0.9 m + g`` (or ``m * sum(g) + g``) and ``out = new * sum(g)`` (a second pass, as
    AdamP's update after its projection's sums) or ``new * 2``, plus optionally ``expand(m)``, the
    old state read late through a view; the write-back ``copy_(m, new)`` comes last, as
    functionalised graphs have it."""
    graph = fx.Graph()
    state, grad = graph.placeholder("m"), graph.placeholder("g")
    total = graph.call_function(aten.sum.default, (grad,))
    decay = total if new_after_the_sum else 0.9
    new = graph.call_function(aten.add.Tensor, (graph.call_function(aten.mul.Tensor, (state, decay)), grad))
    out = graph.call_function(aten.mul.Tensor, (new, total if after_a_sum else 2.0))
    if old_state_read_late:
        view = graph.call_function(aten.expand.default, (state, [4]))
        out = graph.call_function(aten.add.Tensor, (out, view))
    graph.call_function(aten.copy_.default, (state, new))
    graph.output((out,))
    return fx.GraphModule(torch.nn.Module(), graph)


def _run(module: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.arange(4.0)
    (out,) = module(state, torch.ones(4))
    return out, state


def _positions(module: fx.GraphModule) -> dict[str, int]:
    """Where the write-back, the new value and the output's product are."""
    nodes = list(module.graph.nodes)
    first = {}
    for i, node in enumerate(nodes):
        first.setdefault(str(node.target), i)
    return {
        "copy": first["aten.copy_.default"],
        "new": first["aten.add.Tensor"],
        "product": next(
            i for i, node in enumerate(nodes) if node.target is aten.mul.Tensor and node.args[1] != 0.9
        ),
    }


def _pass_keeps_results(module: fx.GraphModule) -> fx.GraphModule:
    expected = _run(module)
    write_back_early(module.graph)
    module.recompile()
    for got, want in zip(_run(module), expected, strict=True):
        assert torch.equal(got, want)
    return module


def test_the_write_back_moves_to_the_new_value_when_a_later_pass_reads_it() -> None:
    module = _pass_keeps_results(_graph())
    positions = _positions(module)
    assert positions["copy"] == positions["new"] + 1
    product = list(module.graph.nodes)[positions["product"]]
    assert product.args[0].target is aten.copy_.default, "the later pass reads the written state"


def test_the_write_back_stays_last_when_only_its_own_pass_reads_the_new_value() -> None:
    module = _pass_keeps_results(_graph(after_a_sum=False))
    positions = _positions(module)
    assert positions["copy"] > positions["product"]


def test_the_write_back_stays_after_a_read_of_the_old_state_through_a_view() -> None:
    module = _pass_keeps_results(_graph(old_state_read_late=True))
    nodes = list(module.graph.nodes)
    reader = next(
        i
        for i, node in enumerate(nodes)
        if node.target is aten.add.Tensor and node.args[1].op != "placeholder"
    )
    assert _positions(module)["copy"] > reader


def test_the_write_back_stays_last_when_the_new_value_itself_waits_for_the_sum() -> None:
    """``new = m * sum(g) + g`` and ``out = 2 new``: both in the pass after the sum (SGDP's
    projected momentum buffer and its parameter update), so nothing is gained by moving."""
    module = _pass_keeps_results(_graph(after_a_sum=False, new_after_the_sum=True))
    positions = _positions(module)
    assert positions["copy"] > positions["product"]


def _projected_graph(old_state_read_late: bool = False) -> fx.GraphModule:
    """SGDP's momentum buffer in small: ``b' = 0.9 b + g``, a sum over ``b' p``, and the buffer
    stored projected, ``b' - p sum``, which needs the sum; optionally the old ``b`` read after it."""
    graph = fx.Graph()
    state, grad, param = graph.placeholder("b"), graph.placeholder("g"), graph.placeholder("p")
    first = graph.call_function(aten.add.Tensor, (graph.call_function(aten.mul.Tensor, (state, 0.9)), grad))
    total = graph.call_function(aten.sum.default, (graph.call_function(aten.mul.Tensor, (first, param)),))
    new = graph.call_function(aten.sub.Tensor, (first, graph.call_function(aten.mul.Tensor, (param, total))))
    out = graph.call_function(aten.mul.Tensor, (new, 2.0))
    if old_state_read_late:
        out = graph.call_function(aten.add.Tensor, (out, state))
    graph.call_function(aten.copy_.default, (state, new))
    graph.output((out,))
    module = fx.GraphModule(torch.nn.Module(), graph)
    FakeTensorProp(module).propagate(torch.zeros(4), torch.zeros(4), torch.zeros(4))  # as inductor's meta
    return module


def _run_projected(module: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.arange(4.0)
    (out,) = module(state, torch.ones(4), torch.linspace(-1.0, 1.0, 4))
    return out, state


def _copies(module: fx.GraphModule) -> list[fx.Node]:
    return [node for node in module.graph.nodes if node.target is aten.copy_.default]


def test_a_state_stored_after_a_sum_holds_the_first_pass_value_until_then() -> None:
    module = _projected_graph()
    expected = _run_projected(module)
    write_back_early(module.graph)
    module.recompile()
    for got, want in zip(_run_projected(module), expected, strict=True):
        assert torch.equal(got, want)
    staged, final = _copies(module)
    first = staged.args[1]
    assert first.target is aten.add.Tensor and staged.prev is first, "stored right after it is computed"
    assert final.args[1].target is aten.sub.Tensor and final.next.op == "output", "the final value last"
    assert final.args[1].args[0] is staged, "the pass after the sum reads the stored value back"
    assert all(user.target is not aten.sub.Tensor for user in first.users)


def test_a_state_read_after_the_sum_is_not_used_to_hold_anything() -> None:
    module = _projected_graph(old_state_read_late=True)
    write_back_early(module.graph)
    assert len(_copies(module)) == 1


def test_the_write_back_moves_to_the_new_value_when_its_own_pass_sums_it() -> None:
    """``new = 0.9 m + g`` and ``out = sum(|new|)`` (DAdaptAdan's ``s``): inductor kept ``new`` in
    a temporary and wrote it back in a loop of its own; written back early, it is stored where
    it is computed, and the sum reads the written state."""
    graph = fx.Graph()
    state, grad = graph.placeholder("m"), graph.placeholder("g")
    new = graph.call_function(aten.add.Tensor, (graph.call_function(aten.mul.Tensor, (state, 0.9)), grad))
    total = graph.call_function(aten.sum.default, (graph.call_function(aten.abs.default, (new,)),))
    graph.call_function(aten.copy_.default, (state, new))
    graph.output((total,))
    module = _pass_keeps_results(fx.GraphModule(torch.nn.Module(), graph))
    (copy,) = _copies(module)
    assert copy.prev is copy.args[1], "written back right after it is computed"
    assert [user.target for user in copy.users] == [aten.abs.default], "the sum reads the written state"
