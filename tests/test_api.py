"""The torch.optim API surface: groups, lr tensors, schedulers, closures, hooks, factories."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from tests.cases import CASES, Case
from tests.problems import loss_fn, make_batches, make_model, params_of, train, twin


def test_version_and_exports() -> None:
    assert isinstance(fastoptim.__version__, str)
    for name in ("Adam", "AdamW", "SGD", "Lion"):
        assert issubclass(getattr(fastoptim, name), torch.optim.Optimizer)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_lr_as_float32_tensor_equals_float(case: Case) -> None:
    base = make_model()
    batches = make_batches(5)
    as_float, as_tensor = twin(base), twin(base)
    lr = case.kwargs["lr"]
    train(as_float, case.build(as_float.parameters()), batches)
    train(as_tensor, case.build(as_tensor.parameters(), lr=torch.tensor(lr)), batches)
    for a, b in zip(params_of(as_float), params_of(as_tensor), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


#: Learning-rate multipliers, one per step, that go down and up again.
LR_FACTORS = (1.0, 0.3, 0.7, 0.1, 0.5, 0.9)


def _scheduled_run(case: Case, base: torch.nn.Module, lr: float | torch.Tensor, schedule: bool):
    model = twin(base)
    optimizer = case.build(model.parameters(), lr=lr)
    scheduler = None
    if schedule:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: LR_FACTORS[t % len(LR_FACTORS)])
    train(model, optimizer, make_batches(len(LR_FACTORS)), scheduler)
    return params_of(model), optimizer


@pytest.mark.parametrize("case", CASES, ids=str)
def test_lr_tensor_changed_in_place_is_read_at_every_step(case: Case) -> None:
    """torch's schedulers write a tensor lr in place (``fill_``), as some training loops do: each
    step must read the tensor's current value. The float64 tensor holds the float schedule's
    values exactly, so the two runs are equal bit for bit."""
    base = make_model()
    lr = case.kwargs["lr"]
    floats, _ = _scheduled_run(case, base, lr, schedule=True)
    lr_tensor = torch.tensor(lr, dtype=torch.float64)
    tensors, optimizer = _scheduled_run(case, base, lr_tensor, schedule=True)
    # the group holds the tensor, as in torch.optim, so the scheduler wrote the new values into it
    assert optimizer.param_groups[0]["lr"] is lr_tensor
    for a, b in zip(floats, tensors, strict=True):
        assert torch.equal(a, b)
    # An lr read once (or ignored for the default) would give the constant-lr run: it differs.
    constant, _ = _scheduled_run(case, base, lr, schedule=False)
    assert any(not torch.equal(a, b) for a, b in zip(floats, constant, strict=True))


SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=6),
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_schedulers_match_torch(scheduler: str) -> None:
    """The same scheduler drives fastoptim.Adam and torch.optim.Adam identically
    (OneCycleLR also cycles betas[0])."""
    base = make_model()
    batches = make_batches(6)
    ours, theirs = twin(base), twin(base)
    our_opt = fastoptim.Adam(ours.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    their_opt = torch.optim.Adam(theirs.parameters(), lr=1e-2, foreach=False)
    our_sched, their_sched = SCHEDULERS[scheduler](our_opt), SCHEDULERS[scheduler](their_opt)
    lrs = []
    train(ours, our_opt, batches, our_sched, after_step=lambda _: lrs.append(our_opt.param_groups[0]["lr"]))
    train(theirs, their_opt, batches, their_sched)
    assert len(set(lrs)) > 1
    for a, b in zip(params_of(ours), params_of(theirs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_param_groups_with_own_hyperparameters() -> None:
    base = make_model()
    batches = make_batches(5)
    ours, theirs = twin(base), twin(base)

    def groups(model):
        return [
            {"params": list(model[0].parameters()), "lr": 3e-2, "weight_decay": 0.1},
            {"params": list(model[1].parameters()) + list(model[3].parameters()), "betas": (0.8, 0.9)},
        ]

    train(ours, fastoptim.AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.999), eps=1e-8), batches)
    train(theirs, torch.optim.AdamW(groups(theirs), lr=1e-2, foreach=False), batches)
    for a, b in zip(params_of(ours), params_of(theirs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_closure_step_hooks_and_missing_grads() -> None:
    model = make_model()
    frozen = model[3].bias
    optimizer = fastoptim.Adam(model.parameters(), lr=1e-2)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    batch = make_batches(1)[0]

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        frozen.grad = None
        return loss

    before = frozen.detach().clone()
    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert calls == ["pre", "post"]
    assert torch.equal(frozen, before)
    assert frozen not in optimizer.state


def test_zero_grad() -> None:
    model = make_model()
    optimizer = fastoptim.SGD(model.parameters(), lr=0.1)
    loss_fn(model, make_batches(1)[0]).backward()
    optimizer.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_param_groups_weight_decay() -> None:
    model = make_model()
    no_decay, decay = fastoptim.param_groups_weight_decay(model, 0.05, skip=("3.weight",))
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["0.weight"]
    assert [names[id(p)] for p in no_decay["params"]] == [
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    ]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adam", fastoptim.Adam),
        ("AdamW", fastoptim.AdamW),
        ("s-g-d", fastoptim.SGD),
        ("LION", fastoptim.Lion),
        ("adopt", fastoptim.ADOPT),
        ("adan", fastoptim.Adan),
        ("adamp", fastoptim.AdamP),
        ("sgdp", fastoptim.SGDP),
        ("prodigy", fastoptim.Prodigy),
        ("dadapt_sgd", fastoptim.DAdaptSGD),
        ("dadapt_adam", fastoptim.DAdaptAdam),
        ("dadapt-adagrad", fastoptim.DAdaptAdaGrad),
        ("DAdaptLion", fastoptim.DAdaptLion),
        ("dadapt_adan", fastoptim.DAdaptAdan),
    ],
)
def test_create_optimizer_by_name(name: str, cls: type) -> None:
    model = make_model()
    optimizer = fastoptim.create_optimizer(name, model, lr=1e-3)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_create_optimizer_groups_and_errors() -> None:
    model = make_model()
    optimizer = fastoptim.create_optimizer(fastoptim.AdamW, model, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1]
    flat = fastoptim.create_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=0.1)
    assert len(flat.param_groups) == 1
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        fastoptim.create_optimizer("adamx", model, lr=1e-3)
    with pytest.raises(TypeError, match="name_or_class"):
        fastoptim.create_optimizer(torch.optim.Adam, model, lr=1e-3)


def test_create_optimizer_leaves_biases_undecayed_with_the_default_decay_too() -> None:
    """AdamW's default weight decay (1e-2) gets the same groups as an explicit one."""
    model = make_model()
    default = fastoptim.create_optimizer("adamw", model, lr=1e-3)
    explicit = fastoptim.create_optimizer("adamw", model, lr=1e-3, weight_decay=1e-2)
    assert [g["weight_decay"] for g in default.param_groups] == [0.0, 1e-2]
    for ours, theirs in zip(default.param_groups, explicit.param_groups, strict=True):
        assert [id(p) for p in ours["params"]] == [id(p) for p in theirs["params"]]
    assert len(fastoptim.create_optimizer("adam", model, lr=1e-3).param_groups) == 1  # default 0


def test_foreach_alias() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert fastoptim.Adam(params, lr=1e-3, foreach=True).backend == "foreach"
    assert fastoptim.Adam(params, lr=1e-3, foreach=False).backend == "loop"
    assert fastoptim.Adam(params, lr=1e-3).backend == "auto"


def test_deepcopy_and_pickle_roundtrip() -> None:
    import copy
    import pickle

    model = make_model()
    optimizer = fastoptim.Lion(model.parameters(), lr=1e-3, backend="foreach")
    train(model, optimizer, make_batches(2))
    clone = copy.deepcopy(optimizer)
    assert clone.backend == "foreach"
    restored = pickle.loads(pickle.dumps(optimizer))
    assert restored.backend == "foreach" and restored.optimizer_accumulation is False


def test_help_shows_the_optimizer_api_not_the_algorithm_hooks() -> None:
    import pydoc

    from fastoptim.optimizer import INTERNAL_HOOKS

    text = pydoc.render_doc(fastoptim.Adan, renderer=pydoc.plaintext)
    assert "optimizer = fastoptim.Adan(" in text.split("Args:")[0]  # the example comes first
    public = ("step(", "zero_grad(", "state_dict(", "load_state_dict(", "add_param_group(", "restart_opt(")
    for name in public:
        assert name in text, name
    for hook in ("rule(", "scalars(", "global_scalars(", "begin_group(", "weight_decay_terms("):
        assert hook not in text, hook
    for name in INTERNAL_HOOKS:  # hidden from help() only: still there for algorithms and runners
        assert hasattr(fastoptim.Prodigy, name), name
