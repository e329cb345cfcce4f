"""What ``gpu_check.py`` needs before it starts: the CIFAR-10 archive, and packages offline.

The GPU machine that runs ``make gpu-check`` gets the checkout only (not ``../shared``) and reaches
no package index. :func:`bundle` (``make gpu-bundle``, on a machine with the index) puts the
archive and the wheels of what that machine's Python lacks into ``.gpu/``, which travels with the
checkout; :func:`ensure_packages` installs them there into ``.gpu/site`` and puts the repository
and that folder on the path (no install of the project needed); :func:`find_archive` finds the
archive in ``$BNN_DATA_DIR``, ``.gpu/data`` or ``data``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = "cifar10-jpeg-train.tar.gz"

BUNDLE = ("jsonargparse", "docstring_parser", "typeshed_client", "torchdata")
"""What the project needs and the GPU machine's Python lacks (it has torch, Lightning,
torchvision, torchmetrics, safetensors, Pillow, PyYAML, pytest); wandb is only imported in use."""


def _missing(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    importlib.invalidate_caches()
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_packages(root: Path = ROOT) -> list[str]:
    """Make ``bnn_lightning`` and the packages it needs importable here and in the parts.

    The repository goes on the path (no install needed). Where packages of :data:`BUNDLE` are
    missing (the GPU machine, which has no package index), the wheels in ``.gpu/wheels`` are
    installed into ``.gpu/site`` with pip, offline. Returns the paths added.
    """
    paths = [str(root)]
    wheels = sorted((root / ".gpu" / "wheels").glob("*.whl"))
    if _missing(BUNDLE) and wheels:
        site = root / ".gpu" / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
             "--upgrade", "--target", str(site), *map(str, wheels)],
            check=True,
        )  # fmt: skip
        paths.append(str(site))
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    missing = _missing(BUNDLE)
    if missing:
        raise SystemExit(
            f"gpu_check needs {', '.join(missing)}: install the project (`make install`), or "
            "put their wheels in .gpu/wheels (`make gpu-bundle`) on a machine without an index."
        )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
    return paths


def bundle(root: Path = ROOT) -> list[Path]:
    """Fill ``.gpu/`` for a GPU machine without a package index (``make gpu-bundle``).

    Copies the CIFAR-10 archive from ``$BNN_DATA_DIR`` into ``.gpu/data`` and downloads the wheels
    of :data:`BUNDLE`, at the versions installed here, into ``.gpu/wheels`` (emptied first: two
    versions of one package would stop the install there).
    """
    import importlib.metadata
    import shutil

    source = Path(os.environ.get("BNN_DATA_DIR", "")) / ARCHIVE
    if not source.is_file():
        raise SystemExit(
            f"{source} not found; set BNN_DATA_DIR to the folder that holds {ARCHIVE}."
        )
    data, wheels = root / ".gpu" / "data", root / ".gpu" / "wheels"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, data / ARCHIVE)
    shutil.rmtree(wheels, ignore_errors=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in BUNDLE]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(wheels), *pins],
        check=True,
    )  # fmt: skip
    return [data / ARCHIVE, *sorted(wheels.glob("*.whl"))]


def find_archive(root: Path = ROOT) -> Path | None:
    """The CIFAR-10 archive in ``$BNN_DATA_DIR``, ``.gpu/data`` or ``data``, else None."""
    folders = [os.environ.get("BNN_DATA_DIR"), root / ".gpu" / "data", root / "data"]
    for folder in folders:
        if folder and (Path(folder) / ARCHIVE).is_file():
            return (Path(folder) / ARCHIVE).resolve()
    return None
