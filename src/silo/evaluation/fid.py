"""FID and KID of a folder's restorations against their references, with torchmetrics, never downloaded.

Both need torch-fidelity's Inception weights (``weights-inception-2015-12-05-6726825d.pth``). They are
looked for in ``--inception-weights``, ``$SILO_INCEPTION_WEIGHTS`` and torch's hub cache; when absent the
metrics are reported as unavailable with the reason, never approximated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def find_inception_weights(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """``(path, "available")`` or ``(None, "unavailable: why")``."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return None, "unavailable: torch-fidelity is not installed (pip install torch-fidelity)"
    candidates = [explicit, os.environ.get("SILO_INCEPTION_WEIGHTS")]
    try:
        import torch

        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)
    except Exception:  # pragma: no cover - torch is always there in practice
        pass
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c), "available"
    if explicit:
        return None, f"unavailable: Inception weights {explicit} not found"
    return None, f"unavailable: Inception weights ({INCEPTION_FILE}) not found locally; pass --inception-weights"


def _load_uint8(path: Path):
    import torch
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def fid_kid(pairs: dict[tuple, list[tuple[Path, Path]]], weights: Path) -> dict[tuple, dict[str, Any]]:
    """Per group key: ``{"fid": {"value", "n"}, "kid": {"mean", "std", "n"}}`` over (output, reference) pairs."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.kid import KernelInceptionDistance

    inception = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
    )
    results: dict[tuple, dict[str, Any]] = {}
    for key, items in pairs.items():
        n = len(items)
        if n < 2:
            why = f"unavailable: needs at least 2 images with saved outputs and references, found {n}"
            results[key] = {
                "fid": {"value": None, "n": n, "note": why},
                "kid": {"mean": None, "std": None, "n": n, "note": why},
            }
            continue
        fid = FrechetInceptionDistance(feature=inception, normalize=False)
        kid = KernelInceptionDistance(feature=inception, subset_size=min(n, 1000), subsets=100, normalize=False)
        with torch.no_grad():
            for out_path, ref_path in items:
                fake, real = _load_uint8(out_path), _load_uint8(ref_path)
                for metric in (fid, kid):
                    metric.update(real, real=True)
                    metric.update(fake, real=False)
            kid_mean, kid_std = kid.compute()
            results[key] = {
                "fid": {"value": float(fid.compute()), "n": n},
                "kid": {"mean": float(kid_mean), "std": float(kid_std), "n": n},
            }
    return results


def image_pairs(records, key_of) -> dict[tuple, list[tuple[Path, Path]]]:
    """(output image, reference image) per group, from each log's saved outputs.

    The reference is ``reference_image`` (written by ``silo evaluate``, relative to the log) or, for
    ``silo restore`` logs, the input itself when it is an image file on disk.
    """
    pairs: dict[tuple, list[tuple[Path, Path]]] = {}
    for r in records:
        image = (r.log.get("outputs") or {}).get("image")
        ref = r.log.get("reference_image")
        ref_path = (r.path.parent / ref) if ref else Path(str(r.log.get("input", "")))
        out_path = r.path.parent / image if image else None
        pairs.setdefault(key_of(r), [])
        if out_path is not None and out_path.is_file() and ref_path.is_file():
            pairs[key_of(r)].append((out_path, ref_path))
    return pairs
