"""The graph pass that drops write-backs of low-precision states the step left unchanged."""

from __future__ import annotations

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from fastoptim.runners.compiled.cpu_codegen.round_trips import drop_round_trips

aten, prims = torch.ops.aten, torch.ops.prims


def _graph(
    state_dtype: torch.dtype, wide_dtype: torch.dtype, twice: bool = False, scale: float = 1.0
) -> fx.GraphModule:
    """``w = s.to(wide)`` (times ``scale``), ``copy_(s, copy(s, w))``: a rule's read of a state
    and its write-back, as functionalised graphs have them; with ``twice``, read and written
    back once more (a one-pass step's two phases). Returns ``w + 1``."""
    graph = fx.Graph()
    state = graph.placeholder("s")
    value = state
    for _ in range(2 if twice else 1):
        wide = graph.call_function(prims.convert_element_type.default, (value, wide_dtype))
        if scale != 1.0:
            wide = graph.call_function(aten.mul.Tensor, (wide, scale))
        value = graph.call_function(aten.copy.default, (state, wide))
    graph.call_function(aten.copy_.default, (state, value))
    graph.output((graph.call_function(aten.add.Tensor, (wide, 1.0)),))
    module = fx.GraphModule(torch.nn.Module(), graph)
    FakeTensorProp(module).propagate(torch.zeros(4, dtype=state_dtype))  # as inductor's meta
    return module


def _targets(module: fx.GraphModule) -> list[object]:
    return [node.target for node in module.graph.nodes if node.op == "call_function"]


def _after_the_pass(module: fx.GraphModule, state: torch.Tensor) -> fx.GraphModule:
    """Runs the pass and checks that the graph still computes what it did, state included."""
    expected_state = state.clone()
    (expected,) = module(expected_state)
    drop_round_trips(module.graph)
    module.recompile()
    (got,) = module(state)
    assert torch.equal(got, expected) and torch.equal(state, expected_state)
    return module


def test_an_unchanged_bf16_state_read_in_float32_is_not_written_back() -> None:
    state = torch.tensor([1.0, -3.5, 1e-40, float("inf")], dtype=torch.bfloat16)
    module = _after_the_pass(_graph(torch.bfloat16, torch.float32, twice=True), state)
    assert _targets(module) == [prims.convert_element_type.default, aten.add.Tensor]


def test_fp16_through_float32_and_float32_through_float64_are_exact_too() -> None:
    for narrow, wide in ((torch.float16, torch.float32), (torch.float32, torch.float64)):
        module = _after_the_pass(_graph(narrow, wide), torch.tensor([0.1, 6e-8, -2.0, 3.0], dtype=narrow))
        assert aten.copy_.default not in _targets(module)


def test_a_lossy_round_trip_keeps_its_write_back() -> None:
    """bf16 through fp16 loses range and float32 through bf16 precision: both change values."""
    for narrow, wide in ((torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16)):
        state = torch.tensor([1e30, 1.0001, 1e-30, 3.0], dtype=narrow)
        module = _after_the_pass(_graph(narrow, wide), state)
        assert aten.copy_.default in _targets(module)


def test_a_changed_state_keeps_its_write_back() -> None:
    state = torch.ones(4, dtype=torch.bfloat16)
    module = _after_the_pass(_graph(torch.bfloat16, torch.float32, scale=2.0), state)
    assert _targets(module).count(aten.copy_.default) == 1


class _Recorded(CustomGraphPass):
    """Inductor's post-grad graphs, after the pass."""

    def __init__(self) -> None:
        self.graphs: list[str] = []

    def __call__(self, graph: fx.Graph) -> None:
        drop_round_trips(graph)
        self.graphs.append(str(graph))

    def uuid(self) -> None:
        return None  # not cached: the pass must run


def _read_and_write_back(state: torch.Tensor, moved: torch.Tensor, grad: torch.Tensor) -> None:
    """A rule's shape in low precision: both states read in float32, one changed, both written back."""
    kept, updated = state.float(), moved.float()
    updated.add_(grad.float())
    state.copy_(kept)
    moved.copy_(updated)


def test_inductor_s_graph_of_an_unchanged_state_loses_its_write_back() -> None:
    """The pattern the pass looks for is the one functionalisation gives inductor."""
    state, moved = torch.randn(64).bfloat16(), torch.randn(64).bfloat16()
    grad = torch.randn(64).bfloat16()
    expected_moved = (moved.float() + grad.float()).bfloat16()
    kept = state.clone()
    recorded = _Recorded()
    compiled = torch.compile(_read_and_write_back, options={"post_grad_custom_post_pass": recorded})
    torch._dynamo.reset()
    compiled(state, moved, grad)
    assert torch.equal(moved, expected_moved) and torch.equal(state, kept)
    (graph,) = recorded.graphs
    assert graph.count("aten.copy_.default") == 1, graph
