"""Training and evaluation photos for the shipped silo-tiny prior (see ``silo build-data``)."""

from silo.data.photos import (
    heldout_crops,
    heldout_photos,
    load_example,
    load_manifest,
    training_photos,
)

__all__ = ["heldout_crops", "heldout_photos", "load_example", "load_manifest", "training_photos"]
