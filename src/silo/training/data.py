"""Training images for latent operators: an image folder or a ``datasets`` dataset, split into train and
validation, augmented with torch ops, and sharded across processes.

Memory does not grow with the dataset: a folder is a list of paths read on access, a ``datasets``
dataset is memory-mapped Arrow (hub datasets live in the ``datasets`` cache on disk). The data order is
a pure function of ``(seed, position)``: each process takes its own slice of every global batch and
each image's augmentation is seeded by its position, so results do not depend on worker counts and a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from silo.errors import SiloError
from silo.io.images import IMAGE_SUFFIXES, load_image, pil_to_tensor

#: images larger than this are refused (a 8192 x 8192 photo); PIL's decompression-bomb guard still applies
MAX_PIXELS = 8192 * 8192
#: image headers checked before training starts (the rest fail with the same message when first read)
SCAN_LIMIT = 2000


class FolderSource:
    """Image files under a folder (recursive, sorted), decoded on access and converted to RGB."""

    def __init__(self, folder: str | os.PathLike) -> None:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise SiloError(f"--data {folder}: no such folder")
        self.files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        self.name = str(root)
        if not self.files:
            raise SiloError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def size(self, i: int) -> tuple[int, int]:
        """``(width, height)`` from the header only."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as img:
                return img.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise SiloError(f"{self.files[i]}: not a readable image") from None

    def load(self, i: int) -> Tensor:
        return load_image(self.files[i], convert_rgb=True, max_pixels=MAX_PIXELS)


class HFSource:
    """One split and image column of a ``datasets`` dataset (``load_from_disk`` folder or hub name)."""

    def __init__(self, name: str, split: str = "train", column: str | None = None) -> None:
        import datasets

        try:
            ds = datasets.load_from_disk(name) if Path(name).is_dir() else datasets.load_dataset(name, split=split)
        except Exception as err:  # datasets raises many types; one line with the first message
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            offline = " (offline: only cached datasets load)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            raise SiloError(f"--dataset {name}: cannot load{offline}: {first}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise SiloError(f"--dataset {name}: no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        if isinstance(ds, datasets.IterableDataset):
            raise SiloError(f"--dataset {name}: streaming datasets are not supported; load it as a regular dataset")
        if column is None:
            images = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
            column = images[0] if images else ("image" if "image" in ds.column_names else None)
        if column not in ds.column_names:
            raise SiloError(
                f"--dataset {name}: no image column {column!r} (columns: {', '.join(ds.column_names)}); "
                "pass --image-column"
            )
        if len(ds) == 0:
            raise SiloError(f"--dataset {name}: split {split!r} is empty")
        self.ds, self.column, self.name = ds.select_columns([column]), column, name

    def __len__(self) -> int:
        return len(self.ds)

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def _pil(self, i: int):
        try:
            img = self.ds[int(i)][self.column]
        except Exception as err:  # a corrupt row: name it
            raise SiloError(f"{self.describe(i)}: unreadable ({type(err).__name__}: {err})") from None
        if not hasattr(img, "convert"):
            raise SiloError(f"{self.describe(i)}.{self.column}: not an image ({type(img).__name__})")
        return img

    def size(self, i: int) -> tuple[int, int]:
        return self._pil(i).size

    def load(self, i: int) -> Tensor:
        return pil_to_tensor(self._pil(i))


Source = FolderSource | HFSource


def open_source(data: str | None, dataset: str | None, split: str = "train", column: str | None = None) -> Source:
    if (data is None) == (dataset is None):
        raise SiloError("give exactly one of --data FOLDER or --dataset NAME_OR_DIR")
    return FolderSource(data) if data is not None else HFSource(dataset, split, column)


@dataclass
class DataSplit:
    """Which source indices train and which validate (a seeded draw, fixed for the run)."""

    source: Source
    train: list[int]
    val: list[int] = field(default_factory=list)


def split_data(source: Source, n_val: int | None, seed: int) -> DataSplit:
    """Hold out ``n_val`` images (default: 16, at most a tenth); at least one image must remain to train on."""
    n = len(source)
    if n_val is None:
        n_val = min(16, n // 10)
    if n_val < 0 or n_val >= n:
        raise SiloError(f"{source.name}: {n} images cannot give {n_val} validation images and still train")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return DataSplit(source, sorted(perm[n_val:]), sorted(perm[:n_val]))


def check_images(split: DataSplit, crop: int, limit: int = SCAN_LIMIT) -> None:
    """Fail before training on unreadable or too-small images (all validation images, the first train ones)."""
    folder = isinstance(split.source, FolderSource)
    todo = split.val + split.train[: limit if folder else max(8, limit // 100)]
    for i in todo:
        w, h = split.source.size(i)
        if min(w, h) < crop:
            raise SiloError(f"{split.source.describe(i)}: image is {w}x{h}, smaller than --crop-size {crop}")


# -- augmentation, with torch ops only -------------------------------------------------------------
def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def center_crop(x: Tensor, crop: int) -> Tensor:
    """The centred square of the short side, resized to ``crop`` (validation: no randomness)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return _resize(x[..., top : top + s, left : left + s], crop)


def random_resized_crop(x: Tensor, crop: int, g: torch.Generator, scale=(0.75, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """A region of 75-100% of the area with aspect ratio in [3/4, 4/3], resized to ``crop`` x ``crop``."""
    h, w = x.shape[-2:]
    for _ in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g).item())
        r = math.exp(
            math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand((), generator=g).item()
        )
        cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return _resize(x[..., top : top + ch, left : left + cw], crop)
    return center_crop(x, crop)


def color_jitter(x: Tensor, g: torch.Generator, strength: float = 0.1) -> Tensor:
    """Light brightness, contrast and saturation changes (factors in ``1 +- strength``), in [0, 1] space."""
    b, c, s = (1 + strength * (2 * torch.rand(3, generator=g) - 1)).tolist()
    y = (x + 1) / 2 * b
    y = (y - y.mean()) * c + y.mean()
    grey = 0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]
    y = (y - grey) * s + grey
    return y.clamp(0, 1) * 2 - 1


def augment(x: Tensor, crop: int, g: torch.Generator) -> Tensor:
    x = random_resized_crop(x, crop, g)
    if torch.rand((), generator=g).item() < 0.5:
        x = x.flip(-1)
    return color_jitter(x, g)


# -- datasets and the sharded, resumable batch order ------------------------------------------------
class TrainImages(Dataset):
    """Keys are ``(source index, augmentation seed)``; returns ``(3 x crop x crop image, source index)``."""

    def __init__(self, source: Source, crop: int) -> None:
        self.source, self.crop = source, crop

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        x = self.source.load(index)
        h, w = x.shape[-2:]
        if min(h, w) < self.crop:
            raise SiloError(f"{self.source.describe(index)}: image is {w}x{h}, smaller than --crop-size {self.crop}")
        return augment(x, self.crop, torch.Generator().manual_seed(seed))[0], index


class ShardedBatches:
    """Infinite batches: global position ``p`` is image ``perm_{p // N}[p % N]``; process ``rank`` takes
    positions ``[g*B*W + rank*B, g*B*W + (rank+1)*B)`` of global batch ``g``; starts at batch ``start``."""

    def __init__(self, indices: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.indices, self.batch, self.seed = list(indices), batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self._epoch, self._perm = -1, []

    def position(self, p: int) -> int:
        n = len(self.indices)
        epoch = p // n
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(n, generator=g).tolist()
        return self.indices[self._perm[p % n]]

    def batch_keys(self, g: int) -> list[tuple[int, int]]:
        first = g * self.batch * self.world + self.rank * self.batch
        return [(self.position(p), (self.seed * 7_919 + p) % (2**63 - 1)) for p in range(first, first + self.batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = self.start
        while True:
            yield self.batch_keys(g)
            g += 1


def train_loader(
    split: DataSplit,
    crop: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    start_batch: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """An endless loader of ``(images, indices)`` for this process, starting at micro-batch ``start_batch``."""
    sampler = ShardedBatches(split.train, batch_size, seed, rank, world, start_batch)
    return DataLoader(
        TrainImages(split.source, crop),
        batch_sampler=sampler,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
        pin_memory=torch.cuda.is_available(),
    )


def validation_images(split: DataSplit, crop: int, rank: int = 0, world: int = 1) -> tuple[Tensor, list[int]]:
    """This process's share of the validation images, centre-cropped (fixed for the whole run)."""
    mine = split.val[rank::world]
    if not mine:
        return torch.empty(0, 3, crop, crop), []
    return torch.cat([center_crop(split.source.load(i), crop) for i in mine]), mine


def worker_error_line(err: Exception) -> str:
    """The user-facing line of a SiloError raised inside a DataLoader worker (which wraps it in a traceback)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(err)
    prefix = "silo.errors.SiloError: "
    return last[len(prefix) :] if last.startswith(prefix) else last
