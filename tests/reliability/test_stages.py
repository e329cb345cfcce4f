"""9. A stage-2 run resumes from its own checkpoint alone: the stage-1 file may be gone.
10. The stage handoff (``init_from``) names the source run's mode and quantizers and the target's
in one line, and a config can require the source's mode (stage 2 requires stage 1's
``binary_activations``).

The runs are ``tiny.yaml`` through ``bnn fit`` in this process (4 steps an epoch).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from faults import Crash
from reliability_helpers import (
    ROOT,
    fit_args,
    recorded_losses,
    run_differences,
    save_checkpoint,
    tiny_module,
    tiny_net,
)

from bnn_lightning.checkpoint_io import read_checkpoint
from bnn_lightning.cli import main
from bnn_lightning.module import BNNClassifier

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

STAGE1 = ("--model.net.init_args.mode", "binary_activations", "--threads", "1")  # as in every test


def stage2_args(tree: Path, run: Path, stage1: Path, *extra: str, **faults: int) -> list[str]:
    """Stage 2 of ``tiny.yaml`` from ``stage1`` for 2 epochs (8 steps, checkpoints every 3)."""
    init = ["--model.init_from", str(stage1), "--model.init_from_mode", "binary_activations"]
    return fit_args(tree, run, *init, "--trainer.max_epochs", "2", *extra, **faults)


@pytest.fixture(scope="module")
def stage1_checkpoint(image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stage1")
    main([*fit_args(image_tree, run, *STAGE1, "--trainer.max_epochs", "1")])
    return run / "checkpoints" / "last.ckpt"


def test_9_stage2_resumes_with_ckpt_path_last_after_the_stage1_file_is_deleted(
    image_tree: Path, stage1_checkpoint: Path, tmp_path: Path
) -> None:
    """Stage 2 crashes at step 7 (last.ckpt: step 6), stage 1 is deleted, stage 2 resumes and
    ends like an uninterrupted stage 2."""
    stage1 = tmp_path / "stage1.ckpt"
    stage1.write_bytes(stage1_checkpoint.read_bytes())
    reference, run = tmp_path / "reference", tmp_path / "run"
    main(stage2_args(image_tree, reference, stage1))
    with pytest.raises(Crash):
        main(stage2_args(image_tree, run, stage1, fail_at_step=7))
    stage1.unlink()
    main([*stage2_args(image_tree, run, stage1), "--ckpt_path", "last"])
    assert sorted(recorded_losses(run)) == [7, 8]
    assert run_differences(reference, run) == {}


def test_9_last_ckpt_of_a_finished_stage1_holds_its_final_weights_and_extends_exactly(
    image_tree: Path, stage1_checkpoint: Path, tmp_path: Path
) -> None:
    """Stage 1 ran 4 steps with checkpoints every 3: its ``last.ckpt`` (what stage 2 starts
    from) is step 4's, and a longer run resumed from it ends like one that never stopped."""
    run = stage1_checkpoint.parents[1]
    saved = read_checkpoint(stage1_checkpoint)
    assert saved["global_step"] == 4
    for key, value in torch.load(run / "rec" / "final.pt", weights_only=True).items():
        assert torch.equal(saved["state_dict"][f"net.{key}"], value), key
    longer = tmp_path / "longer"
    shutil.copytree(run / "checkpoints", longer / "checkpoints")
    main(
        [*fit_args(image_tree, longer, *STAGE1, "--trainer.max_epochs", "2"), "--ckpt_path", "last"]
    )
    reference = tmp_path / "reference"
    main(fit_args(image_tree, reference, *STAGE1, "--trainer.max_epochs", "2"))
    assert sorted(recorded_losses(longer)) == [5, 6, 7, 8]
    assert run_differences(reference, longer) == {}


def test_10_init_from_names_the_source_and_target_modes_and_quantizers(
    image_tree: Path, stage1_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        main(stage2_args(image_tree, tmp_path, stage1_checkpoint, "--trainer.max_steps", "1"))
    line = (
        f"init_from {stage1_checkpoint}: binary_activations (ste_sign) -> "
        "binary (ste_sign, magnitude_aware_sign)"
    )
    assert line in caplog.messages


@pytest.mark.parametrize(
    ("source", "found"),
    [("binary", "mode binary"), ("float", "mode float"), (None, "no recorded mode")],
)
def test_10_init_from_of_another_mode_than_required_is_one_sentence_naming_both(
    source: str | None, found: str, tmp_path: Path
) -> None:
    """A fully binary run, a float run, or a plain state dict is not a stage-1 checkpoint."""
    module = BNNClassifier(tiny_net(mode=source or "binary_activations"))
    path = save_checkpoint(module, tmp_path / "source.ckpt", tmp_path)
    if source is None:  # a state dict, which does not record how its net was built
        torch.save(module.net.state_dict(), path)
    stage2 = tiny_module(init_from=str(path), init_from_mode="binary_activations")
    with pytest.raises(ValueError) as err:
        save_checkpoint(stage2, tmp_path / "stage2.ckpt", tmp_path)
    message = str(err.value)
    assert message == (
        f"init_from {path} holds a network of {found}, but init_from_mode requires "
        "binary_activations; point init_from at the checkpoint of a binary_activations run."
    )


def test_10_init_from_without_a_required_mode_loads_any_mode(tmp_path: Path) -> None:
    source = BNNClassifier(tiny_net(mode="float"))
    path = save_checkpoint(source, tmp_path / "float.ckpt", tmp_path)
    stage2 = tiny_module(init_from=str(path))
    save_checkpoint(stage2, tmp_path / "stage2.ckpt", tmp_path)  # trains one step from it


def test_10_stage2_recipes_require_a_stage1_source() -> None:
    for dataset in ("cifar100", "imagenet"):
        config = yaml.safe_load((ROOT / "configs" / dataset / "stage2.yaml").read_text())
        stage1 = yaml.safe_load((ROOT / "configs" / dataset / "stage1.yaml").read_text())
        required = config["model"]["init_from_mode"]
        assert required == stage1["model"]["net"]["init_args"]["mode"] == "binary_activations"


def test_10_an_unknown_required_mode_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="init_from_mode='stage1'; use one of float"):
        BNNClassifier(tiny_net(), init_from_mode="stage1")  # type: ignore[arg-type]
