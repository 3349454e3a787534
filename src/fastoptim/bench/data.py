"""Real text that ships with Python, read deterministically, as byte tokens for a character model.

Two corpora need no download:

* ``stdlib``: the Python standard library's own source, the ``.py`` files next to ``os.py``;
* ``docs``: the Python documentation's topic pages that ship in ``pydoc_data.topics`` (what
  ``help("if")`` prints), English prose with code.

Documents are read in sorted order, the same number of bytes from the start of each, so that a
byte budget covers the whole collection rather than its first files alphabetically.

Every tenth document goes to the validation split, the rest to training, so validation text
is unseen but from the same distribution. Tokens are bytes (a vocabulary of 256), so any text
works without building a vocabulary. The corpus depends on the Python version that runs the
bench; its SHA-256 is recorded with the results.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 256
#: Every ``VALIDATION_EVERY``-th document (by sorted order) is held out for validation.
VALIDATION_EVERY = 10
#: The least text each split must hold.
MIN_SPLIT_BYTES = 1024
#: Corpora and a one-line description of each.
CORPORA = {
    "stdlib": "the Python standard library's source (.py files next to os.py)",
    "docs": "the Python documentation's topic pages (pydoc_data.topics)",
}


@dataclass
class Corpus:
    """A tokenised corpus split into training and validation bytes."""

    name: str
    description: str
    train: torch.Tensor
    validation: torch.Tensor
    documents: int
    sha256: str

    def summary(self) -> dict[str, object]:
        """What the JSON results record about the data."""
        return {
            "corpus": self.name,
            "description": self.description,
            "documents": self.documents,
            "train_bytes": self.train.numel(),
            "validation_bytes": self.validation.numel(),
            "sha256": self.sha256,
        }


def _stdlib_documents() -> list[tuple[str, bytes]]:
    folder = Path(os.path.dirname(os.__file__))
    return [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.py"))]


def _docs_documents() -> list[tuple[str, bytes]]:
    try:
        topics = importlib.import_module("pydoc_data.topics").topics
    except ImportError as error:
        raise ValueError(
            "corpus 'docs' needs pydoc_data.topics, which this Python does not ship; use --task stdlib"
        ) from error
    return [(name, topics[name].encode()) for name in sorted(topics)]


def load_corpus(name: str, budget: int) -> Corpus:
    """Reads at most ``budget`` bytes of corpus ``name``, an equal share from each document.

    Args:
        name: A key of :data:`CORPORA`.
        budget: Total bytes to read (training and validation together).

    Raises:
        ValueError: Unknown corpus, or too little text for the model's context.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    documents = _stdlib_documents() if name == "stdlib" else _docs_documents()
    per_document = budget // max(len(documents), 1)
    train: list[bytes] = []
    validation: list[bytes] = []
    digest = hashlib.sha256()
    for index, (_, text) in enumerate(documents):
        chunk = text[:per_document]
        digest.update(chunk)
        (validation if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train).append(chunk)
    if min(sum(map(len, train)), sum(map(len, validation))) < MIN_SPLIT_BYTES:
        raise ValueError(
            f"corpus {name!r}: {len(documents)} documents give too little text for a training and a "
            f"validation split of {MIN_SPLIT_BYTES} bytes each at a budget of {budget} bytes"
        )
    return Corpus(
        name=name,
        description=CORPORA[name],
        train=_tokens(b"".join(train)),
        validation=_tokens(b"".join(validation)),
        documents=len(train) + len(validation),
        sha256=digest.hexdigest(),
    )


def _tokens(text: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def batch(tokens: torch.Tensor, offsets: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets, ``(len(offsets), context)`` each, starting at ``offsets``."""
    index = offsets[:, None] + torch.arange(context + 1)
    window = tokens[index]
    return window[:, :-1], window[:, 1:]


def random_offsets(
    tokens: torch.Tensor, count: int, context: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` window starts drawn uniformly from ``tokens`` with ``generator``."""
    return torch.randint(0, tokens.numel() - context - 1, (count,), generator=generator)
