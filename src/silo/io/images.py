"""Reading images, masks and blur kernels with one clear error per problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor

from silo.errors import SiloError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
#: refuse images larger than this many pixels unless told otherwise (a 4096 x 4096 image)
DEFAULT_MAX_PIXELS = 4096 * 4096

ImageFile.LOAD_TRUNCATED_IMAGES = False

_MODE_NAMES = {
    "L": "greyscale", "LA": "greyscale with alpha", "RGBA": "RGBA (with alpha)", "P": "palette", "PA": "palette with alpha",
    "CMYK": "CMYK", "I;16": "16-bit greyscale", "I;16B": "16-bit greyscale", "I;16L": "16-bit greyscale",
    "I": "32-bit integer", "F": "32-bit float", "1": "1-bit", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
}


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise SiloError(f"{path}: no such image file")
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            raise SiloError(f"{path}: image is {w}x{h}, larger than the limit of {max_pixels} pixels (--max-pixels)")
        img.load()
    except SiloError:
        raise
    except Image.DecompressionBombError:
        raise SiloError(f"{path}: image is far too large (decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise SiloError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise SiloError(f"{path}: unreadable or truncated image ({err})") from None
    return img


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float64) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def load_image(path: str | Path, convert_rgb: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """An 8-bit RGB image file as a ``1 x 3 x H x W`` tensor in [-1, 1].

    Other modes (greyscale, alpha, 16-bit, CMYK, palette) are refused unless ``convert_rgb``: silently
    changing what the user measured would make metrics and consistency meaningless.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    if img.mode != "RGB":
        if not convert_rgb:
            kind = _MODE_NAMES.get(img.mode, img.mode)
            raise SiloError(f"{path}: {kind} image (mode {img.mode}); silo restores RGB images, pass --convert-rgb to convert it")
        arr = _to_rgb(img, path)
    else:
        arr = np.asarray(img, dtype=np.float64) / 255.0
    return pil_array_to_tensor(arr)


def pil_array_to_tensor(arr: np.ndarray) -> Tensor:
    """``H x W x 3`` array in [0, 1] to ``1 x 3 x H x W`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).float().permute(2, 0, 1)[None] * 2 - 1


def pil_to_tensor(img: Image.Image) -> Tensor:
    return pil_array_to_tensor(np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0)


def load_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """A mask image as ``1 x 1 x H x W`` with 1 = known pixel (white) and 0 = to fill in (black)."""
    path = Path(path)
    img = _open(path, DEFAULT_MAX_PIXELS)
    arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if arr.shape != tuple(size):
        raise SiloError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[1]}x{size[0]}")
    return torch.from_numpy((arr > 0.5).astype(np.float32))[None, None]


def load_kernel(path: str | Path) -> Tensor:
    """A blur kernel from ``.npy`` (2-D array) or a greyscale image, normalised to sum 1."""
    path = Path(path)
    if not path.is_file():
        raise SiloError(f"{path}: no such kernel file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False).astype(np.float64)
        except (ValueError, OSError) as err:
            raise SiloError(f"{path}: unreadable kernel ({err})") from None
    else:
        arr = np.asarray(_open(path, 1 << 20).convert("L"), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] % 2 == 0:
        raise SiloError(f"{path}: a blur kernel must be a square 2-D array of odd size, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.sum() <= 0:
        raise SiloError(f"{path}: a blur kernel must be finite, non-negative and not all zero")
    return torch.from_numpy(arr / arr.sum()).float()


def find_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted by name."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SiloError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def tensor_to_pil(x: Tensor) -> Image.Image:
    """One ``3 x H x W`` (or ``1 x 3 x H x W``) image in [-1, 1] to an 8-bit RGB PIL image."""
    if x.dim() == 4:
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")
