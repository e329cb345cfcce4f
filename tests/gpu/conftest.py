"""The ``device`` fixture: each test here runs on ``cpu`` (the normal suite) and on ``cuda``.

The ``cuda`` variants carry the ``gpu`` marker: ``pytest -m gpu`` selects them, and they are
skipped with a reason where no CUDA device is visible, so the suite passes on CPU-only machines
while the CPU variants exercise the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from device_helpers import CUDA, NO_CUDA, write_color_tree

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run this folder's compile test last: the slowest, so a time box cuts it alone."""
    items.sort(key=lambda item: item.path.parent == HERE and "compile" in item.path.name)


@pytest.fixture(params=["cpu", CUDA])
def device(request: pytest.FixtureRequest) -> torch.device:
    """``cpu`` or ``cuda``; the ``cuda`` variant is marked ``gpu`` and skipped without CUDA.

    A test can list its own variants with ``@pytest.mark.parametrize("device", [...],
    indirect=True)``, e.g. to mark the CPU one ``slow``.
    """
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request: pytest.FixtureRequest) -> None:
    """A test marked ``gpu`` some other way than through ``device`` is skipped without CUDA too."""
    if request.node.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """Undo the environment variables that Lightning's DDP launcher sets in this process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def color_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 learnable 32x32 images, 8 per class, as ``<root>/train/<class>/<i>.png``."""
    return write_color_tree(tmp_path_factory.mktemp("colors"), per_class=8)
