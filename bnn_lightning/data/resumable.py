"""``ResumableDataLoader``: a training DataLoader that continues an epoch exactly after a crash.

Lightning saves the ``state_dict`` of a train loader that has one with every checkpoint, and
hands it back through ``load_state_dict`` when ``fit`` resumes (``ckpt_path``). This loader draws
all its randomness from its own ``torch.Generator``: the shuffle, the workers' seeds, and, before
each batch is made, a fresh seed for the global CPU random generators of torch, NumPy and Python
(so augmentations in the main process, and what runs between batches such as MixUp, depend on
the batch alone, not on anything else in the run). Its state is the generator's state at the
epoch's start and now, how many batches the epoch has yielded, and the global random states. On
resume it restores the global states at once, then replays the interrupted epoch from the
epoch-start state, dropping the batches already trained on (they are loaded again, not trained
on), so training goes on as if it had never stopped.

Exact on one device for ``num_workers=0`` or non-persistent workers, from any checkpoint that
Lightning's ``ModelCheckpoint`` writes (mid-epoch or at the end of an epoch). With persistent
workers the sample order is exact but random augmentations after the resume differ (the workers'
random streams restart); with ``limit_train_batches`` an end-of-epoch checkpoint looks like a
mid-epoch one and the next epoch's order differs. Under DDP the sampler is Lightning's
``DistributedSampler`` (seeded by epoch) and every rank restores rank 0's global states.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["ResumableDataLoader", "get_rng_states", "set_rng_states"]


def get_rng_states(include_cuda: bool = True) -> dict[str, Any]:
    """Global random states of torch (and CUDA), NumPy and Python, ``weights_only`` loadable."""
    states = _collect_rng_states(include_cuda=include_cuda)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_states`."""
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    numpy_state = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    _set_rng_states({**states, "numpy": numpy_state})


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch and random states go into checkpoints.

    Takes the arguments of ``torch.utils.data.DataLoader``; without a ``generator`` it makes one,
    seeded from the global torch random state (so ``seed_everything`` fixes it).
    """

    def __init__(self, *args: Any, generator: torch.Generator | None = None, **kwargs: Any) -> None:
        if generator is None:
            seed = int(torch.randint(0, 2**62, ()))
            generator = torch.Generator().manual_seed(seed)
        kwargs["generator"] = generator
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._epoch_start: Tensor | None = None
        self._resume: dict[str, Any] | None = None

    def _reseed_global(self) -> None:
        """Seed the global CPU random generators from this loader's generator."""
        seed = int(torch.randint(0, 2**63 - 1, (), generator=self.generator))
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None and 0 < resume["yielded"] < len(self):
            self.generator.set_state(resume["epoch_start"])
            skip = resume["yielded"]
        elif resume is not None:
            self.generator.set_state(resume["current"])
        self._epoch_start, self._yielded = self.generator.get_state(), 0
        batches = super().__iter__()
        while True:
            self._reseed_global()
            batch = next(batches, None)
            if batch is None:
                return
            self._yielded += 1
            if self._yielded > skip:
                yield batch

    def state_dict(self) -> dict[str, Any]:
        """Batches yielded this epoch and the random states (read when Lightning saves)."""
        if self._resume is not None:
            return self._resume
        return {
            "yielded": self._yielded,
            "epoch_start": self._epoch_start,
            "current": self.generator.get_state(),
            "global": get_rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the global random states now; replay the epoch at the next ``iter``."""
        set_rng_states(state_dict["global"])
        self._resume = state_dict
