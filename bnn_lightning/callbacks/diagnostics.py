"""``BNNDiagnostics``: weight flips, activation sign balance and STE saturation, every N steps."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bnn_lightning.layers import binary_layers

__all__ = ["BNNDiagnostics"]


class BNNDiagnostics(Callback):
    """Log per-layer health metrics of the binary layers every ``every_n_steps`` optimizer steps.

    - ``diag/flip_ratio/<layer>``: fraction of latent weights whose sign changed since the last
      logging step (how much the binary network still moves).
    - ``diag/sign_balance/<layer>``: fraction of the layer's real-valued inputs that are >= 0,
      i.e. that binarize to +1 (0.5 = balanced).
    - ``diag/saturation/<layer>``: fraction of inputs with ``|x| > clip``, where the clipped STE
      passes no gradient (``clip`` of the layer's input quantizer, 1 by default).

    Plus the mean over layers of each (``diag/<name>_mean``). Input statistics come from forward
    pre-hooks that exist only during logging steps, so other steps cost nothing; their counts are
    summed over all processes before the ratios are taken, so the values are exact under DDP.
    Under gradient accumulation a logging step's counts cover all its micro-batches, and the
    metrics are logged once, after the optimizer step.

    Args:
        every_n_steps: Logging period in optimizer steps.
    """

    def __init__(self, every_n_steps: int = 100) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1.")
        self.every_n_steps = every_n_steps
        self._signs: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._step = -1  # the optimizer step being measured

    def _count(self, name: str, layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        """Forward pre-hook: add (#x >= 0, #|x| > clip, #x) of the layer's input."""
        x = args[0].detach()
        clip = float(getattr(getattr(layer, "input_quantizer", None), "clip", 1.0))
        numel = torch.tensor(x.numel(), device=x.device)
        counts = torch.stack([(x >= 0).sum(), (x.abs() > clip).sum(), numel])
        self._counts[name] = self._counts[name] + counts if name in self._counts else counts

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps or self._handles:
            return  # not a logging step, or a later micro-batch of one
        self._step = trainer.global_step
        for name, layer in _layers(pl_module):
            hook = partial(self._count, name)
            self._handles.append(layer.register_forward_pre_hook(hook))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._handles or trainer.global_step == self._step:
            return  # not measuring, or accumulating gradients: the optimizer has not stepped
        for handle in self._handles:
            handle.remove()
        self._handles = []
        metrics = self._input_metrics(trainer) | self._flip_metrics(_layers(pl_module))
        for kind in ("flip_ratio", "sign_balance", "saturation"):
            values = [v for k, v in metrics.items() if k.startswith(f"diag/{kind}/")]
            if values:
                metrics[f"diag/{kind}_mean"] = torch.stack(values).mean()
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def _input_metrics(self, trainer: Trainer) -> dict[str, Tensor]:
        if not self._counts:
            return {}
        names = list(self._counts)
        stacked = torch.stack([self._counts[n] for n in names])
        counts = trainer.strategy.reduce(stacked, reduce_op="sum")
        self._counts = {}
        metrics = {}
        for name, (positive, saturated, numel) in zip(names, counts.float(), strict=True):
            metrics[f"diag/sign_balance/{name}"] = positive / numel
            metrics[f"diag/saturation/{name}"] = saturated / numel
        return metrics

    def _flip_metrics(self, layers: list[tuple[str, nn.Module]]) -> dict[str, Tensor]:
        """Weights are the same on every process, so no reduction is needed here."""
        metrics = {}
        for name, layer in layers:
            signs = cast(Tensor, layer.weight).detach() >= 0
            previous = self._signs.get(name)
            if previous is not None and previous.shape == signs.shape:
                metrics[f"diag/flip_ratio/{name}"] = (signs != previous).float().mean()
            self._signs[name] = signs
        return metrics


def _layers(pl_module: LightningModule) -> list[tuple[str, nn.Module]]:
    """Binary layers of the module's ``net`` (or of the module itself), named within it."""
    net = getattr(pl_module, "net", pl_module)
    return [(n, cast(nn.Module, m)) for n, m in binary_layers(net)]
