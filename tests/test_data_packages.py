"""The photo set against the installed packages it is built from (``mate-backgrounds``,
``plasma-workspace-wallpapers``, scikit-image): marked ``data``, outside the default run, since those Debian
packages cannot be installed everywhere. Run with ``python -m pytest -m data`` after
``apt-get install mate-backgrounds plasma-workspace-wallpapers``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
from silo.data import photos

pytestmark = pytest.mark.data


def test_heldout_crops_are_deterministic():
    a, b = photos.heldout_crops(6, 64, seed=0), photos.heldout_crops(6, 64, seed=0)
    assert a.shape == (6, 64, 64, 3) and np.array_equal(a, b)
    assert len({c.tobytes() for c in a}) == 6


def test_committed_crops_are_what_the_packages_give():
    """tests/data/heldout-crops-64 is a faithful copy (else: python scripts/make_test_data.py --crops N)."""
    entries = json.loads((DATA / "manifest.json").read_text())["heldout_crops_64"]["files"]
    crops, origins = photos.heldout_crops_with_origins(len(entries), 64, seed=0)
    for crop, origin, entry in zip(crops, origins, entries):
        assert np.array_equal(np.asarray(Image.open(DATA / entry["file"]).convert("RGB")), crop), entry["file"]
        assert {k: entry[k] for k in origin} == origin


def test_build_data_from_the_installed_packages(tmp_path):
    """`silo build-data` on the shipped manifest: every photo found with its checksum, held-out kept apart."""
    from silo.cli import main

    assert main(["build-data", "--output-dir", str(tmp_path / "data")]) == 0
    dataset = json.loads((tmp_path / "data" / photos.DATASET_FILE).read_text())
    manifest = photos.load_manifest()
    names = {f["name"] for f in dataset["files"]}
    assert names == {p["name"] for p in manifest["photos"]}
    assert set(dataset["heldout"]) == set(photos.heldout_names())
    train = photos.load_training_images(tmp_path / "data")
    assert len(train) > 0 and all(im.dtype == np.uint8 for im in train)
