"""The compiled backend (torch.compile of each algorithm's one rule) against the loop runner.

Inductor fuses each step into one kernel, with the roundings of torch's CPU kernels (fused
multiply-adds where they use them). Float64 steps equal the loop's bit for bit unless they take a
square root (eager torch's float64 ``sqrt`` on CPU is not always correctly rounded, inductor's is)
or a reduction (summed in another order); float32 results differ in the last bits. Graphs are
compiled once per configuration and shared by every test in the process.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import fastoptim
from fastoptim.runners.compiled import inputs as compiled_inputs
from fastoptim.runners.compiled.cpu_codegen import direct as compiled_direct
from fastoptim.runners.compiled.inputs import CHUNK_SIZE
from tests.cases import CASES, LOW_PRECISION_CASES, Case
from tests.markers import needs_cpu_codegen
from tests.problems import make_batches, make_model, max_abs_diff, params_of, train, twin

STEPS = 8


def _compiled_and_loop(case: Case, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    base = make_model(dtype)
    compiled, loop = twin(base), twin(base)
    train(compiled, case.build(compiled.parameters(), backend="compiled"), make_batches(STEPS, dtype))
    train(loop, case.build(loop.parameters(), backend="loop"), make_batches(STEPS, dtype))
    return params_of(compiled), params_of(loop)


def _graphs() -> int:
    """Graphs compiled so far, through dynamo and on the runner's path without it."""
    return counters["stats"]["unique_graphs"] + compiled_direct.compiled_chunks()


#: Configurations with neither a square root nor a reduction: exact in float64.
EXACT_IN_FLOAT64 = {case.name for case in CASES if case.name.split("_")[0] in ("sgd", "lion")}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_compiled_equals_loop_float64_and_float32(case: Case) -> None:
    compiled, loop = _compiled_and_loop(case, torch.float64)
    assert max_abs_diff(compiled, loop) <= (0.0 if case.name in EXACT_IN_FLOAT64 else 1e-13)
    compiled, loop = _compiled_and_loop(case, torch.float32)
    # ADOPT without clipping divides by max(sqrt(v), eps) at step 2: last-bit differences grow
    tolerance = 2e-5 if case.name == "adopt_l2_noclip" else 1e-6
    assert max_abs_diff(compiled, loop) <= tolerance


BF16_NAMES = ("adamw", "lion", "adan", "adan_prox_clip", "adamp", "sgdp")
BF16_CASES = [c for c in LOW_PRECISION_CASES if c.name in BF16_NAMES]


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: c.name)
def test_compiled_bf16_with_kahan_tracks_float32_as_the_loop_does(case: Case) -> None:
    compiled, loop = _compiled_and_loop(case, torch.bfloat16)
    exact = twin(make_model(torch.float32))
    train(exact, case.build(exact.parameters(), backend="loop"), make_batches(STEPS, torch.float32))
    exact_params = params_of(exact)
    compiled_error, loop_error = max_abs_diff(compiled, exact_params), max_abs_diff(loop, exact_params)
    assert max_abs_diff(compiled, loop) <= 4 * 2**-8  # a few bf16 ulps of weights near 1
    assert compiled_error <= 1.5 * loop_error + 2**-9


def test_no_recompilation_with_scheduler_new_steps_and_load_state_dict() -> None:
    model = make_model()
    optimizer = fastoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, backend="compiled")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=40)
    batches = make_batches(20)
    train(model, optimizer, batches[:2], scheduler)  # compiles (first step and the steady state)
    before = _graphs()
    train(model, optimizer, batches[2:], scheduler)  # 18 steps, a new lr and step count each
    resumed_model = twin(model)
    resumed = fastoptim.AdamW(resumed_model.parameters(), lr=1e-3, weight_decay=1e-2, backend="compiled")
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(resumed_model, resumed, make_batches(3, seed=2))
    assert _graphs() == before, "a scheduler, a new step count or load_state_dict recompiled"


def test_optimizers_with_the_same_configuration_share_compiled_code() -> None:
    first, second = make_model(), make_model(seed=1)
    train(first, fastoptim.Lion(first.parameters(), lr=1e-4, backend="compiled"), make_batches(2))
    before = _graphs()
    train(second, fastoptim.Lion(second.parameters(), lr=3e-4, backend="compiled"), make_batches(2))
    assert _graphs() == before


def test_sparse_gradients_fall_back_to_the_loop_runner() -> None:
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = fastoptim.DAdaptAdaGrad(embedding.parameters(), d0=1e-2, backend="compiled")
    reference_embedding = copy.deepcopy(embedding)
    reference = fastoptim.DAdaptAdaGrad(reference_embedding.parameters(), d0=1e-2, backend="loop")
    for module, opt in ((embedding, optimizer), (reference_embedding, reference)):
        for _ in range(3):
            module(torch.tensor([1, 3])).square().sum().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(embedding.weight, reference_embedding.weight)


@pytest.mark.parametrize("name", ["AdamW", "DAdaptAdam"])
def test_models_larger_than_a_chunk_equal_the_loop(name: str) -> None:
    """Buckets longer than one chunk (16 tensors): a full chunk, then one filled up with padding."""
    assert CHUNK_SIZE == 16
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (5,), (2, 3, 4)] * 6 + [(11,)]  # 19 tensors: one chunk of 16, then 3 and padding
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    build = getattr(fastoptim, name)
    assert max_abs_diff(*_compiled_and_loop_steps(build, start, grads)) <= 1e-6


def _compiled_and_loop_steps(
    build: Any, start: list[Tensor], grads: list[list[Tensor]]
) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters after one step per entry of ``grads``, compiled and on the loop runner."""
    results = []
    for backend in ("compiled", "loop"):
        params = [torch.nn.Parameter(tensor.clone()) for tensor in start]
        optimizer = build(params, lr=1e-2, weight_decay=1e-2, backend=backend)
        for step_grads in grads:
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        results.append([param.detach() for param in params])
    return results[0], results[1]


def _lion_steps(shapes: list[tuple[int, ...]], backend: str, channels_last: bool = False) -> list[Tensor]:
    """Three float64 Lion steps (exact against the loop) on fresh tensors of ``shapes``."""
    generator = torch.Generator().manual_seed(len(shapes))

    def tensor(shape: tuple[int, ...]) -> Tensor:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        return value.to(memory_format=torch.channels_last) if channels_last and len(shape) == 4 else value

    params = [torch.nn.Parameter(tensor(shape)) for shape in shapes]
    optimizer = fastoptim.Lion(params, lr=1e-2, weight_decay=0.25, backend=backend)
    for _ in range(3):
        for param in params:
            param.grad = tensor(param.shape)
        optimizer.step()
    return [param.detach() for param in params]


@needs_cpu_codegen
def test_a_chunk_compiled_without_dynamo_steps_tensors_of_any_size() -> None:
    """On the CPU the runner compiles flat chunks itself and calls them without dynamo's guards,
    so the graph must keep each row's size its own and free: compiled first for 20 tensors of one
    size (which duck shaping would tie together), it steps tensors of 19 other sizes exactly, with
    no graph through dynamo."""
    compiled_direct.clear()
    dynamo_graphs, direct_graphs = counters["stats"]["unique_graphs"], compiled_direct.compiled_chunks()
    same_size = [(6,)] * 20
    other_sizes = [(size,) for size in range(3, 41, 2)] + [(3, 1000)]
    for shapes in (same_size, other_sizes):
        assert max_abs_diff(_lion_steps(shapes, "compiled"), _lion_steps(shapes, "loop")) == 0.0
    assert counters["stats"]["unique_graphs"] == dynamo_graphs
    assert compiled_direct.compiled_chunks() == direct_graphs + 1, "one chunk of 16 serves both models"


def test_tensors_that_are_not_flat_go_through_torch_compile() -> None:
    """Channels-last weights (not contiguous) and one-element parameters are not flat: their rows
    fall back to torch.compile, and the step still equals the loop's."""
    shapes = [(4, 3, 2, 2), (1,), (4,), (2, 2, 3, 3)]
    assert (
        max_abs_diff(
            _lion_steps(shapes, "compiled", channels_last=True),
            _lion_steps(shapes, "loop", channels_last=True),
        )
        == 0.0
    )
    weight = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    kept = compiled_inputs.owned_inputs({}, (weight, torch.zeros_like(weight), None), keep_channels=False)
    assert compiled_inputs.row_of(kept, torch.zeros_like(weight), keep_channels=False)[1] is None
    one = torch.zeros(1)
    kept = compiled_inputs.owned_inputs({}, (one, torch.zeros(1), None), keep_channels=False)
    assert compiled_inputs.row_of(kept, torch.zeros(1), keep_channels=False)[1] is None
    strided = torch.zeros(10)[::2]  # 1-D, but not contiguous
    kept = compiled_inputs.owned_inputs({}, (strided, torch.zeros(5), None), keep_channels=False)
    assert compiled_inputs.row_of(kept, torch.zeros(5), keep_channels=False)[1] is None
    kept = compiled_inputs.owned_inputs({}, (torch.zeros(5), torch.zeros(5), None), keep_channels=False)
    assert compiled_inputs.row_of(kept, torch.zeros(5), keep_channels=False)[1] is not None


def test_a_gradient_laid_out_unlike_its_weight_is_stepped_as_the_loop_steps_it() -> None:
    """A contiguous weight whose gradient is a transposed view (not contiguous): the gradient is
    copied to the weight's layout (the compiled runner raised on such a row before)."""
    results = []
    for backend in ("compiled", "loop"):
        generator = torch.Generator().manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4, 6, generator=generator, dtype=torch.float64))
        optimizer = fastoptim.Lion([weight], lr=1e-2, weight_decay=0.25, backend=backend)
        for _ in range(3):
            weight.grad = torch.randn(6, 4, generator=generator, dtype=torch.float64).t()
            optimizer.step()
        results.append([weight.detach()])
    assert max_abs_diff(*results) == 0.0


def test_sgdp_on_channels_last_weights_through_torch_compile_equals_the_loop() -> None:
    """channels_last convolution weights keep their shapes and go through ``torch.compile``,
    several SGDP rows in one graph: the graph pass that stores the new momentum buffer before the
    projection's sums met the node it had added for one row while looking at the next (a
    ``KeyError`` once), and must leave the results those of the loop."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(8, 3, 3, 3), (8,), (6, 8, 3, 3), (16, 12)]

    def tensor(shape: tuple[int, ...]) -> Tensor:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        return value.to(memory_format=torch.channels_last) if len(shape) == 4 else value

    start = [tensor(shape) for shape in shapes]
    grads = [[tensor(shape) for shape in shapes] for _ in range(4)]

    def build(params: list[Tensor], **kwargs: Any) -> torch.optim.Optimizer:
        return fastoptim.SGDP(params, momentum=0.9, **kwargs)

    compiled, loop = _compiled_and_loop_steps(build, start, grads)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in compiled if p.dim() == 4)
    assert max_abs_diff(compiled, loop) <= 1e-13


@needs_cpu_codegen
def test_a_compiled_chunk_that_specialised_its_sizes_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner checks each chunk it compiles on rows longer than those it traced: code that
    kept the traced sizes (as a static-shape compile does) is refused with a warning, and the
    chunk goes through torch.compile, still exact."""
    compile_graph = torch._inductor.standalone_compile

    def static_compile(graph: torch.fx.GraphModule, inputs: list[Tensor], **options: object) -> object:
        real = [torch.rand(tuple(int(size) for size in t.shape), dtype=t.dtype) for t in inputs]
        return compile_graph(graph, real, **{**options, "dynamic_shapes": "from_example_inputs"})

    monkeypatch.setattr(torch._inductor, "standalone_compile", static_compile)
    compiled_direct.clear()
    with pytest.warns(RuntimeWarning, match="does not step tensors of other sizes"):
        compiled = _lion_steps([(7,), (6, 5)], "compiled")
    assert compiled_direct.compiled_chunks() == 0
    compiled_direct.clear()  # the refusal is remembered; later tests compile this chunk again
    assert max_abs_diff(compiled, _lion_steps([(7,), (6, 5)], "loop")) == 0.0


@needs_cpu_codegen
def test_the_check_on_longer_rows_accepts_sums_that_cancel() -> None:
    """DAdaptAdaGrad's partial sums nearly cancel at its first steps (d = 1e-6): summed in another
    order they keep few significant bits, which the check must not take for a specialised chunk
    (a refusal warns, an error in this suite)."""
    compiled_direct.clear()
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(1000, generator=generator))
    param.grad = torch.randn(1000, generator=generator) * 1e-2
    optimizer = fastoptim.DAdaptAdaGrad([param], backend="compiled")
    for _ in range(3):
        optimizer.step()
    assert compiled_direct.compiled_chunks() == 1


@needs_cpu_codegen
def test_switching_torch_compile_off_also_switches_off_the_compiled_chunks() -> None:
    """``TORCH_COMPILE_DISABLE=1`` (dynamo's ``disable``) is for debugging: the runner then compiles
    nothing and runs the same code eagerly, exactly as the loop does."""
    compiled_direct.clear()
    with torch._dynamo.config.patch(disable=True):
        compiled = _lion_steps([(5,), (3, 4)], "compiled")
    assert compiled_direct.compiled_chunks() == 0
    assert max_abs_diff(compiled, _lion_steps([(5,), (3, 4)], "loop")) == 0.0


def test_moved_parameters_and_loaded_states_are_updated_where_they_now_live() -> None:
    """The runner keeps 1-D aliases of parameters and states between steps: moving them
    (``p.data = ...``, ``load_state_dict``) must not leave it updating the old memory."""
    results = []
    for backend in ("compiled", "loop"):
        model = make_model()
        optimizer = fastoptim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, backend=backend)
        batches = make_batches(6)
        train(model, optimizer, batches[:2])
        for param in model.parameters():
            param.data = param.data.clone()
        train(model, optimizer, batches[2:4])
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        train(model, optimizer, batches[4:])
        if backend == "compiled":
            kept = compiled_inputs._OWNED[optimizer]
            assert len(kept) == len(list(model.parameters())), "one entry per parameter, no more"
        results.append(params_of(model))
    assert max_abs_diff(*results) <= 1e-6


@needs_cpu_codegen
def test_kernels_use_every_thread_whatever_sizes_they_were_compiled_for() -> None:
    """Inductor otherwise picks serial or parallel loops from the sizes it first compiles for, and
    a graph first compiled for small tensors ran every later model on one thread.

    Runs last: ``run_and_get_code`` resets dynamo, dropping the graphs the other tests share.
    """
    param = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    param.grad = torch.randn(8, dtype=torch.float64)
    optimizer = fastoptim.SGD([param], lr=1e-2, momentum=0.9, backend="compiled")
    compiled_direct.clear()
    no_caches = torch._inductor.config.patch(fx_graph_cache=False)
    with no_caches, torch._functorch.config.patch(enable_autograd_cache=False):
        _, codes = run_and_get_code(optimizer.step)
    lines = [line.strip() for code in codes for line in code.splitlines()]
    loops = [index for index, line in enumerate(lines) if line.startswith("for(int64_t x0=")]
    assert loops, "no kernel loop found in the generated code"
    assert all(lines[index - 1].startswith("#pragma omp for") for index in loops)


@needs_cpu_codegen
def test_adamp_weights_are_stepped_as_channel_views_without_dynamo() -> None:
    """AdamP and SGDP need each output channel: the runner passes contiguous weights as
    ``(size(0), -1)`` views (a linear and a convolution weight share one graph) and biases as
    1-D rows, all without dynamo, and the step equals the loop's."""
    compiled_direct.clear()
    dynamo_graphs = counters["stats"]["unique_graphs"]
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 3, 2, 2), (6,), (5, 7), (5,)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    grads = [[torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes] for _ in range(3)]
    channels = start[0].reshape(6, -1)
    for step_grads in grads:  # the convolution's gradients orthogonal to it per channel: projected
        grad = step_grads[0].reshape(6, -1)
        grad -= channels * (grad * channels).sum(1, keepdim=True) / (channels * channels).sum(1, keepdim=True)
    assert max_abs_diff(*_compiled_and_loop_steps(fastoptim.AdamP, start, grads)) <= 1e-13
    assert counters["stats"]["unique_graphs"] == dynamo_graphs
    assert compiled_direct.compiled_chunks() == 2, "one graph for the weights, one for the biases"


@needs_cpu_codegen
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_chunks_run_without_dynamo_as_the_loop_runs_them(dtype: torch.dtype) -> None:
    """bf16 and fp16 parameters with their Kahan buffers take the path without dynamo too: no
    dynamo graph, and the step stays within a few low-precision ulps of the loop's."""
    compiled_direct.clear()
    dynamo_graphs = counters["stats"]["unique_graphs"]
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (5,), (2, 3, 4)]
    start = [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]
    grads = [[torch.randn(s, generator=generator).to(dtype) for s in shapes] for _ in range(3)]
    compiled, loop = _compiled_and_loop_steps(fastoptim.AdamW, start, grads)
    assert counters["stats"]["unique_graphs"] == dynamo_graphs
    assert compiled_direct.compiled_chunks() == 1, "one graph for every row of the bucket"
    ulp = torch.finfo(dtype).eps
    assert max_abs_diff(compiled, loop) <= 4 * ulp  # weights of magnitude up to about 2


@needs_cpu_codegen
@pytest.mark.parametrize("name", ["DAdaptAdam", "DAdaptLion"])
def test_a_reduction_and_the_update_of_what_it_read_are_one_loop(name: str) -> None:
    """DAdaptAdam's steady step sums over its old states and then updates them and the parameter
    in place; DAdaptLion's sums over its old states, updates them, then sums over the new ones.
    One pass over memory each with ``cpu_codegen.fusion``, where inductor
    alone makes two.

    Runs last, as the test above: ``run_and_get_code`` resets dynamo.
    """
    param = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    param.grad = torch.randn(8, dtype=torch.float64)
    optimizer = getattr(fastoptim, name)([param], backend="compiled")
    optimizer.step()  # DAdaptAdam's first step runs in two phases, on the loop runner
    compiled_direct.clear()
    no_caches = torch._inductor.config.patch(fx_graph_cache=False)
    with no_caches, torch._functorch.config.patch(enable_autograd_cache=False):
        _, codes = run_and_get_code(optimizer.step)
    # loops over the tensor (of a symbolic size), not the one that stacks the partial sums
    loops = [
        sum(line.strip().startswith("for(int64_t x0=") and "ks" in line for line in code.splitlines())
        for code in codes
    ]
    assert loops == [1], f"loops per graph: {loops}"


@needs_cpu_codegen
def test_a_bf16_loop_that_sums_a_float32_value_keeps_the_bf16_vector_width() -> None:
    """DAdaptLion sums ``|s|`` over its new float32 ``s``, which it also stores in bf16: inductor
    realises that float32 value inside the loop and then vectorizes the whole loop at float32's
    width, a masked half vector per bf16 load and store (31 against 18 ms a bf16 step);
    ``cpu_codegen.low_precision_codegen`` keeps bf16's width.

    Runs last, as the tests above: ``run_and_get_code`` resets dynamo.
    """
    isa = torch._inductor.cpu_vec_isa.pick_vec_isa()
    if not isa:
        pytest.skip("inductor found no vector ISA on this CPU, so it generates no vector loads")
    param = torch.nn.Parameter(torch.randn(256).bfloat16())
    param.grad = torch.randn(256).bfloat16()
    optimizer = fastoptim.DAdaptLion([param], backend="compiled")
    compiled_direct.clear()
    no_caches = torch._inductor.config.patch(fx_graph_cache=False)
    with no_caches, torch._functorch.config.patch(enable_autograd_cache=False):
        _, codes = run_and_get_code(optimizer.step)
    pattern = r"Vectorized<at::BFloat16>::loadu\([^;]*?, static_cast<int64_t>\((\d+)L?\)\)"
    widths = {int(width) for code in codes for width in re.findall(pattern, code)}
    assert widths == {isa.nelements(torch.bfloat16)}, f"bf16 vector loads of {widths} elements"
