"""Every YAML file in configs/ runs (``fast_dev_run``) on tiny fake data, so no config can rot.

A stage file runs composed on its dataset's ``base.yaml`` (``distill.yaml`` and
``stage2_*.yaml`` on ``base`` + ``stage2``, ``<name>_stage2.yaml`` on ``base`` + ``<name>.yaml``),
a trainer preset on the quickstart; ``init_from`` / ``teacher`` point at a stage-1 checkpoint
written by a one-step run (of ``stage1.yaml``, or of ``<name>.yaml`` for ``<name>_stage2.yaml``).
Presets that need GPUs (or several processes: the DDP test runs those) are parsed and validated
here without running; a recipe made for a GPU runs on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fakes import CONFIGS, allow_fake_cifar, tiny_data_args, tiny_run_args

from bnn_lightning.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CONFIG_FILES = sorted(CONFIGS.rglob("*.yaml"))
QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
STAGE2 = "_stage2"


def compose(path: Path) -> list[Path]:
    """The config files to pass, in order, to run ``path``."""
    if path.parent.name == "trainer":
        return [QUICKSTART, path]
    base = path.parent / "base.yaml"
    if not base.is_file() or path == base:
        return [path]
    on_stage2 = path.stem == "distill" or path.stem.startswith("stage2_")
    middle = [path.parent / "stage2.yaml"] if on_stage2 else []
    if path.stem.endswith(STAGE2):
        middle = [path.with_name(path.stem.removesuffix(STAGE2) + ".yaml")]
    return [base, *middle, path]


def data_class(files: list[Path]) -> str:
    classes = [yaml.safe_load(f.read_text()).get("data", {}).get("class_path") for f in files]
    return [c for c in classes if c][-1]


def config_args(files: list[Path]) -> list[str]:
    return [arg for f in files for arg in ("--config", str(f))]


def stage1_checkpoint(files: list[Path], tmp: Path, data: list[str]) -> Path:
    """Run the files' stage 1 for one step (without a teacher) and return its ``last.ckpt``."""
    own = files[-1].stem.endswith(STAGE2)
    stage1 = files[:2] if own else [files[0], files[0].parent / "stage1.yaml"]
    out = tmp / "stage1"
    one_step = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    no_teacher = ["--model.kd_weight", "0", "--model.teacher", "null"]
    main(["fit", *config_args(stage1), *data, *tiny_run_args(out), *one_step, *no_teacher])
    return out / "run" / "checkpoints" / "last.ckpt"


def needs_own_run(path: Path) -> str | None:
    """Why a preset is only parsed here, or None when it runs."""
    trainer = yaml.safe_load(path.read_text()).get("trainer", {})
    if trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        return "needs a GPU"
    if trainer.get("strategy") == "ddp":
        return "multi-process: run by tests/e2e/test_ddp.py"
    return None


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_runs_on_tiny_data(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    allow_fake_cifar(monkeypatch)
    files = compose(path)
    data = tiny_data_args(data_class(files), tmp_path)
    args = [*config_args(files), *data, *tiny_run_args(tmp_path)]
    raw = "\n".join(f.read_text() for f in files)
    if "init_from:" in raw or "teacher:" in raw:
        ckpt = str(stage1_checkpoint(files, tmp_path, data))
        args += ["--model.init_from", ckpt] if "init_from:" in raw else []
        args += ["--model.teacher", ckpt] if "teacher:" in raw else []
    reason = needs_own_run(path)
    if reason == "needs a GPU" and path.parent.name != "trainer":  # a GPU recipe runs on CPU
        args, reason = [*args, "--trainer.accelerator", "cpu"], None
    if reason is not None:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None), reason
        printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
        preset = yaml.safe_load(path.read_text())["trainer"]
        assert {k: printed[k] for k in preset} == preset
        return
    main(["fit", *args, "--trainer.fast_dev_run", "1"])
    assert "Final validation: val/acc_top1=" in capsys.readouterr().out
