"""Training objectives: label smoothing, distillation (KL, attention, refinery), center loss.

Each term is a plain function of tensors (easy to test against its formula); :class:`BNNLoss`
selects and weights them from YAML and returns every part, so the module can log the sum and
each term:

.. code-block:: text

    loss = (1 - kd_weight - refinery_weight) * loss_ce
           + kd_weight * loss_kd + refinery_weight * loss_refinery
           + feature_weight * loss_feature + center_weight * loss_center
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning.center_loss import CenterLoss, hard_labels

__all__ = [
    "LOSS_WEIGHTS",
    "BNNLoss",
    "CenterLoss",
    "FeatureHooks",
    "attention_map",
    "attention_transfer_loss",
    "hard_labels",
    "kd_kl_loss",
    "label_smoothing_ce",
    "refinery_loss",
]

LOSS_WEIGHTS: tuple[str, ...] = ("kd_weight", "refinery_weight", "feature_weight", "center_weight")


def label_smoothing_ce(logits: Tensor, target: Tensor, eps: float = 0.1) -> Tensor:
    """Cross-entropy with label smoothing; ``target`` is class indices or soft targets (MixUp).

    With a one-hot target ``y`` the smoothed target is ``(1 - eps) * y + eps / C`` (Szegedy et
    al., "Rethinking the Inception Architecture", 2016; ``CrossEntropyLabelSmooth`` of the
    HolmesShuan collection).
    """
    return F.cross_entropy(logits, target, label_smoothing=eps)


def kd_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T)) * T^2``, averaged over the batch.

    Hinton et al., "Distilling the Knowledge in a Neural Network" (2015); the ``T^2`` factor keeps
    the gradient scale independent of the temperature.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def refinery_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Label refinery: cross-entropy against the teacher's softmax instead of the hard label.

    Bagherinezhad et al., "Label Refinery" (2018).
    """
    return F.cross_entropy(student_logits, F.softmax(teacher_logits.detach(), dim=1))


def attention_map(features: Tensor) -> Tensor:
    """Spatial attention of a ``(N, C, H, W)`` map: channel mean of squares, flat, L2-normalized.

    Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017).
    """
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared distance between the attention maps of a student and a teacher feature map.

    Maps of different spatial size are average-pooled to the smaller one first.
    """
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if student.shape[-2:] != size:
        student = F.adaptive_avg_pool2d(student, size)
    if teacher.shape[-2:] != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return (attention_map(student) - attention_map(teacher.detach())).pow(2).mean()


class FeatureHooks:
    """Forward hooks that record the outputs of named submodules (for feature matching).

    Args:
        model: The network whose submodules are hooked.
        names: Qualified submodule names (``model.named_modules()``), e.g. ``stages.3``.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            known = ", ".join(n for n in list(modules)[1:12] if n)
            raise ValueError(f"No submodule named {unknown}; the names start with: {known}, ...")
        self.enabled = True
        self.outputs: dict[str, Tensor] = {}
        self._handles = [modules[n].register_forward_hook(partial(self._record, n)) for n in names]

    def _record(self, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
        if self.enabled:
            self.outputs[name] = output

    def pop(self) -> dict[str, Tensor]:
        """The recorded outputs since the last call (and forget them)."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles, self.outputs = [], {}


class BNNLoss(nn.Module):
    """The weighted sum of the training losses; :meth:`forward` returns the sum and every part.

    Args:
        label_smoothing: ``eps`` of the label cross-entropy (0 for plain cross-entropy).
        kd_weight: Weight of the KL distillation term; the label term gets
            ``1 - kd_weight - refinery_weight``.
        kd_temperature: Softmax temperature ``T`` of the KL term.
        refinery_weight: Weight of the label-refinery term (1 = teacher softmax replaces labels).
        feature_weight: Weight of the attention-transfer term (summed over the feature pairs).
        center_weight: Weight ``lambda`` of the center loss; > 0 creates the centers.
        center_alpha: Rate ``alpha`` of the center update (Wen et al.: 0.5).
        num_classes: Needed when ``center_weight > 0``.
        num_features: Penultimate feature size, needed when ``center_weight > 0``.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        kd_weight: float = 0.0,
        kd_temperature: float = 1.0,
        refinery_weight: float = 0.0,
        feature_weight: float = 0.0,
        center_weight: float = 0.0,
        num_classes: int | None = None,
        num_features: int | None = None,
        center_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1); e.g. 0.1.")
        if kd_temperature <= 0:
            raise ValueError(f"kd_temperature={kd_temperature} must be positive; e.g. 4.0.")
        self.label_smoothing = label_smoothing
        self.kd_temperature = kd_temperature
        self.num_classes = num_classes
        self.num_features = num_features
        if not 0.0 < center_alpha <= 1.0:
            raise ValueError(f"center_alpha={center_alpha} must be in (0, 1]; Wen et al. use 0.5.")
        self.center_alpha = center_alpha
        self.center_loss: CenterLoss | None = None
        self.kd_weight = self.refinery_weight = self.feature_weight = self.center_weight = 0.0
        self.set_weights(
            kd_weight=kd_weight,
            refinery_weight=refinery_weight,
            feature_weight=feature_weight,
            center_weight=center_weight,
        )

    def set_weights(self, **weights: float) -> None:
        """Change loss weights (names from :data:`LOSS_WEIGHTS`); creates the centers if needed."""
        unknown = sorted(set(weights) - set(LOSS_WEIGHTS))
        if unknown:
            raise ValueError(f"Unknown loss weights {unknown}; use {', '.join(LOSS_WEIGHTS)}.")
        new = {name: float(weights.get(name, getattr(self, name))) for name in LOSS_WEIGHTS}
        negative = {k: v for k, v in new.items() if v < 0}
        if negative:
            raise ValueError(f"Loss weights must be >= 0, got {negative}.")
        if new["kd_weight"] + new["refinery_weight"] > 1.0:
            raise ValueError(
                f"kd_weight + refinery_weight = {new['kd_weight'] + new['refinery_weight']} > 1; "
                "they share the label term's weight, so keep their sum <= 1."
            )
        for name, value in new.items():
            setattr(self, name, value)
        if self.center_weight > 0 and self.center_loss is None:
            self.enable_center_loss()

    def enable_center_loss(self) -> CenterLoss:
        """Create the class centers (on the CPU; the caller moves them to its device)."""
        if self.num_classes is None or self.num_features is None:
            raise ValueError(
                "center_weight > 0 needs num_classes and num_features; use a net with a "
                "`num_features` attribute and set num_classes."
            )
        self.center_loss = CenterLoss(self.num_classes, self.num_features, self.center_alpha)
        return self.center_loss

    @property
    def needs_teacher(self) -> bool:
        """True when a term uses the teacher (KL, refinery or feature matching)."""
        return self.kd_weight > 0 or self.refinery_weight > 0 or self.feature_weight > 0

    def label_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The label-smoothed cross-entropy alone (used for validation and test)."""
        return label_smoothing_ce(logits, target, self.label_smoothing)

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        teacher_logits: Tensor | None = None,
        features: Tensor | None = None,
        feature_pairs: Sequence[tuple[Tensor, Tensor]] = (),
    ) -> dict[str, Tensor]:
        """Every active term (``loss_ce``, ``loss_kd``, ...) and their weighted sum ``loss``."""
        parts = {"loss_ce": self.label_loss(logits, target)}
        label_weight = 1.0 - self.kd_weight - self.refinery_weight
        total = label_weight * parts["loss_ce"]
        if self.kd_weight > 0 or self.refinery_weight > 0:
            if teacher_logits is None:
                raise ValueError("kd_weight / refinery_weight > 0 need teacher logits.")
            if self.kd_weight > 0:
                parts["loss_kd"] = kd_kl_loss(logits, teacher_logits, self.kd_temperature)
                total = total + self.kd_weight * parts["loss_kd"]
            if self.refinery_weight > 0:
                parts["loss_refinery"] = refinery_loss(logits, teacher_logits)
                total = total + self.refinery_weight * parts["loss_refinery"]
        if self.feature_weight > 0:
            if not feature_pairs:
                raise ValueError("feature_weight > 0 needs (student, teacher) feature pairs.")
            parts["loss_feature"] = sum(
                (attention_transfer_loss(s, t) for s, t in feature_pairs), logits.new_zeros(())
            )
            total = total + self.feature_weight * parts["loss_feature"]
        if self.center_weight > 0:
            if features is None or self.center_loss is None:
                raise ValueError("center_weight > 0 needs the penultimate features.")
            parts["loss_center"] = self.center_loss(features, target)
            total = total + self.center_weight * parts["loss_center"]
        return {"loss": total, **parts}
