"""``bnn``: a config or data mistake ends in one ``error:`` line; ``--verbose`` shows everything."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from fakes import CONFIGS, tiny_data_args, tiny_run_args
from torchvision.datasets import cifar as cifar_module

from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.cli_errors import one_line_error
from bnn_lightning.data.images import CorruptImageError

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
DATA = "bnn_lightning.ImageFolderDataModule"


def quick_args(tmp: Path) -> list[str]:
    return ["--config", str(QUICKSTART), *tiny_data_args(DATA, tmp), *tiny_run_args(tmp)]


def error_line(args: list[str], capsys: pytest.CaptureFixture, code: int) -> str:
    """Run ``bnn`` and return its only stderr line, checking the exit code."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err[-3000:]
    return err.strip()


def test_a_folder_without_train_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["fit", *quick_args(tmp_path), "--data.init_args.root", str(empty)]
    assert error_line(args, capsys, 1) == (
        f"error: No train/ folder found in {empty}; point root (or subdir) at the folder that "
        "holds train/<class>/<image> (and optionally val/)."
    )


def test_verbose_keeps_jsonargparse_report(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["fit", *quick_args(tmp_path), "--data.init_args.root", str(empty), "--verbose"]
    with pytest.raises(ValueError, match=r"(?s)No train/ folder.*Given value: Namespace\("):
        main(args)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--trainer.max_epochs", "abc"], "trainer.max_epochs: expected int; got abc"),
        (
            ["--model.net.class_path", "bnn_lightning.BinaryResNett"],
            "model.net: Problem with given class_path 'bnn_lightning.BinaryResNett': module "
            "'bnn_lightning' has no attribute 'BinaryResNett'",
        ),
        (["--trainer.max_epohcs", "3"], "unrecognized arguments: --trainer.max_epohcs 3"),
        (["--config", "{tmp}/such.yaml"], "config: File does not exist: '{tmp}/such.yaml'"),
    ],
)
def test_a_parse_error_is_one_line_naming_the_key(
    override: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    override = [a.format(tmp=tmp_path) for a in override]
    line = error_line(["fit", *quick_args(tmp_path), *override], capsys, 2)
    assert line == f"error: {expected.format(tmp=tmp_path)} (see bnn fit --help)"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--model.net.init_args.activation_quantizer", "stesign"], "Unknown quantizer 'stesign'"),
        (["--model.net.init_args.arch", "resnet19"], "Unknown arch 'resnet19'; use one of"),
        (["--model.lr", "-1"], "lr=-1.0 must be a positive number; set lr to e.g. 1e-3."),
    ],
)
def test_a_refused_value_is_the_classes_own_sentence(
    override: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    line = error_line(["fit", *quick_args(tmp_path), *override], capsys, 1)
    assert line.startswith(f"error: {expected}")


def test_a_corrupt_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    line = error_line(["fit", *quick_args(tmp_path), "--ckpt_path", str(bad)], capsys, 1)
    assert line.startswith(f"error: Checkpoint {bad} (16 bytes) is truncated or corrupt")


def test_a_failed_download_says_where_the_data_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart without its archive falls back to torchvision's download."""

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", offline)
    monkeypatch.delenv("BNN_DATA_DIR", raising=False)  # no root given: the fallback applies
    args = ["fit", "--config", str(QUICKSTART), *tiny_run_args(tmp_path)]
    args += ["--data_fallback.init_args.root", str(tmp_path / "cifar")]
    assert error_line(args, capsys, 1) == (
        "error: A download failed (no network); check the network, or point data.init_args.root "
        "at the dataset on disk."
    )


def test_an_error_from_outside_the_package_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError that this package did not raise may be a bug: it is not shortened."""

    def broken(threads: int) -> None:
        raise ValueError("something inside torch")

    monkeypatch.setattr(torch, "set_num_threads", broken)
    with pytest.raises(ValueError, match="something inside torch"):
        main(["fit", *quick_args(tmp_path), "--threads", "1"])
    with pytest.raises(KeyError):  # and a bug in this package too

        def bug(self: BNNCLI) -> None:
            raise KeyError("bug")

        monkeypatch.setattr(BNNCLI, "before_instantiate_classes", bug)
        main(["fit", *quick_args(tmp_path)])


class Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise CorruptImageError(f"Cannot decode image img{index}.png (broken); replace it.")


def test_an_error_in_a_dataloader_worker_is_its_own_sentence() -> None:
    """A worker re-raises with its traceback in the message; the line is the sentence alone."""
    loader = torch.utils.data.DataLoader(Unreadable(), num_workers=1)
    with pytest.raises(CorruptImageError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)
    assert one_line_error(err.value) == "Cannot decode image img0.png (broken); replace it."
