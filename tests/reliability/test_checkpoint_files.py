"""2. A checkpoint is never half-written, and a bad one is named in one line.
3. Checkpoints are read with ``weights_only=True``: a crafted pickle cannot run code.

The entry points that read a checkpoint: ``fit(ckpt_path=...)`` (``--ckpt_path``), the stage-2
``init_from``, a distillation ``teacher``, and ``export_checkpoint`` (``bnn export``).
"""

from __future__ import annotations

import os
import shlex
import signal
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    bnn,
    fit_args,
    run_differences,
    save_checkpoint,
    tensor_loader,
    tiny_module,
    tiny_trainer,
)

from bnn_lightning.checkpoint_io import AtomicCheckpointIO, CheckpointError, read_checkpoint
from bnn_lightning.export import export_checkpoint
from bnn_lightning.module import BNNClassifier


def test_2_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(
    image_tree: Path, reference_run: Path, tmp_path: Path
) -> None:
    # At step 9 ModelCheckpoint writes the top-k file, then last.ckpt: die half-way through
    # the second write.
    killed = bnn(*fit_args(image_tree, tmp_path, kill_at_step=9, kill_in_save=2))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = tmp_path / "checkpoints"
    (partial,) = folder.glob(".last.ckpt.*.tmp")
    assert partial.stat().st_size > 0 and not zipfile.is_zipfile(partial)  # it stopped half-way
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 6

    resumed = bnn(*fit_args(image_tree, tmp_path), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_differences(reference_run, tmp_path) == {}
    assert not partial.exists()  # the next write of last.ckpt removed it


def fit_from(root: Path, **kwargs: object) -> Callable[[Path], object]:
    """``path -> fit`` of a tiny module that reads ``path`` through ``kwargs`` or ``ckpt_path``."""

    def run(path: Path) -> object:
        if not kwargs:  # the trainer reads ckpt_path through its plugin (the CLI's default)
            trainer = tiny_trainer(root, plugins=[AtomicCheckpointIO()])
            return trainer.fit(tiny_module(), tensor_loader(), ckpt_path=path)
        options = {k: str(path) if v is None else v for k, v in kwargs.items()}
        return tiny_trainer(root).fit(tiny_module(**options), tensor_loader())

    return run


READERS = {
    "ckpt_path": lambda root: fit_from(root),
    "init_from": lambda root: fit_from(root, init_from=None),
    "teacher": lambda root: fit_from(root, teacher=None, kd_weight=0.5),
    "export": lambda root: lambda path: export_checkpoint(path, root / "model.bnn"),
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good")
    return save_checkpoint(tiny_module(), root / "good.ckpt", root)


def corrupt(kind: str, good: Path, path: Path) -> Path:
    data = good.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}
    path.write_bytes(damaged[kind])
    return path


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_2_truncated_or_corrupt_checkpoint_is_one_line_error_naming_the_file(
    kind: str, reader: str, good_checkpoint: Path, tmp_path: Path
) -> None:
    bad = corrupt(kind, good_checkpoint, tmp_path / f"{kind}.ckpt")
    with pytest.raises(CheckpointError) as err:
        READERS[reader](tmp_path)(bad)
    message = str(err.value)
    assert f"Checkpoint {bad} " in message and "truncated or corrupt" in message
    assert "\n" not in message


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # posix.system: how a pickle names it


class ShellPayload(Payload):
    """Unpickling this runs ``os.system`` (``posix.system`` in the pickle): writes ``marker``."""

    def __reduce__(self) -> tuple:
        return (os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",))


def craft(good: Path, folder: Path, payload: type[Payload] = Payload) -> tuple[Path, Path]:
    """A real checkpoint plus an entry whose unpickling would write ``folder/marker``."""
    marker, path = folder / "marker", folder / "crafted.ckpt"
    checkpoint = torch.load(good, weights_only=True)
    torch.save({**checkpoint, "payload": payload(marker)}, path)
    return path, marker


@pytest.fixture
def crafted(good_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    return craft(good_checkpoint, tmp_path)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(("payload", "name"), [(Payload, "exec"), (ShellPayload, SYSTEM)])
def test_3_crafted_pickle_is_refused_unread_naming_the_object(
    reader: str, payload: type[Payload], name: str, good_checkpoint: Path, tmp_path: Path
) -> None:
    path, marker = craft(good_checkpoint, tmp_path, payload)
    with pytest.raises(CheckpointError) as err:
        READERS[reader](tmp_path)(path)
    assert str(err.value) == (
        f"Checkpoint {path} refers to the Python object {name}, which this project's checkpoints "
        "never hold (only tensors and plain values), so it was refused unread; load only "
        "checkpoints you trust."
    )
    assert not marker.exists()


def test_3_lightning_load_from_checkpoint_refuses_it_too_and_the_payload_is_live(
    crafted: tuple[Path, Path],
) -> None:
    path, marker = crafted
    with pytest.raises(Exception, match="Weights only load failed"):
        BNNClassifier.load_from_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what the refusal prevents
    assert marker.read_text() == "pwned"
