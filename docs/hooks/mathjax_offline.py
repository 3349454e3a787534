"""A mkdocs hook that serves MathJax from the site itself, so that the maths renders offline.

MathJax 3 comes with the docs dependencies (the ``sphinx-mathjax-offline`` package ships its
files); after each build this copies them to ``javascripts/mathjax/`` in the site, which
``mkdocs.yml`` loads instead of a CDN.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

#: Where the files go in the built site (``extra_javascript`` points into it).
TARGET = Path("javascripts") / "mathjax"


def _mathjax_folder() -> Path:
    distribution = importlib.metadata.distribution("sphinx-mathjax-offline")
    for file in distribution.files or ():
        if file.name == "tex-mml-chtml.js":
            return Path(distribution.locate_file(file)).parent
    raise FileNotFoundError("sphinx-mathjax-offline has no tex-mml-chtml.js: install the docs extra")


def on_post_build(config: Any, **kwargs: Any) -> None:
    """Copies MathJax (its script, fonts and extensions) into the built site."""
    shutil.copytree(_mathjax_folder(), Path(config["site_dir"]) / TARGET, dirs_exist_ok=True)
