"""Image-folder trees given as a folder or a ``.tar.gz``: extract once, find the split root.

An archive is extracted into ``<cache_dir>/<archive name>/`` through a temporary folder that is
renamed into place only when extraction finished, so an interrupted run never leaves a folder
that looks complete. The split root is the folder holding ``train/`` (and maybe ``val/``): given
by ``subdir``, or found by descending through folders that have a single sub-folder (the
CIFAR-10 JPEG archive holds ``cifar10-jpeg/train/``).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

__all__ = [
    "ARCHIVE_SUFFIXES",
    "archive_classes",
    "default_cache_dir",
    "extract_archive",
    "extracted_path",
    "find_split_root",
    "is_archive",
]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def default_cache_dir() -> Path:
    """``$BNN_CACHE_DIR`` or ``~/.cache/bnn_lightning``."""
    return Path(os.environ.get("BNN_CACHE_DIR", Path.home() / ".cache" / "bnn_lightning"))


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def extracted_path(archive: Path, cache_dir: Path) -> Path:
    """Where ``archive`` is (or will be) extracted: ``cache_dir / <name without suffix>``."""
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return cache_dir / name


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` into the cache once (temp folder, then atomic rename); return it."""
    target = extracted_path(archive, cache_dir)
    if target.is_dir():
        return target
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist; check the root path.")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tmp.chmod(0o755)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # not a concurrent extraction that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_split_root(path: Path, subdir: str | None = None) -> Path:
    """The folder under ``path`` (or ``path / subdir``) that holds ``train/``."""
    root = path / subdir if subdir else path
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {root} does not exist; check root and subdir.")
    while not (root / "train").is_dir():
        children = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")]
        if len(children) != 1:
            raise FileNotFoundError(
                f"No train/ folder found in {path}; point root (or subdir) at the folder that "
                "holds train/<class>/<image> (and optionally val/)."
            )
        root = children[0]
    return root


def archive_classes(archive: Path, subdir: str | None = None) -> list[str]:
    """Class folder names under the shallowest ``train/`` in an archive, read from its listing."""
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist; check the root path.")
    prefix = PurePosixPath(subdir).parts if subdir else ()
    found: dict[tuple[str, ...], set[str]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.isdir() or parts[: len(prefix)] != prefix or "train" not in parts[:-2]:
                continue
            i = parts.index("train")
            found.setdefault(parts[:i], set()).add(parts[i + 1])
    if not found:
        raise FileNotFoundError(
            f"No train/<class>/<image> files found in archive {archive}; check root and subdir."
        )
    return sorted(found[min(found, key=len)])
