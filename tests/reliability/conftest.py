"""Fixtures of the reliability tests (helpers live in ``reliability_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reliability_helpers import bnn, fit_args, write_image_tree


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images in 4 classes: 32 train (4 steps of 8 per epoch) and 8 validation."""
    return write_image_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(autouse=True)
def _nondeterministic_again() -> Iterator[None]:
    """Switch off what ``Trainer(deterministic=True)`` switched on for the rest of the suite."""
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="session")
def reference_run(image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``bnn fit`` of ``tiny.yaml``: 3 epochs of 4 steps, checkpoints every 3."""
    run = tmp_path_factory.mktemp("reference")
    result = bnn(*fit_args(image_tree, run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run
