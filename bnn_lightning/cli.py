"""The ``bnn`` command: a LightningCLI with the project's defaults, links and two extra subcommands.

.. code-block:: bash

    bnn fit --config configs/cifar100/base.yaml --config configs/cifar100/stage1.yaml
    bnn fit --config configs/cifar100/base.yaml --config configs/cifar100/stage1.yaml \
        --ckpt_path last
    bnn summary --config configs/imagenet/base.yaml --config configs/imagenet/one_stage.yaml
    bnn export --config configs/cifar10/quickstart.yaml --ckpt_path last

What it adds to plain LightningCLI:

- ``data.num_classes`` is linked to ``model.num_classes`` and to the network's ``num_classes``.
- ``data_fallback`` replaces ``data`` when data's root names an unset environment variable (the
  quickstart without ``$BNN_DATA_DIR``); a given root that does not exist is an ``error:`` line.
- A ``ModelCheckpoint`` is always on (``checkpoint.*``): the best ``val/acc_top1`` and ``last.ckpt``
  in ``<trainer.default_root_dir>/checkpoints``, so ``--ckpt_path last`` resumes a run.
  ``last.ckpt`` has a callback of its own that monitors nothing, so
  ``--checkpoint.every_n_train_steps N`` writes it from step N on, before any validation too.
- A logger without ``save_dir`` writes under ``trainer.default_root_dir``; a ``WandbLogger`` runs
  offline when no API key is configured, and becomes a ``CSVLogger`` when ``WANDB_MODE=disabled``.
  Every logger receives the resolved config and the model summary (bits, BOPs, FLOPs).
- Default callbacks and plugins unless the config has its own (:mod:`bnn_lightning.cli_defaults`):
  ``LearningRateMonitor`` in ``fit`` (the lr of every parameter group) and ``AtomicCheckpointIO``.
- ``channels_last`` and ``compile`` speed switches for the network; ``threads`` for the CPU
  (``auto`` leaves the cores that other processes keep busy now alone, see
  :func:`bnn_lightning.threads.auto_threads`; a number is also exported as ``OMP_NUM_THREADS``,
  which Lightning's DDP launchers keep instead of setting cores / processes, and which spawned
  workers start with); ``keep_cpu_memory`` (on by default: training on
  the CPU reuses freed memory instead of faulting in fresh pages each step, see
  :mod:`bnn_lightning.cpu_memory`).
- ``summary`` prints :func:`bnn_lightning.summary.summary` of the configured network; ``export``
  writes a checkpoint's network with 1-bit packed weights
  (:func:`bnn_lightning.export.export_checkpoint`).
- After ``fit`` it prints the final validation metrics, the layer modes and the wall time, split
  into start-up, data, training and validation (:mod:`bnn_lightning.callbacks.timing`).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from bnn_lightning.callbacks.timing import PhaseTimes
from bnn_lightning.checkpoint_io import read_checkpoint
from bnn_lightning.cli_defaults import add_defaults
from bnn_lightning.cli_errors import run_reporting_errors
from bnn_lightning.cpu_memory import keep_freed_memory
from bnn_lightning.data.base import ImageDataModule
from bnn_lightning.export import ExportReport, export_checkpoint
from bnn_lightning.last_checkpoint import recorded_best, split_last_checkpoint
from bnn_lightning.layers import Mode, get_modes
from bnn_lightning.loggers import configure_logger, finish_wandb
from bnn_lightning.module import BNNClassifier
from bnn_lightning.precision import PrecisionInput, resolve_precision, slow_bf16_warning
from bnn_lightning.summary import ModelSummary, summary
from bnn_lightning.threads import auto_threads

__all__ = [
    "BNNCLI",
    "BNNTrainer",
    "LoggerSaveConfigCallback",
    "auto_threads",
    "input_size",
    "main",
]

HELP = """Train, evaluate, summarize and export binary neural networks from YAML configs.

examples:
  bnn fit --config configs/cifar10/quickstart.yaml           # what `make train` runs
  bnn fit --config configs/cifar100/base.yaml --config configs/cifar100/stage1.yaml
  bnn fit --config ... --ckpt_path last                      # resume the run
  bnn fit --config ... --trainer.max_epochs 10 --print_config
  bnn summary --config configs/imagenet/base.yaml            # bits, BOPs, FLOPs per layer
  bnn export --config ... --ckpt_path last                   # 1-bit packed weights
  bnn predict --config ... --ckpt_path last --data.init_args.predict_root DIR  # -> CSV
  bnn fit --help                                             # every option of a subcommand

Configs compose (later files and flags win); outputs go to trainer.default_root_dir.
A mistake ends in one `error:` line; add --verbose for the full report and traceback."""
_SUMMARY_KEYS = ("params", "bops", "flops", "ops", "size_fp32_bytes", "size_packed_bytes")


class _KeepLinesHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter that keeps the description's line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def input_size(datamodule: LightningDataModule | None) -> tuple[int, int, int]:
    """``(3, H, W)`` of the datamodule's images (``image_size``, else CIFAR's 32)."""
    side = int(getattr(datamodule, "image_size", 32))
    return (3, side, side)


class BNNTrainer(Trainer):
    """Lightning's ``Trainer`` plus ``precision: auto`` and the ``summary`` and ``export``
    subcommands of ``bnn``.

    Args:
        precision: Lightning's precisions, or ``auto``: ``bf16-mixed`` where the device computes
            bf16 natively, else ``32-true`` on a CPU and ``16-mixed`` on a CUDA GPU
            (:mod:`bnn_lightning.precision`).
        **kwargs: The other arguments of :class:`~lightning.pytorch.Trainer`.
    """

    def __init__(self, *, precision: PrecisionInput | None = None, **kwargs: Any) -> None:
        accelerator = kwargs.get("accelerator", "auto")
        if warning := slow_bf16_warning(precision, accelerator):
            rank_zero_warn(warning)
        precision, line = resolve_precision(precision, accelerator)
        if line:
            rank_zero_info(line)
        super().__init__(precision=precision, **kwargs)

    def summary(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        image_size: int | None = None,
    ) -> ModelSummary:
        """Print the bits, BOPs and FLOPs of the configured network, layer by layer.

        Args:
            model: The module whose ``net`` is summarized.
            datamodule: Gives the input size when ``image_size`` is not set.
            image_size: Side of the square input image.
        """
        size = (3, image_size, image_size) if image_size else input_size(datamodule)
        result = summary(getattr(model, "net", model), size)
        print(result)
        return result

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        output: str | None = None,
        mode: Mode | None = None,
    ) -> ExportReport:
        """Write a checkpoint's network with 1-bit packed weights and print the file sizes.

        Args:
            model: The configured module; the checkpoint's weights are loaded into its ``net``.
            datamodule: Its ``mean`` / ``std`` are recorded in the file.
            ckpt_path: The checkpoint to export (``last`` = the run's ``last.ckpt``).
            output: The packed file; defaults to the checkpoint path with suffix ``.bnn``.
            mode: Put the binary layers in this mode before exporting (e.g. ``binary``).
        """
        if ckpt_path is None:
            raise ValueError("export needs --ckpt_path: a checkpoint file, or last / best.")
        path = self._resolve_checkpoint(ckpt_path)
        report = export_checkpoint(
            path,
            output or path.with_suffix(".bnn"),
            net=getattr(model, "net", model),
            mode=mode,
            mean=getattr(datamodule, "mean", None),
            std=getattr(datamodule, "std", None),
            input_size=input_size(datamodule),
        )
        print(report)
        return report

    def _resolve_checkpoint(self, ckpt_path: str) -> Path:
        """``last`` / ``best`` name the files of this run's ``ModelCheckpoint`` (``best``: the one
        the run recorded as best, :func:`~bnn_lightning.last_checkpoint.recorded_best`); else a
        path."""
        callback = self.checkpoint_callback
        if ckpt_path == "best" and isinstance(callback, ModelCheckpoint):
            return recorded_best(callback)
        if ckpt_path == "last" and isinstance(callback, ModelCheckpoint):
            folder = Path(callback.dirpath or self.default_root_dir)
            found = sorted(folder.glob(f"{ckpt_path}*.ckpt"), key=os.path.getmtime)
            if not found:
                raise FileNotFoundError(
                    f"No {ckpt_path}*.ckpt in {folder}; train first or pass a checkpoint path."
                )
            return found[-1]
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"Checkpoint {ckpt_path} does not exist; check --ckpt_path.")
        return Path(ckpt_path)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` next to the logs; send the config and the model summary to loggers."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.loggers:
            return
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        net = getattr(pl_module, "net", pl_module)
        totals = summary(net, input_size(getattr(trainer, "datamodule", None))).to_dict()
        model_summary = {f"model_summary/{k}": totals[k] for k in _SUMMARY_KEYS if k in totals}
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config, **model_summary})


def _model_values(config: Namespace, subcommand: str | None) -> dict[str, Any]:
    """The ``model.*`` values of a parsed config, by dotted key (empty without a subcommand)."""
    model = config.get(f"{subcommand}.model") if subcommand else None
    return dict(model.items()) if isinstance(model, Namespace) else {}


# model values that BNNCLI links from data.num_classes when it instantiates the classes
_LINKED = ("num_classes", "net.init_args.num_classes")


def _same_value(key: str, before: Any, after: Any) -> bool:
    """Whether a checkpoint's ``after`` leaves ``model.<key>`` as given: equal, a link target
    (set from the data later), or a ``class_path`` naming the same class another way."""
    if before == after or key in _LINKED:
        return True
    if key.endswith("class_path") and isinstance(before, str) and isinstance(after, str):
        return _import_class(before) is _import_class(after) is not None
    return False


def _import_class(path: str) -> Any:
    """The object a dotted ``module.Name`` path names, None if it does not import."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _pick_data(config: Namespace) -> str | None:
    """Put ``data_fallback`` in place of ``data`` when no data root was given; else check it.

    A root that names an unset environment variable (the quickstart's ``$BNN_DATA_DIR``) was not
    given: the fallback is used if there is one. A given root that does not exist (and is not
    to be downloaded) is an error. Returns the error's one line, or None.
    """
    fallback, config.data_fallback = config.get("data_fallback"), None
    data = config.get("data")
    root = data.init_args.get("root") if isinstance(data, Namespace) else None
    if not isinstance(root, str):
        return None
    unset = re.findall(r"\$\{?(\w+)", os.path.expandvars(root))
    if unset and fallback is not None:
        rank_zero_info(f"${unset[0]} is not set: using data_fallback ({fallback.class_path}).")
        config.data = fallback
        return None
    if unset:
        return (
            f"data.init_args.root {root} uses ${unset[0]}, which is not set; set it to the folder "
            "holding the data, or pass --data.init_args.root."
        )
    path = Path(os.path.expandvars(root)).expanduser()
    if not path.exists() and not data.init_args.get("download"):
        shown = root if str(path) == root else f"{root} ({path})"
        return (
            f"data.init_args.root {shown} does not exist; point it at the dataset's folder or "
            "archive (--data.init_args.root)."
        )
    return None


class BNNCLI(LightningCLI):
    """LightningCLI for :class:`~bnn_lightning.BNNClassifier` and the project's DataModules.

    Args:
        args: Command-line arguments (None reads ``sys.argv``), e.g. ``["fit", "--config", ...]``.
        run: Run the subcommand (False only parses and instantiates).
        **kwargs: More :class:`~lightning.pytorch.cli.LightningCLI` arguments.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs["parser_kwargs"] = {
            "description": HELP, "formatter_class": _KeepLinesHelpFormatter,
            **kwargs.get("parser_kwargs", {}),
        }  # fmt: skip
        super().__init__(
            BNNClassifier,
            ImageDataModule,
            trainer_class=BNNTrainer,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then read a ``ckpt_path`` file safely first (a bad one is one
        :class:`~bnn_lightning.checkpoint_io.CheckpointError`, not LightningCLI's raw load)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's: a ``ckpt_path`` file's saved hyperparameters replace the ``model.*``
        values of the command line and configs. Then one warning names each value replaced, so a
        ``--model.*`` given with ``--ckpt_path`` is not dropped silently."""
        subcommand = self.config.get("subcommand")
        before = _model_values(self.config, subcommand)
        super()._parse_ckpt_path()
        after = _model_values(self.config, subcommand)
        replaced = [
            f"model.{key}={before[key]!r} -> {after[key]!r}"
            for key in sorted(before)
            if key in after and not _same_value(key, before[key], after[key])
        ]
        if replaced:
            rank_zero_warn(
                f"--ckpt_path {self.config[subcommand].ckpt_path}: the checkpoint's saved "
                f"hyperparameters replace {', '.join(replaced)} (LightningCLI rebuilds the model "
                "it saved); to train from its weights with other settings, use --model.init_from."
            )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's four plus ``summary`` and ``export``."""
        skip = {"model", "datamodule"}
        return {**LightningCLI.subcommands(), "summary": skip, "export": skip}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc_top1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,  # a rerun rewrites last.ckpt
            }
        )
        parser.add_subclass_arguments(
            ImageDataModule,
            "data_fallback",
            required=False,
            help="DataModule used instead of data when data's root names an unset variable.",
        )
        parser.add_argument(
            "--channels_last", type=bool, default=False, help="Run the net in channels_last."
        )
        parser.add_argument(
            "--compile", type=bool, default=False, help="torch.compile the net (in place)."
        )
        parser.add_argument(
            "--threads",
            type=int | Literal["auto"] | None,
            default=None,
            help="CPU threads of PyTorch: a number, auto (cores not busy elsewhere now), or null.",
        )
        parser.add_argument(
            "--keep_cpu_memory",
            type=bool,
            default=True,
            help="On the CPU, glibc malloc keeps freed memory for the next step (no page faults "
            "on large activations; see bnn_lightning.cpu_memory).",
        )

    def before_instantiate_classes(self) -> None:
        """Pick the data; put checkpoints and logs under ``default_root_dir``; pick the W&B mode;
        add the default callbacks and plugins (:mod:`bnn_lightning.cli_defaults`)."""
        config = self.config.get(str(self.subcommand), self.config)
        if (error := _pick_data(config)) is not None:
            self.parser.error(error)
        out = Path(config.trainer.default_root_dir or "runs")
        config.trainer.default_root_dir = str(out)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(out / "checkpoints")
        if config.trainer.enable_checkpointing is False:  # the always-on callback saves nothing
            config.trainer.enable_checkpointing = None
            config.checkpoint.save_top_k, config.checkpoint.save_last = 0, False
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, Namespace):
                configure_logger(logger, out)
        add_defaults(config.trainer, self.subcommand or "fit")

    def after_instantiate_classes(self) -> None:
        """Give ``last.ckpt`` its own checkpoint callback (:mod:`bnn_lightning.last_checkpoint`);
        apply the ``threads``, ``keep_cpu_memory``, ``channels_last`` and ``compile`` switches."""
        config = self.config.get(str(self.subcommand), self.config)
        best = self.config_init.get(str(self.subcommand), self.config_init).get("checkpoint")
        last = split_last_checkpoint(best, config.checkpoint) if best is not None else None
        if last is not None:
            # after the best callback: trainer.checkpoint_callback stays the best one
            self.trainer.callbacks.append(last)  # type: ignore[attr-defined]  # set in __init__
        if self.subcommand == "fit":
            self.phase_times = PhaseTimes()
            self.trainer.callbacks.append(self.phase_times)  # type: ignore[attr-defined]
        threads = config.get("threads")
        if threads is not None:
            torch.set_num_threads(auto_threads() if threads == "auto" else threads)
            if threads != "auto":  # Lightning's DDP launchers keep it (else: cores / processes)
                os.environ["OMP_NUM_THREADS"] = str(threads)
            rank_zero_info(f"torch threads: {torch.get_num_threads()} (threads: {threads})")
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        if on_cpu and config.get("keep_cpu_memory") and keep_freed_memory():
            rank_zero_info("CPU memory: freed blocks kept for the next step (keep_cpu_memory)")
        net = getattr(self.model, "net", self.model)
        if config.get("channels_last"):
            net.to(memory_format=torch.channels_last)
        if config.get("compile"):
            if on_cpu:
                check_cpp_compiler()
            net.compile()

    def before_fit(self) -> None:
        self.phase_times.fit_started()

    def after_fit(self) -> None:
        """Print the final validation metrics, the binary layers' modes and the wall time from
        the process's start, with where it went (:mod:`bnn_lightning.callbacks.timing`)."""
        metrics = self.trainer.callback_metrics
        shown = ", ".join(
            f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith("val/")
        )
        modes = dict(get_modes(getattr(self.model, "net", self.model)))
        tta = getattr(self.model, "tta", "none")
        if self.trainer.is_global_zero:
            print(
                f"Final validation: {shown or 'none (no validation ran)'}; binary layers {modes}; "
                f"test-time augmentation {tta}; "
                f"wall time {self.phase_times.describe()}.",
                flush=True,
            )
        self.finish_loggers()

    def after_validate(self) -> None:
        self.finish_loggers()

    def after_test(self) -> None:
        self.finish_loggers()

    def after_predict(self) -> None:
        self.finish_loggers()

    def finish_loggers(self) -> None:
        """Close the W&B run, so its files are complete and a next in-process run is a new one."""
        finish_wandb(self.trainer.loggers)


def check_cpp_compiler() -> None:
    """Raise a one-line error when ``torch.compile`` finds no C++ compiler for CPU code (it would
    otherwise fail at the first step, after the data has loaded)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let torch.compile report it
        return
    try:
        get_cpp_compiler()
    except Exception as error:
        found = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"compile: true needs a C++ compiler on the CPU ({found}); install g++ or clang++ "
            "(or set CXX), or pass --compile false."
        ) from None


def main(args: list[str] | None = None) -> None:
    """Entry point of ``bnn`` and ``python -m bnn_lightning`` (``args`` for in-process calls)."""
    run_reporting_errors(BNNCLI, args, list(BNNCLI.subcommands()))
