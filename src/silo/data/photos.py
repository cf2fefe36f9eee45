"""The silo-tiny photo set: natural photographs that install offline, listed in a committed manifest.

Two sources only: images bundled with scikit-image and the photographic wallpapers of the Debian
packages ``mate-backgrounds`` and ``plasma-workspace-wallpapers``. The manifest names every file, its
package, licence and sha256, so the training set can be rebuilt bit-for-bit from installed packages.
Photos with ``split == "heldout"`` are for evaluation only and are never written to the training set.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from silo.errors import SiloError

MANIFEST_NAME = "silo_tiny_manifest.json"
DATASET_FILE = "dataset.json"
SCALES = (1, 2, 4)
SKIMAGE = "scikit-image"
INSTALL_HINT = {
    SKIMAGE: "pip install scikit-image",
    "mate-backgrounds": "apt-get install mate-backgrounds",
    "plasma-workspace-wallpapers": "apt-get install plasma-workspace-wallpapers",
}


@dataclass(frozen=True)
class Photo:
    """One manifest entry."""

    name: str
    source: str
    file: str
    licence: str
    split: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    package_version: str = ""
    note: str = ""

    @property
    def path(self) -> Path:
        """Where the installed package keeps this photo."""
        if self.source == SKIMAGE:
            import skimage.data

            return Path(skimage.data.__file__).parent / self.file
        return Path(self.file)


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """The committed manifest (or another one, for tests)."""
    if path is None:
        text = resources.files("silo.data").joinpath(MANIFEST_NAME).read_text()
    else:
        text = Path(path).read_text()
    return json.loads(text)


def manifest_photos(manifest: dict | None = None, split: str | None = None) -> list[Photo]:
    manifest = manifest or load_manifest()
    fields = set(Photo.__dataclass_fields__)
    photos = [Photo(**{k: v for k, v in p.items() if k in fields}) for p in manifest["photos"]]
    return [p for p in photos if split is None or p.split == split]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_version(source: str) -> str:
    """Installed version of the package a photo comes from ('' if unknown)."""
    if source == SKIMAGE:
        import skimage

        return skimage.__version__
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", source], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def check_installed(photo: Photo, verify: bool = True) -> Path:
    """The photo's installed path; a clear error if its package is missing or the file changed."""
    path = photo.path
    if not path.is_file():
        hint = INSTALL_HINT.get(photo.source, f"install {photo.source}")
        raise SiloError(f"photo {photo.name!r} not found at {path}: package {photo.source} is missing ({hint})")
    if verify and photo.sha256 and sha256_file(path) != photo.sha256:
        raise SiloError(
            f"photo {photo.name!r} ({path}) does not match the manifest checksum; "
            f"{photo.source} {package_version(photo.source) or '?'} differs from the manifest's "
            f"{photo.package_version or '?'}"
        )
    return path


def read_photo(photo: Photo, verify: bool = True) -> np.ndarray:
    """Native-resolution pixels, ``H x W x 3`` uint8 (grey photos repeated to RGB)."""
    from PIL import Image

    with Image.open(check_installed(photo, verify)) as im:
        return np.asarray(im.convert("RGB")).copy()


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter down-scaling by an integer factor: exact, deterministic, alias-free enough."""
    if factor == 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor)).copy()


def update_manifest(path: str | os.PathLike, photos: Iterable[Photo] | None = None) -> dict:
    """Refresh checksums, sizes and package versions from the installed packages (maintainers only)."""
    manifest = load_manifest(path)
    for entry in manifest["photos"]:
        photo = Photo(**{k: v for k, v in entry.items() if k in Photo.__dataclass_fields__ and k != "sha256"})
        image = read_photo(photo, verify=False)
        entry.update(
            sha256=sha256_file(photo.path),
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            package_version=package_version(photo.source),
        )
    Path(path).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def heldout_names(manifest: dict | None = None) -> list[str]:
    return [p.name for p in manifest_photos(manifest, "heldout")]


def heldout_photos(verify: bool = True) -> dict[str, np.ndarray]:
    """Held-out photos at native resolution, read from the installed packages (evaluation only)."""
    return {p.name: read_photo(p, verify) for p in manifest_photos(split="heldout")}


def training_photos(verify: bool = True) -> dict[str, np.ndarray]:
    """Training photos at native resolution, read from the installed packages."""
    return {p.name: read_photo(p, verify) for p in manifest_photos(split="train")}


def heldout_crops(n: int = 100, size: int = 64, seed: int = 0, scales: Iterable[int] = SCALES) -> np.ndarray:
    """``n`` deterministic ``size x size`` crops (``n x size x size x 3`` uint8) from the held-out photos.

    Crops cycle over photos and scales, so smooth native-resolution wallpapers and detailed
    down-scaled copies are both represented; positions come from a seeded generator.
    """
    crops, _ = heldout_crops_with_origins(n, size, seed, scales)
    return crops


def heldout_crops_with_origins(
    n: int = 100, size: int = 64, seed: int = 0, scales: Iterable[int] = SCALES
) -> tuple[np.ndarray, list[dict]]:
    """:func:`heldout_crops` and, per crop, where it comes from (photo, package, licence, scale, position)."""
    photos = heldout_photos()
    entries = {p.name: p for p in manifest_photos(split="heldout")}
    pyramid = [(name, s, downscale(photos[name], s)) for name in sorted(photos) for s in scales]
    pyramid = [entry for entry in pyramid if min(entry[2].shape[:2]) >= size]
    rng = np.random.default_rng(seed)
    crops = np.empty((n, size, size, 3), np.uint8)
    origins = []
    for i in range(n):
        name, scale, im = pyramid[i % len(pyramid)]
        y = int(rng.integers(0, im.shape[0] - size + 1))
        x = int(rng.integers(0, im.shape[1] - size + 1))
        crops[i] = im[y : y + size, x : x + size]
        photo = entries[name]
        origins.append(
            dict(
                photo=name,
                package=photo.source,
                photo_file=photo.file,
                licence=photo.licence,
                downscale=scale,
                top=y,
                left=x,
            )
        )
    return crops, origins


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """Largest centred square, resized to ``size`` (Lanczos)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    square = Image.fromarray(image[y : y + s, x : x + s])
    if s != size:
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(square).copy()


def load_example(name: str = "astronaut", size: int = 256):
    """A bundled held-out photo as a ``1 x 3 x size x size`` tensor in [-1, 1] (for ``--example``)."""
    import torch

    photos = {p.name: p for p in manifest_photos(split="heldout")}
    if name not in photos:
        raise SiloError(f"unknown example {name!r}; choose one of: {', '.join(sorted(photos))}")
    image = centre_square(read_photo(photos[name]), size)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def example_names() -> list[str]:
    return heldout_names()


def build_dataset(
    output: str | os.PathLike,
    manifest: dict | None = None,
    sources: Iterable[str] | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Write training PNGs (native, 1/2, 1/4) and held-out PNGs (native) plus ``dataset.json``.

    Idempotent: existing PNGs whose recorded pixel checksum matches are kept.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    manifest = manifest or load_manifest()
    out = Path(output)
    photos = [p for p in manifest_photos(manifest) if sources is None or p.source in set(sources)]
    if not photos:
        raise SiloError("no photos selected from the manifest")
    for p in photos:  # fail early, before writing anything, if a package is missing
        check_installed(p, verify=False)
    old = _read_dataset(out)
    files = []
    for p in tqdm(photos, desc="build-data", unit="photo", disable=not progress):
        image = read_photo(p, verify)
        scales = manifest.get("scales", list(SCALES)) if p.split == "train" else [1]
        for s in scales:
            rel = f"{p.split}/{p.name}_x{s}.png"
            known = old.get(rel)
            if known and known["source_sha256"] == p.sha256 and (out / rel).is_file():
                files.append(known)
                continue
            small = downscale(image, s)
            (out / p.split).mkdir(parents=True, exist_ok=True)
            tmp = out / (rel + ".tmp")
            Image.fromarray(small).save(tmp, format="PNG")
            os.replace(tmp, out / rel)
            files.append(
                dict(
                    file=rel,
                    name=p.name,
                    split=p.split,
                    scale=s,
                    width=int(small.shape[1]),
                    height=int(small.shape[0]),
                    source=p.source,
                    licence=p.licence,
                    source_sha256=p.sha256,
                    pixels_sha256=hashlib.sha256(small.tobytes()).hexdigest(),
                )
            )
    dataset = dict(name=manifest.get("name", ""), heldout=heldout_names(manifest), files=files)
    tmp = out / (DATASET_FILE + ".tmp")
    tmp.write_text(json.dumps(dataset, indent=1) + "\n")
    os.replace(tmp, out / DATASET_FILE)
    return out


def _read_dataset(out: Path) -> dict[str, dict]:
    path = out / DATASET_FILE
    if not path.is_file():
        return {}
    return {f["file"]: f for f in json.loads(path.read_text())["files"]}


def load_training_images(data_dir: str | os.PathLike) -> list[np.ndarray]:
    """All training PNGs (every scale) of a built data folder; refuses held-out photos."""
    from PIL import Image

    root = Path(data_dir)
    if not (root / DATASET_FILE).is_file():
        raise SiloError(
            f"{root} is not a silo data folder (no {DATASET_FILE}); run `silo build-data --output-dir {root}`"
        )
    dataset = json.loads((root / DATASET_FILE).read_text())
    heldout = set(dataset.get("heldout", [])) | set(heldout_names())
    images = []
    for f in dataset["files"]:
        if f["split"] != "train":
            continue
        if f["name"] in heldout:
            raise SiloError(f"{f['file']} is a held-out photo and must not be trained on")
        with Image.open(root / f["file"]) as im:
            images.append(np.asarray(im.convert("RGB")).copy())
    if not images:
        raise SiloError(f"{root} holds no training images")
    return images


def write_patches(data_dir: str | os.PathLike, n: int, size: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """Cut ``n`` random ``size``-px patches from the training PNGs into ``DATA/patches-SIZE/``.

    Why: ``silo train-operator`` decodes an image file per sample, and decoding a 4K wallpaper for every
    64 px crop dominated a CPU step. Small patches decode in microseconds and still give
    ``train-operator``'s random resized crops room to move. Deterministic in ``seed``; rerunning with the
    same settings keeps what is there, other settings are refused rather than mixed in.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from silo.data.crops import CropSampler

    if n < 1 or size < 8:
        raise SiloError(f"--patches {n} --patch-size {size}: need at least 1 patch of at least 8 px")
    out = Path(data_dir) / f"patches-{size}"
    info = dict(n=n, size=size, seed=seed)
    record = out / "patches.json"
    if record.is_file():
        old = json.loads(record.read_text())
        if old != info:
            differ = ", ".join(f"{k} {old.get(k)} (asked {v})" for k, v in info.items() if old.get(k) != v)
            raise SiloError(f"{out} holds patches made with other settings: {differ}; remove the folder to recut")
    try:
        sampler = CropSampler(load_training_images(data_dir), size, seed=seed, flip=False)
    except ValueError as err:
        raise SiloError(f"--patch-size {size}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    # the record comes first, so an interrupted run resumed with other settings is refused, not mixed in
    tmp = out / ".patches.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, record)
    for i in tqdm(range(n), desc="patches", unit="patch", disable=not progress):
        crop = sampler.sample(1)[0]  # 3 x size x size in [-1, 1], drawn even when the file exists (same order)
        path = out / f"{i:06d}.png"
        if path.is_file():
            continue
        pixels = crop.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        tmp = out / f".{i:06d}.png.tmp"
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    return out
