"""Regenerate the test suite's committed data under ``tests/data/`` (see ``tests/data/manifest.json``).

- ``heldout-crops-64/``: the first held-out 64 px crops (``silo.data.heldout_crops(n, 64, seed=0)``) as PNGs, so
  the shipped-weights test runs without the Debian wallpaper packages. Needs ``apt-get install mate-backgrounds
  plasma-workspace-wallpapers`` (and scikit-image) on the machine that regenerates them.
- ``published/``: the published operators' key list and golden outputs (``--reference FOLDER`` holding
  ``silo-checkpoint-keys.json`` and ``silo-checkpoint-golden.safetensors``), copied byte for byte.

    python scripts/make_test_data.py --crops 8 [--reference PATH]

``python -m pytest -m data`` checks that the committed crops still equal what the installed packages give.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CROPS_DIR = "heldout-crops-64"
PUBLISHED_FILES = ("silo-checkpoint-keys.json", "silo-checkpoint-golden.safetensors")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_crops(n: int, manifest: dict) -> None:
    from PIL import Image

    from silo.data.photos import heldout_crops_with_origins

    crops, origins = heldout_crops_with_origins(n, 64, seed=0)
    folder = DATA / CROPS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = []
    for i, (crop, origin) in enumerate(zip(crops, origins)):
        path = folder / f"crop-{i:02d}.png"
        Image.fromarray(crop).save(path, optimize=True)
        files.append({"file": f"{CROPS_DIR}/{path.name}", "sha256": sha256(path), **origin})
    manifest["heldout_crops_64"] = {
        "what": "silo.data.heldout_crops(n, 64, seed=0): crops of the held-out photos of the silo-tiny manifest",
        "regenerate": f"python scripts/make_test_data.py --crops {n}",
        "files": files,
    }


def copy_published(reference: Path, manifest: dict) -> None:
    folder = DATA / "published"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in PUBLISHED_FILES:
        if not (reference / name).is_file():
            raise SystemExit(f"make_test_data: {reference / name} not found")
        shutil.copyfile(reference / name, folder / name)
        files.append({"file": f"published/{name}", "sha256": sha256(folder / name)})
    manifest["published_checkpoints"] = {
        "what": "parameter names and shapes of the published SILO operator checkpoints, and golden outputs of "
        "the published code for seeded weights and inputs (the recipe is in "
        "tests/test_published_checkpoints.py)",
        "licence": "test vectors derived from the published SILO code's architecture; no trained weights",
        "regenerate": "python scripts/make_test_data.py --reference FOLDER",
        "files": files,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=0, help="write this many held-out crops (0: keep the committed)")
    parser.add_argument("--reference", type=Path, help="folder with the published-checkpoint reference files")
    args = parser.parse_args(argv)
    path = DATA / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if args.crops:
        write_crops(args.crops, manifest)
    if args.reference:
        copy_published(args.reference, manifest)
    if not (args.crops or args.reference):
        parser.error("nothing to do: give --crops N and/or --reference FOLDER")
    DATA.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
