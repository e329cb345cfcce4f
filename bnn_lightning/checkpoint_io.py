"""Checkpoint files that are never half-written and never run code when read.

Lightning's ``TorchCheckpointIO`` serializes to memory, writes a temporary file in the system
temp folder and moves it over the target: atomic only when that folder shares a filesystem with
the checkpoint folder (else ``shutil.move`` copies over the target in place), and never synced to
disk. :class:`AtomicCheckpointIO` writes a temporary file next to the target, ``fsync`` s it and
``os.replace`` s it into place, so a crash at any moment leaves either the previous checkpoint or
the new one. It reads with ``weights_only=True`` and turns a truncated, corrupt or unsafe file
into one :class:`CheckpointError` naming the file. The ``bnn`` CLI adds it to ``trainer.plugins``
unless the config names another ``CheckpointIO`` (:mod:`bnn_lightning.cli_defaults`); in Python:

.. code-block:: python

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointError", "read_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt, or refers to code (``weights_only``)."""


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (``module.name``) the file's pickle refers to beyond what
    ``weights_only`` allows, found by reading its opcodes without running them."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a readable pickle: reported as corrupt instead
        return []
    return [name.removeprefix("builtins.") for name in names]


def _load_error(path: Path, err: Exception) -> CheckpointError:
    """One-line error for a file that ``torch.load(weights_only=True)`` rejected."""
    unsafe = _unsafe_globals(path) if isinstance(err, pickle.UnpicklingError) else []
    if unsafe:
        objects = "object " if len(unsafe) == 1 else "objects "
        return CheckpointError(
            f"Checkpoint {path} refers to the Python {objects}{', '.join(unsafe)}, which this "
            "project's checkpoints never hold (only tensors and plain values), so it was refused "
            "unread; load only checkpoints you trust."
        )
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return CheckpointError(
        f"Checkpoint {path} is truncated or corrupt ({reason[:120]}); use an earlier checkpoint "
        "or save it again."
    )


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """``torch.load`` with one-line errors naming the file (``weights_only=True`` by default).

    Raises:
        FileNotFoundError: There is no file at ``path``.
        CheckpointError: The file is not a complete PyTorch zip file, or it refers to Python
            objects that ``weights_only`` loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; check the path.")
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise CheckpointError(
            f"Checkpoint {path} ({size} bytes) is truncated or corrupt (not a complete PyTorch "
            "zip file); use an earlier checkpoint or save it again."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as err:
        raise _load_error(path, err) from err


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save through a synced temporary file and ``os.replace``; load with ``weights_only=True``.

    A save also deletes the temporary files of the same target that a killed process left.
    Only local paths are supported (remote URLs need Lightning's own IO).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options.")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a process killed while writing

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | str | torch.device | None = "cpu",
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location, weights_only is not False)
