"""Where images come from: files, folders, a ``datasets`` dataset, or a bundled example photo.

Each input is an :class:`Item` that loads lazily, so one unreadable file is reported on its own and the
others still run.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from silo.errors import SiloError
from silo.io.images import IMAGE_SUFFIXES, find_images, load_image, pil_to_tensor


@dataclass
class Item:
    name: str  # safe stem for output files
    source: str  # what the user pointed at (for logs and errors)
    load: Callable[[], Tensor]  # -> 1 x 3 x H x W in [-1, 1]
    param_draw: int = 0  # evaluate --param-draws: which draw of the degradation's random parameters (0: the first)

    @property
    def param_seed(self) -> int:
        """A stable per-input seed for random degradation parameters (box position, motion kernel)."""
        return zlib.crc32(self.name.encode()) & 0x7FFFFFFF


def _safe(stem: str) -> str:
    from silo.io.outputs import safe_name

    return safe_name(stem)


def file_items(paths: list[str], convert_rgb: bool, max_pixels: int) -> list[Item]:
    items: list[Item] = []
    for p in paths:
        path = Path(p)
        files = find_images(path) if path.is_dir() else [path]
        for f in files:
            if not f.exists():
                raise SiloError(f"{f}: no such file or folder")
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise SiloError(f"{f}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
            items.append(Item(_safe(f.stem), str(f), lambda f=f: load_image(f, convert_rgb, max_pixels)))
    names = [i.name for i in items]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SiloError(
            f"several inputs share the name(s) {sorted(dupes)}; outputs would collide: restore them separately"
        )
    return items


def parse_index_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.strip("[] ").split(",") if t.strip()]
    except ValueError:
        raise SiloError(f"--list must be comma-separated integers, got {text!r}") from None


def dataset_items(
    name: str, split: str, column: str | None, indices: list[int] | None, convert_rgb: bool
) -> list[Item]:
    """Items from a Hugging Face dataset: a ``save_to_disk`` folder or a Hub name (offline: cache only)."""
    import datasets

    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types; one line with the first message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = " (HF_HUB_OFFLINE=1: only cached datasets load)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise SiloError(f"dataset {name}: cannot load{offline}: {first}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SiloError(f"dataset {name}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    if column is None:
        image_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
        column = image_cols[0] if image_cols else ("image" if "image" in ds.column_names else None)
    if column not in ds.column_names:
        raise SiloError(
            f"dataset {name}: no image column {column!r} (columns: {', '.join(ds.column_names)}); pass --image-column"
        )
    indices = list(range(len(ds))) if indices is None else indices
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise SiloError(f"dataset {name}: indices {bad[:5]} out of range 0..{len(ds) - 1}")
    tag = _safe(Path(name).name or name)

    def loader(i: int) -> Callable[[], Tensor]:
        def load() -> Tensor:
            img = ds[i][column]
            if not hasattr(img, "convert"):
                raise SiloError(f"dataset {name}[{i}].{column}: not an image")
            if img.mode != "RGB" and not convert_rgb:
                raise SiloError(f"dataset {name}[{i}]: {img.mode} image; pass --convert-rgb to convert it")
            return pil_to_tensor(img)

        return load

    return [Item(f"{tag}_{i:05d}", f"{name}[{i}]", loader(i)) for i in indices]


def example_items(names: list[str]) -> list[Item]:
    from silo.data.photos import load_example

    return [Item(f"example-{_safe(n)}", f"example {n}", lambda n=n: load_example(n)) for n in names]
