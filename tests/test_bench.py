"""`fastoptim bench` end to end on the tiny preset, and its handling of bad options."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import matplotlib.image

from fastoptim import runners
from fastoptim.bench.cli import main
from fastoptim.bench.data import load_corpus
from fastoptim.bench.report import DIGITS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["bench", "--preset", "tiny", "--quiet", "--optimizers", "adamw", "Lion", "dadapt_sgd"]


def parse_table(stdout: str) -> dict[str, dict[str, str]]:
    """The printed Markdown table as {optimizer: {column: cell}}."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def assert_printed(cell: str, value: float | None, digits: int) -> None:
    if value is None:
        assert cell == "-"
    else:
        assert abs(float(cell) - value) <= 0.5 * 10**-digits + 1e-9, (cell, value)


def test_end_to_end_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--output", str(tmp_path), "--steps", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress on stderr
    results = json.loads((tmp_path / "results.json").read_text())
    table = parse_table(captured.out)

    assert [e["name"] for e in results["optimizers"]] == ["AdamW", "Lion", "DAdaptSGD"]
    assert list(table) == ["AdamW", "Lion", "DAdaptSGD"]
    assert results["settings"]["steps"] == 4
    assert results["settings"]["backends"] == ["loop", "foreach"]
    for entry in results["optimizers"]:
        row = table[entry["name"]]
        assert_printed(row["train loss"], entry["train_loss"], DIGITS["loss"])
        assert_printed(row["validation loss"], entry["validation_loss"], DIGITS["loss"])
        assert_printed(row["state B/param"], entry["state_bytes_per_param"], DIGITS["bytes"])
        for backend in ("loop", "foreach"):
            speed = entry["speed"][backend]
            assert speed["error"] is None
            assert speed["seconds_per_step"] > 0
            assert math.isclose(
                speed["roofline_multiple"], speed["seconds_per_step"] / speed["roofline_seconds"]
            )
            assert_printed(row[f"{backend} ms/step"], speed["seconds_per_step"] * 1e3, DIGITS["ms"])
            assert_printed(row[f"{backend} x roofline"], speed["roofline_multiple"], DIGITS["multiple"])
        curves = entry["curves"]
        assert len(curves["train_loss"]) == 4
        assert curves["eval_steps"] == [3, 4]
        assert curves["validation_loss"][-1] == entry["validation_loss"]
        assert all(math.isfinite(v) for v in curves["train_loss"])

    by_name = {e["name"]: e for e in results["optimizers"]}
    # fp32 states: AdamW keeps two buffers, Lion one, DAdaptSGD three (z, s, x0)
    assert by_name["AdamW"]["state_bytes_per_param"] == 8.0
    assert by_name["Lion"]["state_bytes_per_param"] == 4.0
    assert by_name["DAdaptSGD"]["state_bytes_per_param"] == 12.0
    assert by_name["AdamW"]["roofline_bytes_per_param"] == 28
    assert by_name["Lion"]["roofline_bytes_per_param"] == 20

    for name in ("loss_curves.png", "step_times.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_same_seed_same_losses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--preset", "tiny", "--quiet", "--optimizers", "sgd", "--speed-params", "0"]
    losses = []
    for folder in ("a", "b"):
        assert main([*args, "--output", str(tmp_path / folder)]) == 0
        results = json.loads((tmp_path / folder / "results.json").read_text())
        assert results["speed"] is None
        losses.append(results["optimizers"][0]["curves"]["train_loss"])
    assert losses[0] == losses[1]
    assert not (tmp_path / "a" / "step_times.png").exists()
    assert "| SGD |" in capsys.readouterr().out


def test_corpus_is_deterministic_and_split() -> None:
    first, second = load_corpus("stdlib", 64_000), load_corpus("stdlib", 64_000)
    assert first.sha256 == second.sha256
    assert first.train.numel() > 5 * first.validation.numel() > 0
    assert first.train.max() < 256


BAD_OPTIONS = {
    "no command": [],
    "unknown option": ["bench", "--nosuch"],
    "zero steps": ["bench", "--steps", "0"],
    "steps not a number": ["bench", "--steps", "many"],
    "negative seed": ["bench", "--seed", "-1"],
    "zero threads": ["bench", "--threads", "0"],
    "unknown optimizer": ["bench", "--optimizers", "adamw", "nosuch"],
    "unknown backend": ["bench", "--backends", "loop", "nosuch"],
    "unknown dtype": ["bench", "--dtype", "fp8"],
    "unknown task": ["bench", "--task", "wikipedia"],
    "bad device name": ["bench", "--device", "nosuch"],
    "absent device": ["bench", "--device", "cuda:99"],
}


@pytest.mark.parametrize("argv", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_exit_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("backend", getattr(runners, "PLANNED_BACKENDS", ()))
def test_backend_not_in_this_release(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--backends", backend]) == 2
    assert "not available in this release" in capsys.readouterr().err


def test_output_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["bench", "--output", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a)
    )
    assert main(["bench", "--preset", "tiny"]) == 1
    assert "pip install 'fastoptim[bench]'" in capsys.readouterr().err


def test_python_m_fastoptim_without_the_extras() -> None:
    """``python -m fastoptim`` (as runpy runs it) works, and the library imports, without the extras."""
    code = (
        "import sys, runpy; sys.modules['matplotlib'] = sys.modules['tqdm'] = None; "
        "import fastoptim; sys.argv = ['fastoptim', 'bench', '--steps', '0']; "
        "runpy.run_module('fastoptim', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "--steps" in result.stderr and "Traceback" not in result.stderr
