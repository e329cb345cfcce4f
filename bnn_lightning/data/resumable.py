"""``ResumableDataLoader``: a training DataLoader that continues an epoch exactly after a crash.

Lightning saves the ``state_dict`` of a train loader that has one with every checkpoint, and
hands it back through ``load_state_dict`` when ``fit`` resumes (``ckpt_path``). This loader keeps
its randomness apart from the rest of the run: the shuffle and the worker seeds come from its own
``torch.Generator``, and with ``num_workers=0`` the augmentations run under its own copy of the
global random states (torch, NumPy, Python), swapped in while a batch is made. Its state is how
many batches the epoch has yielded, those private random states at the epoch's start and now, and
the global random states (what MixUp or dropout draw from). On resume it restores the global
states at once, then replays the interrupted epoch from the epoch-start states, dropping the
batches already trained on (they are loaded again, not trained on), so training goes on as if it
had never stopped.

Exact on one device for ``num_workers=0`` or non-persistent workers, from any checkpoint that
Lightning's ``ModelCheckpoint`` writes (mid-epoch or at the end of an epoch). With persistent
workers the sample order is exact but random augmentations after the resume differ (the workers'
random streams restart); with ``limit_train_batches`` an end-of-epoch checkpoint looks like a
mid-epoch one and the next epoch's order differs. Under DDP the sampler is Lightning's
``DistributedSampler`` (seeded by epoch) and every rank restores rank 0's states.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
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
        self._epoch_start: dict[str, Any] | None = None
        self._augment_rng: dict[str, Any] | None = None
        self._resume: dict[str, Any] | None = None

    def _private_states(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "augment": self._augment_rng}

    def _set_private_states(self, states: dict[str, Any]) -> None:
        self.generator.set_state(states["generator"])
        self._augment_rng = states["augment"]

    @contextmanager
    def _augment_random_states(self) -> Iterator[None]:
        """With ``num_workers=0``: make the batch under this loader's own global random states."""
        if self.num_workers > 0:
            yield
            return
        outer = get_rng_states(include_cuda=False)
        if self._augment_rng is None:
            seed = int(torch.randint(0, 2**32, (), generator=self.generator))
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
        else:
            set_rng_states(self._augment_rng)
        try:
            yield
        finally:
            self._augment_rng = get_rng_states(include_cuda=False)
            set_rng_states(outer)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None and 0 < resume["yielded"] < len(self):
            self._set_private_states(resume["epoch_start"])
            skip = resume["yielded"]
        elif resume is not None:
            self._set_private_states(resume["current"])
        self._epoch_start, self._yielded = self._private_states(), 0
        with self._augment_random_states():
            batches = super().__iter__()
        while True:
            with self._augment_random_states():
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
            "current": self._private_states(),
            "global": get_rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the global random states now; replay the epoch at the next ``iter``."""
        set_rng_states(state_dict["global"])
        self._resume = state_dict
