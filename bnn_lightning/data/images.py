"""Image files of a ``<split>/<class>/<image>`` tree: listing, loading, checking, decoding.

Every image is loaded as RGB (greyscale, palette and RGBA files are converted). A file that does
not decode raises :class:`CorruptImageError` naming it, unless the datamodule skips corrupt
files (``skip_corrupt``), which drops them up front and logs how many.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

__all__ = [
    "CorruptImageError",
    "ImageFileDataset",
    "Sample",
    "check_same_classes",
    "decode_images",
    "drop_corrupt",
    "list_split",
    "load_rgb",
    "tensor_cache_file",
]

log = logging.getLogger(__name__)
Sample = tuple[str, int]


class CorruptImageError(RuntimeError):
    """An image file that PIL cannot decode."""


def list_split(split_dir: Path) -> tuple[list[str], list[Sample]]:
    """Sorted class names and ``(path, class index)`` samples of one split folder.

    torchvision's ``find_classes`` and ``make_dataset`` (ImageFolder's listing: class folders
    sorted, images found recursively by extension); an empty class folder is an error naming it.
    """
    try:
        classes, class_to_idx = find_classes(str(split_dir))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>."
        ) from err
    samples = make_dataset(str(split_dir), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    found = {target for _, target in samples}
    empty = [name for name in classes if class_to_idx[name] not in found]
    if empty:
        raise FileNotFoundError(
            f"Class folder {split_dir / empty[0]} holds no images ({', '.join(IMG_EXTENSIONS)}); "
            "add images or remove the folder."
        )
    return classes, samples


def check_same_classes(
    reference: Sequence[str], reference_dir: Path | str, found: Sequence[str], found_dir: Path
) -> None:
    """Raise when the class folders ``found`` in ``found_dir`` differ from ``reference``."""
    if list(reference) != list(found):
        missing = sorted(set(reference) - set(found))
        extra = sorted(set(found) - set(reference))
        raise ValueError(
            f"The class folders of {found_dir} differ from {reference_dir} (only in "
            f"{reference_dir}: {missing[:5]}, only in {found_dir}: {extra[:5]}); both need the "
            "same classes."
        )


def load_rgb(path: str, size: int | None = None) -> Image.Image:
    """Decode ``path`` as RGB; with ``size``, JPEGs decode at a reduced scale >= size (faster)."""
    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size, size))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(
            f"Cannot decode image {path} ({err}); replace or delete it, or set skip_corrupt: true."
        ) from err


class ImageFileDataset(Dataset[tuple[Image.Image, int]]):
    """``(RGB PIL image, class index)`` for each ``(path, class index)`` sample."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        return load_rgb(path), target


class _Decode(Dataset[tuple[np.ndarray | None, int]]):
    """Decode to a uint8 ``(H, W, 3)`` array whose shorter side is ``size``.

    The array is the center ``size`` x ``size`` square, or with ``whole`` the whole image.
    Returns ``(None, index)`` for a corrupt file; with ``check_only`` the file is only decoded at
    the smallest JPEG draft scale and ``(empty array, index)`` is returned.
    """

    def __init__(
        self, samples: Sequence[Sample], size: int, check_only: bool = False, whole: bool = False
    ) -> None:
        self.samples, self.size, self.check_only, self.whole = samples, size, check_only, whole

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, int]:
        try:
            img = load_rgb(self.samples[index][0], 1 if self.check_only else self.size)
        except CorruptImageError:
            return None, index
        if self.check_only:
            return np.empty(0, np.uint8), index
        if min(img.size) != self.size or (not self.whole and img.width != img.height):
            scale = self.size / min(img.size)
            w = max(self.size, round(img.width * scale))
            h = max(self.size, round(img.height * scale))
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        if not self.whole and img.size != (self.size, self.size):
            left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img), index


def _decode_all(
    samples: Sequence[Sample], size: int, check_only: bool, whole: bool = False
) -> dict[int, np.ndarray | None]:
    workers = min(2, os.cpu_count() or 1)
    loader = DataLoader(
        _Decode(samples, size, check_only, whole),
        batch_size=256, num_workers=workers, collate_fn=list,
    )  # fmt: skip
    return {index: img for batch in loader for img, index in batch}


def _keep(samples: Sequence[Sample], bad: list[int], skip: bool, what: str) -> list[Sample]:
    """Samples without the ``bad`` ones; raise for the first bad one unless ``skip``."""
    if bad and not skip:
        load_rgb(samples[bad[0]][0])  # raises CorruptImageError naming the file
    if bad:
        log.warning(
            "Skipped %d corrupt image(s) in %s, e.g. %s", len(bad), what, samples[bad[0]][0]
        )
    drop = set(bad)
    return [s for i, s in enumerate(samples) if i not in drop]


def drop_corrupt(samples: Sequence[Sample], skip: bool, what: str) -> list[Sample]:
    """Decode every sample once (cheaply) and drop or report the corrupt ones."""
    decoded = _decode_all(samples, 1, check_only=True)
    return _keep(samples, [i for i, img in decoded.items() if img is None], skip, what)


def tensor_cache_file(
    samples: Sequence[Sample], size: int, cache_dir: Path, what: str, whole: bool = False
) -> Path:
    """The cache file of :func:`decode_images`; its name hashes the samples, ``size``, ``whole``."""
    kind = "-whole" if whole else ""
    key = hashlib.sha1(repr((list(samples), size, *(["whole"] if whole else []))).encode())
    return cache_dir / f"{what.replace('/', '_')}-{size}px{kind}-{key.hexdigest()[:16]}.pt"


def decode_images(
    samples: Sequence[Sample],
    size: int,
    cache_dir: Path,
    skip: bool,
    what: str,
    whole: bool = False,
) -> dict[str, Tensor]:
    """Decode all samples to uint8 images whose shorter side is ``size``, cached on disk.

    Returns ``images`` ``(N, 3, size, size)`` (the center squares) and ``targets``; with
    ``whole`` the whole images instead, as ``pixels`` (each image's ``(3, H, W)`` flattened, all
    concatenated) and ``shapes`` ``(N, 2)``, see
    :class:`~bnn_lightning.data.memory.RaggedImageDataset`. A changed tree, size or kind decodes
    anew (see :func:`tensor_cache_file`); the file is written under a temporary name and
    renamed, so a partial file is never read.
    """
    cache = tensor_cache_file(samples, size, cache_dir, what, whole)
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        _keep(samples, data.pop("corrupt").tolist(), skip, what)
        return data
    decoded = _decode_all(samples, size, check_only=False, whole=whole)
    bad = [i for i, img in decoded.items() if img is None]
    kept = _keep(samples, bad, skip, what)
    chw = [torch.from_numpy(img).permute(2, 0, 1) for img in decoded.values() if img is not None]
    data = {"targets": torch.tensor([t for _, t in kept], dtype=torch.int64)}
    if whole:
        data["pixels"] = torch.cat([img.flatten() for img in chw])
        data["shapes"] = torch.tensor([img.shape[1:] for img in chw], dtype=torch.int64)
    else:
        data["images"] = torch.stack(chw).contiguous()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({**data, "corrupt": torch.tensor(bad, dtype=torch.int64)}, tmp)
    os.replace(tmp, cache)
    return data
