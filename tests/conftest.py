"""Shared fixtures: real data from ``BNN_DATA_DIR`` (default ``../shared/data``), seeds, W&B."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def shared_data_dir() -> Path:
    """Folder with the offline archives: ``$BNN_DATA_DIR`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("BNN_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"no offline data at {path}; set BNN_DATA_DIR to the folder with the archives")
    return path


@pytest.fixture(scope="session")
def cifar10_archive(data_dir: Path) -> Path:
    path = data_dir / "cifar10-jpeg-train.tar.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found; set BNN_DATA_DIR to the folder that holds it")
    return path


@pytest.fixture(scope="session")
def imagenette_archive(data_dir: Path) -> Path:
    path = data_dir / "imagenette-224.tar.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found; set BNN_DATA_DIR to the folder that holds it")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extraction cache shared by every test of one session (``$BNN_CACHE_DIR`` if set)."""
    env = os.environ.get("BNN_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("bnn_cache")


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seed every test, and run it on one torch thread.

    The tests use tiny models, for which two threads cost more in synchronisation than they
    gain; one thread also keeps the suite fast when the machine is busy.
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
