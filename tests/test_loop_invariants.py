"""Scalar work the same in every iteration of an innermost loop runs once before it, with the same bits.

``cpu_codegen.loop_invariants`` moves an innermost loop's invariant statements before
it. Checked on a projection like AdamP's (per-row sums, then an update of each row by a
coefficient with square roots and divisions) compiled with and without the rewrite, and on
sources where statements must stay in their loop.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

from fastoptim.runners.compiled.cpu_codegen import loop_invariants
from fastoptim.runners.compiled.cpu_codegen.fusion import inductor_patches
from fastoptim.runners.compiled.cpu_codegen.loop_invariants import with_invariants_hoisted
from fastoptim.runners.compiled.runner import INDUCTOR_OPTIONS
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen

_CAN_PATCH = loop_invariants._CAN_PATCH


def _project(p: Tensor, u: Tensor) -> None:
    """``u`` minus its component along each row of ``p``, by coefficients made of row sums."""
    norm = (p * p).sum(dim=1).sqrt() + 1e-8
    coefficient = (p * u).sum(dim=1) / norm / norm
    u.sub_(p * coefficient.view(-1, 1))


def _compiled(p: Tensor, u: Tensor, hoist: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Tensor]:
    monkeypatch.setattr(loop_invariants, "_CAN_PATCH", hoist and _CAN_PATCH)
    torch._dynamo.reset()
    u = u.clone()
    with inductor_patches(), torch._inductor.config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(torch.compile(_project, dynamic=True, options=INDUCTOR_OPTIONS), p, u)
    return "\n".join(codes), u


def _in_innermost_loop(code: str, pattern: str) -> bool:
    """Whether a line matching ``pattern`` sits inside a ``for`` over columns (``x1``)."""
    closing = None
    for line in code.splitlines():
        if closing is None and re.match(r"^\s*for\(int64_t x1=", line):
            closing = line[: len(line) - len(line.lstrip())] + "}"
        elif closing is not None and line == closing:
            closing = None
        elif closing is not None and re.search(pattern, line):
            return True
    return False


@pytest.mark.skipif(not _CAN_PATCH, reason="this torch lacks KernelGroup.codegen_group")
def test_invariant_square_roots_and_divisions_leave_the_loop_with_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    p, u = torch.randn(300, 77, generator=generator), torch.randn(300, 77, generator=generator)
    before, want = _compiled(p, u, hoist=False, monkeypatch=monkeypatch)
    after, got = _compiled(p, u, hoist=True, monkeypatch=monkeypatch)
    assert _in_innermost_loop(before, r"std::sqrt\(|= tmp\d+ / tmp\d+;")
    assert not _in_innermost_loop(after, r"std::sqrt\(|= tmp\d+ / tmp\d+;")
    assert torch.equal(want, got)
    eager = u.clone()
    _project(p, eager)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)


def _loop(*statements: str, pragma: str = "") -> str:
    lines = ["    {", *([pragma] if pragma else [])]
    lines += ["    for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(ks0); x1+=1)", "    {"]
    lines += [f"        {statement}" for statement in statements]
    return "\n".join([*lines, "    }", "    }"])


def test_what_varies_in_the_loop_or_may_divide_integers_stays_in_it() -> None:
    code = _loop(
        "auto tmp0 = in_ptr0[static_cast<int64_t>(0L)];",  # invariant
        "auto tmp1 = std::sqrt(tmp0);",  # invariant
        "auto tmp2 = in_ptr1[static_cast<int64_t>(x1)];",  # the loop's variable
        "auto tmp3 = out_ptr0[static_cast<int64_t>(0L)];",  # memory the loop writes
        "auto tmp4 = tmp_acc0 * tmp1;",  # a value the loop assigns
        "auto tmp5 = ks1;",
        "auto tmp6 = tmp5 / tmp5;",  # maybe an integer division
        "auto tmp7 = c10::convert<float>(tmp5);",
        "auto tmp8 = tmp1 / tmp7;",  # a float division: invariant
        "tmp_acc0 = tmp_acc0 + tmp2 * tmp3 * tmp4 * tmp6 * tmp8;",
        "out_ptr0[static_cast<int64_t>(x1)] = tmp_acc0;",
    )
    rewritten = with_invariants_hoisted(code)
    before_loop = rewritten[: rewritten.index("for(")]
    inside = rewritten[rewritten.index("for(") :]
    for name in ("tmp0", "tmp1", "tmp5", "tmp7", "tmp8"):
        assert f"auto {name} = " in before_loop and f"auto {name} = " not in inside, name
    for name in ("tmp2", "tmp3", "tmp4", "tmp6"):
        assert f"auto {name} = " in inside and f"auto {name} = " not in before_loop, name


def test_statements_go_before_the_worksharing_directive_but_not_between_other_directives() -> None:
    statement = "auto tmp0 = std::sqrt(in_ptr0[static_cast<int64_t>(0L)]);"
    rewritten = with_invariants_hoisted(
        _loop(statement, "out_ptr0[x1] = tmp0;", pragma="    #pragma omp for nowait")
    )
    assert rewritten.index("auto tmp0") < rewritten.index("#pragma omp for nowait") < rewritten.index("for(")
    simd = _loop(statement, "out_ptr0[x1] = tmp0;", pragma="    #pragma omp simd simdlen(8)")
    assert with_invariants_hoisted(simd) == simd


def test_the_inner_loop_of_a_collapsed_nest_stays_perfectly_nested() -> None:
    code = "\n".join(
        [
            "    #pragma omp for collapse(2)",
            "    for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(ks0); x0+=1)",
            "    {",
            "        for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(ks1); x1+=1)",
            "        {",
            "            auto tmp0 = std::sqrt(in_ptr0[static_cast<int64_t>(0L)]);",
            "            out_ptr0[x1 + ks1*x0] = tmp0;",
            "        }",
            "    }",
        ]
    )
    assert with_invariants_hoisted(code) == code
    nested = code.replace(" collapse(2)", "")
    assert with_invariants_hoisted(nested) != nested  # not collapsed: the square root moves out


def test_a_loop_around_a_tail_loop_of_another_layout_is_not_innermost() -> None:
    """A statement of the scalar tail loop reads its variable (``x0_tail``): nothing moves."""
    code = "\n".join(
        [
            "    for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(3L); x0+=16)",
            "    {",
            "        for (int64_t x0_tail = static_cast<int64_t>(0L);x0_tail < 3; x0_tail++)",
            "        {",
            "            auto tmp0 = x0_tail;",
            "            auto tmp1 = std::sqrt(in_ptr0[static_cast<int64_t>(0L)]);",
            "            out_ptr0[static_cast<int64_t>(x0_tail)] = tmp0 * tmp1;",
            "        }",
            "    }",
        ]
    )
    assert with_invariants_hoisted(code) == code
