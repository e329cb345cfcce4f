"""Per-rank random streams of the training data, and a loader that resumes them exactly.

Every random draw of a training batch comes from a ``torch.Generator`` owned by the part that
draws, seeded from the run's seed and the global rank with :func:`stream_seed`, so each DDP rank
augments its shard with its own stream:

- the order: :class:`EpochSampler`, torchdata's ``StatefulDistributedSampler`` (one permutation
  per seed and epoch, shared by the ranks, each taking its shard) that also keeps its epoch;
- per-image transforms (``TransformSubset`` with a :class:`SeededTransform`): in DataLoader
  workers the stream is re-seeded from the worker's seed (:func:`seed_worker`), and its state is
  the dataset state that ``StatefulDataLoader`` keeps per worker;
- batch transforms in the main process (the in-memory batch augmentation, MixUp / CutMix):
  :class:`RandomStream` objects handed to the loader as ``streams``.

:class:`ResumableDataLoader` is torchdata's ``StatefulDataLoader`` (the position in the epoch,
the workers' states) plus the ``streams``' states and its own generator, which seeds the workers
of each epoch. Lightning saves its ``state_dict`` with every checkpoint and hands it back on
``fit(ckpt_path=...)``; a checkpoint written after an epoch's last batch resumes at the start of
the next epoch. Exact for any number of workers, persistent or not. With ``limit_train_batches``
an end-of-epoch checkpoint looks like a mid-epoch one, and the resumed run finishes the cut
epoch's batches before the next epoch.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

__all__ = [
    "EpochSampler",
    "RandomStream",
    "ResumableDataLoader",
    "SeededTransform",
    "seed_worker",
    "stream_seed",
]

log = logging.getLogger(__name__)


def stream_seed(seed: int, rank: int, name: str) -> int:
    """Seed of the random stream ``name`` on global rank ``rank`` of a run seeded with ``seed``.

    NumPy's ``SeedSequence`` hashes the three into a 63-bit seed, so streams of other ranks or
    names are independent.
    """
    entropy = [seed % 2**64, rank, zlib.crc32(name.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


class RandomStream:
    """Owns a ``torch.Generator`` (on a device) and saves and restores its state.

    Args:
        seed: the generator's seed (see :func:`stream_seed`).
        device: where the generator lives: draws for tensors on a GPU come from a GPU generator.
    """

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.seed = seed
        self.generator = torch.Generator(device).manual_seed(seed)

    def reseed(self, seed: int, device: torch.device | str | None = None) -> None:
        """Start the stream anew from ``seed`` (on ``device``; None keeps the current one)."""
        self.seed = seed
        self.generator = torch.Generator(device or self.generator.device).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def draw_seed(self) -> int:
        """A seed for library code that draws from the global CPU generator (one draw)."""
        return int(torch.randint(0, 2**63 - 1, (), generator=self.generator, device=self.device))

    def state_dict(self) -> dict[str, Any]:
        return {"device": self.device.type, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["device"] != self.device.type:
            raise ValueError(
                f"This augmentation stream was saved on {state['device']} and cannot resume on "
                f"{self.device.type}; resume the run on the same kind of device."
            )
        self.generator.set_state(state["generator"])


class SeededTransform(RandomStream):
    """A per-image transform that draws its randomness from its own stream.

    torchvision's transforms draw from the global CPU generator, so each call runs ``transform``
    under ``torch.random.fork_rng`` with that generator seeded from this stream (one draw per
    image); the global state is left as it was.

    Args:
        transform: the random transform, e.g. a ``v2.Compose``.
        seed: the stream's seed.
    """

    def __init__(self, transform: Callable[[Any], Any], seed: int = 0) -> None:
        super().__init__(seed)
        self.transform = transform

    @classmethod
    def wrap(cls, transform: Callable[[Any], Any]) -> SeededTransform:
        """``transform`` itself if it is a :class:`SeededTransform`, else wrapped in one."""
        return transform if isinstance(transform, SeededTransform) else cls(transform)

    def __call__(self, image: Any) -> Any:
        seed = self.draw_seed()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: give each worker's copy of the dataset a stream of its own.

    Calls ``dataset.seed_worker(worker_seed)`` when the dataset has it; the worker seed is the
    DataLoader's per-epoch base seed plus the worker id.
    """
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "seed_worker"):
        info.dataset.seed_worker(info.seed)


class EpochSampler(StatefulDistributedSampler):
    """torchdata's ``StatefulDistributedSampler`` whose epoch is also part of its state.

    The permutation depends on ``seed`` and the epoch alone; each of ``num_replicas`` ranks takes
    every ``num_replicas``-th index. Lightning calls ``set_epoch`` at each epoch's start, but on
    resume only after the loader's first ``iter``: the saved epoch makes that ``iter`` right.
    """

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.set_epoch(state_dict["epoch"])


class ResumableDataLoader(StatefulDataLoader):
    """A training loader whose position, workers and random streams go into checkpoints.

    Takes the arguments of ``torch.utils.data.DataLoader`` plus:

    Args:
        seed: the run's seed; with ``shuffle`` the sampler is an :class:`EpochSampler` seeded
            with it, and the loader's own generator (the workers' base seeds) is seeded from it
            and ``rank``.
        rank: the global rank: the shard of each epoch and the streams are this rank's.
        world_size: how many ranks share each epoch.
        streams: named main-process random streams (objects with ``state_dict`` /
            ``load_state_dict``) saved and restored with the loader.
    """

    def __init__(
        self,
        dataset: Dataset,
        *args: Any,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        streams: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("shuffle", False) and kwargs.get("sampler") is None:
            kwargs["sampler"] = EpochSampler(dataset, world_size, rank, shuffle=True, seed=seed)
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator().manual_seed(stream_seed(seed, rank, "loader"))
        if kwargs.get("worker_init_fn") is None:
            kwargs["worker_init_fn"] = seed_worker
        with warnings.catch_warnings():  # torchdata 0.11 calls the deprecated torch.set_vital
            warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
            super().__init__(dataset, *args, **kwargs)
        self.rank, self.world_size = rank, world_size
        self.streams = dict(streams or {})
        self._yielded = 0
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        batches = super().__iter__()
        yielded = 0
        if resume is not None:
            self.generator.set_state(resume["generator"])  # the next epoch's workers' seeds
            yielded = resume["yielded"]
            if yielded >= len(self):  # saved after the epoch's last batch: start the next one
                for _ in batches:
                    pass
                if hasattr(self.sampler, "set_epoch"):
                    self.sampler.set_epoch(resume["epoch"] + 1)
                batches, yielded = super().__iter__(), 0
        return self._count(batches, yielded)

    def _count(self, batches: Iterator[Any], yielded: int) -> Iterator[Any]:
        self._yielded = yielded
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch, the workers' states and the random streams."""
        if self._resume is not None:  # restored but not iterated yet
            return self._resume
        generator: Tensor = self.generator.get_state()
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "loader": super().state_dict(),
            "yielded": self._yielded,
            "epoch": getattr(self.sampler, "epoch", 0),
            "generator": generator,
            "streams": {name: stream.state_dict() for name, stream in self.streams.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the streams now and the position at the next ``iter``.

        A state of another rank is ignored: under DDP Lightning saves and hands every rank the
        state of rank 0, and ``ImageDataModule`` restores each rank's own state.
        """
        if not {"rank", "loader", "yielded", "streams"} <= state_dict.keys():
            log.warning(
                "The checkpoint's training loader state has another format (an older version); "
                "the interrupted epoch restarts from its beginning."
            )
            return
        if (state_dict["rank"], state_dict["world_size"]) != (self.rank, self.world_size):
            if self._resume is None:
                log.warning(
                    "The training loader state in the checkpoint is rank %d of %d, this is rank "
                    "%d of %d: its epoch and random streams start anew.", state_dict["rank"],
                    state_dict["world_size"], self.rank, self.world_size,
                )  # fmt: skip
            return
        for name, stream in self.streams.items():
            stream.load_state_dict(state_dict["streams"][name])
        super().load_state_dict(state_dict["loader"])
        self._resume = state_dict
