"""What a run restores: image files and folders, a ``datasets`` dataset, bundled examples, silo-tiny's
photo crops, or tensors handed over in Python. Each input is a lazily loaded :class:`~silo.io.inputs.Item`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from silo.errors import SiloError
from silo.io.inputs import Item, dataset_items, example_items, file_items, parse_index_list


@dataclass
class Inputs:
    """Where the images come from (the CLI's input options, as data)."""

    files: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    dataset: str | None = None
    split: str = "train"
    image_column: str | None = None
    index: int | None = None
    start: int | None = None
    end: int | None = None
    index_list: str | None = None
    photos: str | None = None  # "heldout" or "train": silo-tiny's photo crops
    photo_count: int = 16
    photo_size: int = 64
    convert_rgb: bool = False
    max_pixels: int = 4096 * 4096
    param_draws: int = 1


def collect(inputs: Inputs) -> list[Item]:
    """Every input, in order; names are unique (they name the outputs)."""
    items: list[Item] = []
    if inputs.examples:
        items += example_items(inputs.examples)
    if inputs.files:
        items += file_items(inputs.files, inputs.convert_rgb, inputs.max_pixels)
    selectors = [
        inputs.index is not None,
        inputs.start is not None or inputs.end is not None,
        inputs.index_list is not None,
    ]
    if inputs.dataset:
        if sum(selectors) > 1:
            raise SiloError("choose one of --index, --start/--end, --list")
        indices = None
        if inputs.index is not None:
            indices = [inputs.index]
        elif inputs.start is not None or inputs.end is not None:
            if inputs.start is None or inputs.end is None or inputs.end <= inputs.start:
                raise SiloError("--start and --end go together, with --end > --start")
            indices = list(range(inputs.start, inputs.end))
        elif inputs.index_list is not None:
            indices = parse_index_list(inputs.index_list)
        items += dataset_items(inputs.dataset, inputs.split, inputs.image_column, indices, inputs.convert_rgb)
    elif any(selectors):
        raise SiloError("--index/--start/--end/--list select images of a --dataset")
    if inputs.photos:
        items += photo_items(inputs.photos, inputs.photo_count, inputs.photo_size)
    if not items:
        raise SiloError("nothing to restore: give image files or folders, --example NAME, --dataset or --photos")
    items = with_param_draws(items, inputs.param_draws)
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SiloError(f"several inputs share the name(s) {dupes[:5]}; their outputs would collide")
    return items


def tensor_items(images: torch.Tensor, names: list[str] | None = None) -> list[Item]:
    """Items from a ``B x 3 x H x W`` tensor in [-1, 1] (the Python front door)."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise SiloError(f"expected images of shape B x 3 x H x W in [-1, 1], got {tuple(images.shape)}")
    names = names or [f"image-{i:03d}" for i in range(images.shape[0])]
    return [Item(n, f"tensor {n}", lambda x=images[i : i + 1]: x.detach().float().cpu()) for i, n in enumerate(names)]


def with_param_draws(items: list[Item], draws: int) -> list[Item]:
    """Each item, then ``draws - 1`` copies named ``NAME-drawJ``: a copy's name gives it its own seed for the
    degradation's random parameters (``Item.param_seed``), so one image is measured under several motion
    kernels or masks; the first draw keeps the original name. Degradations without random parameters run
    the first draw only (see the runner)."""
    if draws < 1:
        raise SiloError(f"--param-draws must be at least 1, got {draws}")
    out = []
    for item in items:
        out.append(item)
        out += [replace(item, name=f"{item.name}-draw{j}", param_draw=j) for j in range(1, draws)]
    return out


def _crops_to_items(crops, split: str, size: int) -> list[Item]:
    def load(arr):
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

    return [
        Item(f"silo-tiny-{split}-{size}px-{i:03d}", f"silo-tiny {split} crop {i} ({size} px)", lambda a=arr: load(a))
        for i, arr in enumerate(crops)
    ]


def training_crops(n: int, size: int, seed: int = 0):
    """``n`` deterministic crops of silo-tiny's *training* photos (for tuning step sizes), cycling over
    photos and the data set's scales like the held-out crops."""
    import numpy as np

    from silo.data import photos

    images = photos.training_photos()
    pyramid = [photos.downscale(images[name], s) for name in sorted(images) for s in photos.SCALES]
    pyramid = [im for im in pyramid if min(im.shape[:2]) >= size]
    if not pyramid:
        raise SiloError(f"no training photo is at least {size} px a side")
    rng = np.random.default_rng(seed)
    crops = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        im = pyramid[i % len(pyramid)]
        y, x = int(rng.integers(0, im.shape[0] - size + 1)), int(rng.integers(0, im.shape[1] - size + 1))
        crops[i] = im[y : y + size, x : x + size]
    return crops


def photo_items(split: str, count: int, size: int) -> list[Item]:
    """silo-tiny's photos: ``heldout`` (evaluation only) or ``train`` (step-size tuning only)."""
    from silo.data import photos

    crops = photos.heldout_crops(count, size) if split == "heldout" else training_crops(count, size)
    return _crops_to_items(crops, split, size)
