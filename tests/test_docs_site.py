"""The documentation site works offline: no script from a CDN, MathJax served by the site."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_script_comes_from_the_network() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    scripts = config.split("extra_javascript:", 1)[1].split("\n\n", 1)[0]
    assert "javascripts/mathjax/tex-mml-chtml.js" in scripts
    assert "http://" not in scripts and "https://" not in scripts


def test_the_hook_copies_mathjax_into_the_site(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    spec = importlib.util.spec_from_file_location(
        "mathjax_offline", ROOT / "docs" / "hooks" / "mathjax_offline.py"
    )
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook.on_post_build({"site_dir": str(tmp_path)})
    copied = tmp_path / "javascripts" / "mathjax"
    assert (copied / "tex-mml-chtml.js").stat().st_size > 100_000
    assert any((copied / "output" / "chtml" / "fonts").rglob("*.woff"))
