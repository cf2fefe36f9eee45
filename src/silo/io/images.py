"""Reading images, masks and blur kernels with one clear error per problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from silo.errors import SiloError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
#: refuse images larger than this many pixels unless told otherwise (a 4096 x 4096 image)
DEFAULT_MAX_PIXELS = 4096 * 4096

ImageFile.LOAD_TRUNCATED_IMAGES = False

_MODE_NAMES = {
    "L": "greyscale",
    "LA": "greyscale with alpha",
    "RGBA": "RGBA (with alpha)",
    "P": "palette",
    "PA": "palette with alpha",
    "CMYK": "CMYK",
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "I": "32-bit integer",
    "F": "32-bit float",
    "1": "1-bit",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
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
        img = _upright(img)
    except SiloError:
        raise
    except Image.DecompressionBombError:
        raise SiloError(f"{path}: image is far too large (decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise SiloError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise SiloError(f"{path}: unreadable or truncated image ({err})") from None
    return img


def _upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a phone photo's EXIF orientation applied (and the tag dropped)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels as stored
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


#: full scale of the integer modes: a 16-bit image is read on its 16-bit scale whatever its brightest pixel
_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in _FULL_SCALE or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # PNG and TIFF 16-bit greyscale open as "I;16" or as "I" holding 16-bit values: both are 0..65535
        full = _FULL_SCALE.get(img.mode, 65535.0 if arr.max(initial=0) <= 65535 else float(2**32 - 1))
        arr = np.clip(arr / full, 0.0, 1.0)
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
            raise SiloError(
                f"{path}: {kind} image (mode {img.mode}); silo restores RGB images, pass --convert-rgb to convert it"
            )
        arr = _to_rgb(img, path)
    else:
        arr = np.asarray(img, dtype=np.float64) / 255.0
    return pil_array_to_tensor(arr)


def pil_array_to_tensor(arr: np.ndarray) -> Tensor:
    """``H x W x 3`` array in [0, 1] to ``1 x 3 x H x W`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).float().permute(2, 0, 1)[None] * 2 - 1


def pil_to_tensor(img: Image.Image) -> Tensor:
    return pil_array_to_tensor(np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0)


def load_mask(path: str | Path, size: tuple[int, int], notes: list[str] | None = None) -> Tensor:
    """A mask image as ``1 x 1 x H x W`` with 1 = known pixel (white) and 0 = to fill in (black).

    Thresholded at half; a mask that is not black and white, that is one grey level, or that marks nothing
    known or nothing to fill in is still used, and why it looks wrong is appended to ``notes``."""
    path = Path(path)
    img = _open(path, DEFAULT_MAX_PIXELS)
    arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if arr.shape != tuple(size):
        raise SiloError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[1]}x{size[0]}")
    known = arr > 0.5
    if notes is not None:
        notes += mask_notes(path, arr, known)
    return torch.from_numpy(known.astype(np.float32))[None, None]


def mask_notes(path: Path, arr: np.ndarray, known: np.ndarray) -> list[str]:
    """What looks wrong in a mask (values in [0, 1], thresholded to ``known``): said, never silently used."""
    notes = []
    lo, hi = float(arr.min()), float(arr.max())
    grey = float(((arr > 0.02) & (arr < 0.98)).mean())
    if hi - lo < 0.02 and 0.02 < lo < 0.98:
        notes.append(
            f"{path}: the mask is one grey level ({lo * 255:.0f}/255), not black and white; thresholded at "
            f"128 it marks {'every' if known.all() else 'no'} pixel as known"
        )
    elif grey > 0.01:
        notes.append(f"{path}: {grey:.0%} of the mask is grey, not black or white; thresholded at 128 (white = known)")
    if notes:
        return notes  # a grey mask: what it thresholds to is said above
    if not known.any():
        notes.append(f"{path}: the mask is all black: no pixel is known, the whole image is filled in")
    elif known.all():
        notes.append(f"{path}: the mask is all white: every pixel is known, nothing is filled in")
    return notes


def load_kernel(path: str | Path) -> Tensor:
    """A blur kernel from ``.npy`` (2-D array) or a greyscale image, normalised to sum 1."""
    path = Path(path)
    if not path.is_file():
        raise SiloError(f"{path}: no such kernel file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):  # numpy says "pickled data" of any bytes that are not an array
            raise SiloError(
                f"{path}: not a NumPy .npy array file (a blur kernel is a square 2-D array saved with "
                "numpy.save, or a greyscale image)"
            ) from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise SiloError(f"{path}: a blur kernel must hold numbers, got {getattr(arr, 'dtype', type(arr))}")
        arr = arr.astype(np.float64)
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
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as err:
        raise SiloError(f"{folder}: cannot read this folder ({err.strerror or err})") from None
    if not files:
        raise SiloError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def tensor_to_pil(x: Tensor) -> Image.Image:
    """One ``3 x H x W`` (or ``1 x 3 x H x W``) image in [-1, 1] to an 8-bit RGB PIL image."""
    if x.dim() == 4:
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")
