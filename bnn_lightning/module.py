"""``BNNClassifier``: the LightningModule that trains any classifier net with the BNN tricks.

The network, optimizer and scheduler are injected (LightningCLI style), the objective is a
:class:`~bnn_lightning.losses.BNNLoss`, and an optional frozen teacher feeds the distillation
terms. The teacher is kept out of the module tree (a plain list), so DDP never wraps it and
checkpoints never save it.

.. code-block:: yaml

    model:
      class_path: bnn_lightning.BNNClassifier
      init_args:
        net: {class_path: bnn_lightning.BinaryResNet, init_args: {arch: resnet18, mode: binary}}
        optimizer: {class_path: torch.optim.Adam, init_args: {lr: 2.0e-4, weight_decay: 0.0}}
        lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR, init_args: {milestones: [40]}}
        init_from: runs/stage1/last.ckpt
        init_from_mode: binary_activations
        teacher: runs/stage1/last.ckpt
        kd_weight: 0.5

The ``bnn`` CLI gives the trainer :class:`~bnn_lightning.checkpoint_io.AtomicCheckpointIO` and
a ``LearningRateMonitor`` (:mod:`bnn_lightning.cli_defaults`); a trainer built in Python gets
them with ``Trainer(plugins=[AtomicCheckpointIO()], callbacks=[LearningRateMonitor()])``.
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from bnn_lightning.checkpoints import (
    build_net,
    freeze,
    init_from_checkpoint,
    is_plain,
    load_net_state,
    load_teacher,
    net_config,
)
from bnn_lightning.checks import (
    check_data_classes,
    check_positive,
    check_teacher_classes,
    make_optimizer,
)
from bnn_lightning.layers import MODES, Mode
from bnn_lightning.losses import BNNLoss, FeatureHooks, hard_labels
from bnn_lightning.optim import describe_groups, parameter_groups
from bnn_lightning.run_length import build_scheduler, check_resumed_length
from bnn_lightning.tta import TTAMode, check_tta, tta_logits

__all__ = ["BNNClassifier"]

Stage = Literal["train", "val", "test"]
SCHEDULE_LENGTH_KEY = "lr_schedule_length"  # the run's length its lr schedule was built for


class BNNClassifier(LightningModule):
    """Image classifier with label smoothing, distillation, center loss and per-stage optimizers.

    Args:
        net: The network (``forward_features`` / ``forward_head`` / ``num_features`` are needed
            only for the center loss).
        num_classes: Number of classes (linked from the datamodule); checked against the net.
        optimizer: Optimizer factory; the default is Adam, default betas (HolmesShuan).
        lr_scheduler: Scheduler factory, e.g. :class:`~bnn_lightning.WarmupMultiStepLR`; one that
            needs the run's length (:class:`~bnn_lightning.OneCycleLR`, ...) gets it from the
            trainer (see :mod:`bnn_lightning.run_length`).
        scheduler_interval: Step the scheduler every ``epoch`` or every optimizer ``step``.
        lr: Overrides the optimizer's lr for every group (the stage-2 lr of a handoff).
        weight_decay: Overrides the optimizer's weight decay (HolmesShuan: 1e-5 stage 1, 0 stage 2).
        no_decay_norm_bias: Decay only conv / linear weights; norms, biases, PReLU slopes and other
            learnable offsets get weight decay 0.
        label_smoothing: ``eps`` of the label cross-entropy.
        kd_weight: Weight of the KL distillation term (the label term gets the rest).
        kd_temperature: Softmax temperature of the KL term.
        refinery_weight: Weight of the label-refinery term (teacher softmax as target).
        feature_pairs: ``{student_module_name: teacher_module_name}`` for attention transfer.
        feature_weight: Weight of the attention-transfer term.
        center_weight: Weight lambda of the center loss on the penultimate features.
        center_alpha: Rate alpha of Wen et al.'s center update (0.5), which moves the class
            centers outside the optimizer (:class:`~bnn_lightning.losses.CenterLoss`).
        teacher: A module, a checkpoint of this project, or ``torchvision:<name>``; loaded
            frozen at the start of ``fit``.
        teacher_weights: State-dict file for a ``torchvision:`` teacher.
        init_from: A stage-1 checkpoint whose network weights are loaded strictly at the start of
            ``fit``; a resume (``ckpt_path``) restores from its own checkpoint and never reads it.
            One line names the checkpoint's mode and quantizers and this net's.
        init_from_mode: The mode the ``init_from`` checkpoint's run must have recorded (stage 2
            requires ``binary_activations``, a stage-1 run); None accepts any.
        tta: Test-time augmentation of validation, test and predict: ``none``, ``flip`` (2
            views) or ``flip_shift`` (6 views); see :mod:`bnn_lightning.tta`. Training is
            unchanged.
    """

    train_metrics: MetricCollection

    def __init__(
        self,
        net: nn.Module,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr: float | None = None,
        weight_decay: float | None = None,
        no_decay_norm_bias: bool = False,
        label_smoothing: float = 0.1,
        kd_weight: float = 0.0,
        kd_temperature: float = 1.0,
        refinery_weight: float = 0.0,
        feature_pairs: dict[str, str] | None = None,
        feature_weight: float = 0.0,
        center_weight: float = 0.0,
        center_alpha: float = 0.5,
        teacher: nn.Module | str | None = None,
        teacher_weights: str | None = None,
        init_from: str | None = None,
        init_from_mode: Mode | None = None,
        tta: TTAMode = "none",
    ) -> None:
        super().__init__()
        if isinstance(net, Mapping):  # load_from_checkpoint passes the recorded net config
            net = build_net(net)
        self._save_hparams(net)
        self.net = net
        self.num_classes = _check_num_classes(net, num_classes)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        check_positive("lr", lr)
        self.lr, self.weight_decay = lr, weight_decay
        self.no_decay_norm_bias = no_decay_norm_bias
        self.criterion = BNNLoss(
            label_smoothing, kd_weight, kd_temperature, refinery_weight, feature_weight,
            center_weight, self.num_classes, getattr(net, "num_features", None), center_alpha,
        )  # fmt: skip
        self.feature_pairs = dict(feature_pairs or {})
        self._student_hooks = FeatureHooks(net, list(self.feature_pairs))
        self._teacher: list[nn.Module] = []
        self._teacher_hooks: FeatureHooks | None = None
        self._teacher_path = teacher if isinstance(teacher, str) else None
        self._teacher_weights = teacher_weights
        self._schedule_length: int | None = None
        self._resumed_schedule_length: int | None = None
        if init_from_mode is not None and init_from_mode not in MODES:
            raise ValueError(f"init_from_mode={init_from_mode!r}; use one of {', '.join(MODES)}.")
        self.init_from, self.init_from_mode = init_from, init_from_mode
        self.tta = check_tta(tta)
        if isinstance(teacher, nn.Module):
            self.set_teacher(teacher)
        elif teacher is None and self.criterion.needs_teacher:
            raise ValueError(
                "kd_weight, refinery_weight or feature_weight > 0 needs a teacher; set teacher to "
                "a checkpoint path, or let StageHandoff(teacher_from_stage1=true) provide one."
            )
        top5 = min(5, self.num_classes)
        for stage in ("train", "val", "test"):  # micro: the fraction of images (not of classes)
            metrics: dict[str, Metric | MetricCollection] = {
                "acc_top1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                "acc_top5": MulticlassAccuracy(self.num_classes, top_k=top5, average="micro"),
            }
            collection = MetricCollection(metrics, prefix=f"{stage}/")
            collection.persistent(stage == "train")  # a mid-epoch resume continues the counts
            setattr(self, f"{stage}_metrics", collection)

    def _save_hparams(self, net: nn.Module) -> None:
        """Save YAML-like arguments only (checkpoints stay ``weights_only`` loadable). ``tta`` is
        not saved: LightningCLI lets a checkpoint's hyperparameters override the command line, and
        how to evaluate is the evaluating command's choice (``bnn validate --model.tta none``)."""
        self.save_hyperparameters(ignore=["net", "teacher", "tta"])
        for key in [k for k, v in self.hparams.items() if not is_plain(v)]:
            del self.hparams[key]
        config = net_config(net)
        if config is not None:
            self.hparams["net"] = config

    def update_net_config(self, **init_args: Any) -> None:
        """Record changed net arguments (e.g. ``mode`` after a handoff) in the saved hparams."""
        recorded = self.hparams.get("net", {}).get("init_args")
        if isinstance(recorded, dict):
            recorded.update({k: v for k, v in init_args.items() if k in recorded})

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher, or None."""
        return self._teacher[0] if self._teacher else None

    def set_teacher(self, teacher: nn.Module) -> None:
        """Freeze ``teacher``, move it next to the net, and hook its matched feature layers."""
        if self._teacher_hooks is not None:
            self._teacher_hooks.remove()
        source = self._teacher_path or type(teacher).__name__
        check_teacher_classes(teacher, self.num_classes, source)
        param = next(self.net.parameters(), None)
        teacher = freeze(teacher)
        if param is not None:
            teacher.to(device=param.device, dtype=param.dtype)
        self._teacher = [teacher]
        self._teacher_hooks = FeatureHooks(teacher, list(self.feature_pairs.values()))

    def snapshot_net(self) -> nn.Module:
        """A frozen copy of the net (without this module's feature hooks), e.g. as a teacher."""
        self._student_hooks.remove()
        try:
            return freeze(deepcopy(self.net))
        finally:
            self._student_hooks = FeatureHooks(self.net, list(self.feature_pairs))

    def set_loss_weights(self, **weights: float) -> None:
        """Change loss weights mid-run (creating the centers on the net's device if needed)."""
        self.criterion.set_weights(**weights)
        if self.criterion.needs_teacher and self.teacher is None:
            raise ValueError(f"Loss weights {weights} need a teacher, and none is set.")
        self.criterion.to(self.device)

    def setup(self, stage: str) -> None:
        """At the start of ``fit``: load the teacher.

        Also checks the datamodule's classes.
        """
        check_data_classes(self.num_classes, getattr(self.trainer, "datamodule", None))
        if stage != "fit":
            return
        if self._teacher_path is not None and self.teacher is None:
            num_classes = self.num_classes
            self.set_teacher(load_teacher(self._teacher_path, self._teacher_weights, num_classes))

    def on_fit_start(self) -> None:
        """Load ``init_from`` unless resuming; move the teacher next to the net.

        Lightning sets ``trainer.ckpt_path`` after ``setup`` when it restores a checkpoint, so
        ``setup`` cannot tell a resume from a fresh start: ``on_fit_start`` comes after the restore
        (for strategies that restore before ``on_fit_start``, such as DDP and one device).
        """
        if self.init_from is not None and self.trainer.ckpt_path is None:
            target = self.hparams.get("net")
            line = init_from_checkpoint(self.net, self.init_from, target, self.init_from_mode)
            rank_zero_info(line)
        if self.teacher is not None:
            self.set_teacher(self.teacher)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Reset the train metrics at an epoch's first batch: a resume from a checkpoint saved
        after an epoch's last batch restores that epoch's counts and skips the epoch hooks."""
        if batch_idx == 0:
            self.train_metrics.reset()

    def configure_callbacks(self) -> list[Callback]:
        """A :class:`~bnn_lightning.callbacks.NonFiniteGuard`, unless the trainer has one."""
        from bnn_lightning.callbacks.guard import NonFiniteGuard  # callbacks import this module

        if any(isinstance(c, NonFiniteGuard) for c in getattr(self.trainer, "callbacks", [])):
            return []
        return [NonFiniteGuard()]

    def on_train_start(self) -> None:
        """A resumed lr schedule must have been built for a run of this run's length."""
        length = self._schedule_length
        check_resumed_length(self._resumed_schedule_length, length, self.scheduler_interval)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._schedule_length is not None:
            checkpoint[SCHEDULE_LENGTH_KEY] = self._schedule_length

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint's net fits this one (naming the arguments that differ), and
        create the class centers when it has them (center loss enabled mid-run)."""
        self._resumed_schedule_length = checkpoint.get(SCHEDULE_LENGTH_KEY)
        source = str(self._trainer.ckpt_path) if self._trainer is not None else "The checkpoint"
        load_net_state(self.net, checkpoint, source)
        has_centers = "criterion.center_loss.centers" in checkpoint["state_dict"]
        if has_centers and self.criterion.center_loss is None:
            self.criterion.enable_center_loss().to(self.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _forward(self, x: Tensor, train: bool) -> tuple[Tensor, Tensor | None]:
        """Logits, and the penultimate features when the center loss needs them."""
        self._student_hooks.enabled = train and self.criterion.feature_weight > 0
        if train and self.criterion.center_weight > 0:
            features = self.net.forward_features(x)  # type: ignore[operator]
            return self.net.forward_head(features), features  # type: ignore[operator]
        return tta_logits(self.net, x, "none" if train else self.tta), None

    def _objective(self, x: Tensor, y: Tensor, logits: Tensor, features: Tensor | None) -> dict:
        teacher_logits, pairs = None, []
        if self.criterion.needs_teacher and self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            student_maps = self._student_hooks.pop()
            teacher_maps = self._teacher_hooks.pop() if self._teacher_hooks else {}
            pairs = [(student_maps[s], teacher_maps[t]) for s, t in self.feature_pairs.items()]
        return self.criterion(logits, y, teacher_logits, features, pairs)

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        logits, features = self._forward(x, stage == "train")
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"The net outputs {logits.shape[-1]} classes but num_classes={self.num_classes}; "
                "build the net with the datamodule's num_classes."
            )
        if stage == "train":
            parts = self._objective(x, y, logits, features)
            self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=False)
        else:
            parts = {"loss": self.criterion.label_loss(logits, y)}
            self.log(f"{stage}/loss", parts["loss"], prog_bar=True, sync_dist=True)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), hard_labels(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return parts["loss"]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return tta_logits(self.net, x, self.tta).float().softmax(dim=1)

    def configure_optimizers(self) -> Any:
        """The injected optimizer over the parameter groups, and the scheduler if any (built for
        what is left of the run: :func:`~bnn_lightning.run_length.build_scheduler`)."""
        groups = parameter_groups(self.net, self.lr, self.weight_decay, self.no_decay_norm_bias)
        optimizer = make_optimizer(self.optimizer_factory, groups)
        rank_zero_info(describe_groups(optimizer))
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler, self._schedule_length = build_scheduler(
            self.lr_scheduler_factory, optimizer, self._trainer, self.scheduler_interval
        )
        # LearningRateMonitor (a default of the bnn CLI) logs train/lr/<group name>
        config = {"scheduler": scheduler, "interval": self.scheduler_interval, "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": config}


def _check_num_classes(net: nn.Module, num_classes: int | None) -> int:
    """``num_classes``, or the net's own when None; a mismatch between the two is an error."""
    own = getattr(net, "num_classes", None) or getattr(net, "init_args", {}).get("num_classes")
    if own is None:
        if num_classes is None:
            raise ValueError("num_classes is not set and the net does not say; pass num_classes.")
        return num_classes
    if num_classes is not None and int(own) != num_classes:
        raise ValueError(
            f"num_classes={num_classes} but the net has {own} outputs; build the net with "
            f"num_classes={num_classes}."
        )
    return int(own)
