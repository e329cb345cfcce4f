"""Center loss with the class-center update of Wen et al. (ECCV 2016), outside the optimizer.

Wen, Zhang, Li and Qiao, "A Discriminative Feature Learning Approach for Deep Face Recognition"
(ECCV 2016): the loss pulls each feature toward its class center,

.. code-block:: text

    L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2          (gradient to the features only)

and every training step moves the centers of the classes in the batch toward their features
(Algorithm 1; ``n_j`` counts the batch's samples of class ``j``):

.. code-block:: text

    c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),    alpha = 0.5

Classes absent from the batch keep their center. Under DDP the sums and counts are summed over
the ranks first, so the update is that of the global batch and every rank holds the same
centers. A center starts as the mean feature of its class the first time the class is seen, at
the scale of the features (a random or zero start would make the first steps' loss measure the
distance to an arbitrary point).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["CenterLoss"]


def hard_labels(target: Tensor) -> Tensor:
    """Class indices from int labels ``(N,)`` or soft targets ``(N, C)`` (argmax)."""
    return target.argmax(dim=1) if target.is_floating_point() else target


def _sum_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes of the default group (itself without one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class CenterLoss(nn.Module):
    """Center loss ``0.5 * mean_i ||x_i - c_{y_i}||^2`` whose centers follow Wen et al.'s update.

    In training mode, :meth:`forward` returns the loss against the centers before the step and
    then updates them (:meth:`update`); in eval mode it only measures. The centers are buffers
    (saved in checkpoints, never seen by the optimizer).

    Args:
        num_classes: Number of classes (rows of ``centers``).
        num_features: Size of the penultimate feature vector.
        alpha: Rate of the center update (Wen et al.: 0.5), in ``(0, 1]``.
    """

    centers: Tensor
    initialized: Tensor

    def __init__(self, num_classes: int, num_features: int, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"center_alpha={alpha} must be in (0, 1]; Wen et al. use 0.5.")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, num_features))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        labels = hard_labels(target)
        if self.training:
            counts, sums = self._batch_sums(features, labels)
            self._initialize(counts, sums)
            centers = self.centers[labels]  # a copy: the loss sees the centers before the update
            self._apply_update(counts, sums)
        else:
            centers = self.centers[labels]
        return 0.5 * (features.float() - centers).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update(self, features: Tensor, target: Tensor) -> None:
        """One step of Wen et al.'s update with a batch (first-seen classes start at their mean)."""
        counts, sums = self._batch_sums(features, hard_labels(target))
        self._initialize(counts, sums)
        self._apply_update(counts, sums)

    @torch.no_grad()
    def _batch_sums(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per class: ``n_j`` and ``sum_{i: y_i = j} x_i`` over the global batch."""
        num_classes, num_features = self.centers.shape
        stats = self.centers.new_zeros(num_classes, num_features + 1)
        rows = torch.cat([features.detach().float(), stats.new_ones(len(labels), 1)], dim=1)
        stats.index_add_(0, labels, rows)
        stats = _sum_over_ranks(stats)
        return stats[:, num_features], stats[:, :num_features]

    @torch.no_grad()
    def _initialize(self, counts: Tensor, sums: Tensor) -> None:
        new = (counts > 0) & ~self.initialized
        if new.any():
            self.centers[new] = sums[new] / counts[new, None]
            self.initialized |= new

    @torch.no_grad()
    def _apply_update(self, counts: Tensor, sums: Tensor) -> None:
        """``c_j -= alpha * (n_j * c_j - sum_i x_i) / (1 + n_j)``: 0 for absent classes."""
        delta = (counts[:, None] * self.centers - sums) / (1.0 + counts[:, None])
        self.centers.sub_(self.alpha * delta)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Centers saved without ``initialized`` (learned as parameters) count as initialized."""
        key = prefix + "initialized"
        if prefix + "centers" in state_dict and key not in state_dict:
            state_dict[key] = torch.ones_like(self.initialized)
        super()._load_from_state_dict(state_dict, prefix, *args)
