"""BatchNorm over the global batch of all processes, on any device (CPU DDP over gloo too).

PyTorch's ``SyncBatchNorm`` (what ``Trainer(sync_batchnorm=True)`` uses) runs on GPUs only. In
training mode :class:`GlobalBatchNorm` normalizes with the mean and (biased) variance of the
whole global batch, computed with two autograd-aware all-reduces (sums, then sums of squared
deviations), so the forward pass, the gradients and the running statistics equal those of one
process that sees the global batch. Outside DDP, or in eval mode, it is a plain BatchNorm.

.. code-block:: yaml

    trainer:  # configs/trainer/ddp_cpu.yaml style: CPU DDP with synchronized BatchNorm
      strategy: ddp
      sync_batchnorm: false
      plugins: [{class_path: bnn_lightning.sync_batchnorm.GlobalBatchNormSync}]
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "GlobalBatchNormSync"]

BN = TypeVar("BN", bound=_BatchNorm)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each input is the sum of the outputs' gradients.

    Kept by hand: ``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated
    (a ``FutureWarning`` on every call) in favour of the private ``_functional_collectives``.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    return _AllReduceSum.apply(tensor)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm (any of 1d / 2d / 3d) whose training statistics span every process."""

    original_class: type[_BatchNorm] = nn.BatchNorm2d
    """The class it replaced, restored by :meth:`GlobalBatchNormSync.revert`."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm needs (N, C, ...) input, got shape {input.shape}.")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(input)
        x = input.float()  # statistics in float32, as F.batch_norm under autocast
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / x.shape[1], device=x.device)
        sums = _all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centered = x - mean.view(shape)
        var = _all_reduce_sum(centered.pow(2).sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
            return out.to(torch.promote_types(input.dtype, self.weight.dtype))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        """As ``F.batch_norm``: momentum (or cumulative) average, unbiased variance."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(n - 1, 1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def _rebuild(module: _BatchNorm, cls: type[BN]) -> BN:
    """A ``cls`` BatchNorm sharing ``module``'s parameters and buffers."""
    new = cls(
        module.num_features, module.eps, module.momentum, module.affine,
        module.track_running_stats,
    )  # fmt: skip
    if module.affine:
        new.weight, new.bias = module.weight, module.bias
    new.running_mean, new.running_var = module.running_mean, module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    return new.train(module.training)


def _swap(module: nn.Module, to_global: bool) -> nn.Module:
    """Replace every ``_BatchNorm`` by a :class:`GlobalBatchNorm` (or back), in place."""
    for name, child in module.named_children():
        module.add_module(name, _swap(child, to_global))
    if to_global and isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        swapped = _rebuild(module, GlobalBatchNorm)
        swapped.original_class = type(module)
        return swapped
    if not to_global and isinstance(module, GlobalBatchNorm):
        return _rebuild(module, module.original_class)
    return module


class GlobalBatchNormSync(LayerSync):
    """Lightning ``LayerSync`` plugin: train with :class:`GlobalBatchNorm` under DDP."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap(model, to_global=True)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap(model, to_global=False)
