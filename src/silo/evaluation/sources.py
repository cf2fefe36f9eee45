"""What ``silo evaluate`` runs on and with: its images (files, datasets, silo-tiny's photos) and, per task,
the latent operator of the SILO methods."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from silo.errors import SiloError


def _crops_to_items(crops, split: str, size: int) -> list:
    from silo.io.inputs import Item

    def load(arr):
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

    return [Item(f"silo-tiny-{split}-{size}px-{i:03d}", f"silo-tiny {split} crop {i} ({size} px)",
                 lambda a=arr: load(a)) for i, arr in enumerate(crops)]


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


def photo_items(split: str, count: int, size: int) -> list:
    """silo-tiny's photos: ``heldout`` (evaluation only) or ``train`` (step-size tuning only)."""
    try:
        from silo.data import photos

        crops = photos.heldout_crops(count, size) if split == "heldout" else training_crops(count, size)
    except (ImportError, AttributeError) as err:
        raise SiloError(f"--photos {split}: the silo-tiny photo set is not available in this build ({err})") from None
    return _crops_to_items(crops, split, size)


def collect_items(args: argparse.Namespace) -> list:
    from silo.cli._restore_impl import _collect_items

    items = []
    if args.inputs or args.example or args.dataset or any(
            v is not None for v in (args.index, args.start, args.end, args.index_list)):
        items, _ = _collect_items(args)
    if args.photos:
        items += photo_items(args.photos, args.photo_count, args.photo_size)
    if not items:
        raise SiloError("nothing to evaluate: give image files or folders, --dataset, --example or --photos heldout")
    items = with_param_draws(items, args.param_draws)
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SiloError(f"several inputs share the name(s) {dupes[:5]}; their logs would collide")
    return items


def with_param_draws(items: list, draws: int) -> list:
    """Each item, then ``draws - 1`` copies named ``NAME-drawJ``: a copy's name gives it its own seed for the
    degradation's random parameters (``Item.param_seed``), so one image is measured under several motion
    kernels or masks; the first draw keeps the original name (and its earlier logs). Tasks without random
    parameters run the first draw only (``evaluate.plan_jobs``)."""
    from dataclasses import replace

    if draws < 1:
        raise SiloError(f"--param-draws must be at least 1, got {draws}")
    out = []
    for item in items:
        out.append(item)
        out += [replace(item, name=f"{item.name}-draw{j}", param_draw=j) for j in range(1, draws)]
    return out


def operator_source(task_name: str, specs: list[str], kind: str | None) -> Path:
    """``--operator`` entries: ``TASK=PATH`` for one task, else ``PATH`` (``{task}`` is replaced); default:
    the shipped operator of the task."""
    from silo.models import default_operator_path

    generic = None
    for spec in specs:
        task, sep, path = spec.partition("=")
        if sep and not Path(spec).exists():
            if task == task_name:
                return Path(path)
        else:
            generic = spec
    if generic is not None:
        return Path(generic.replace("{task}", task_name))
    return default_operator_path(task_name, kind)


def load_task_operator(source: Path, kind: str | None, prior, task, device: torch.device) -> torch.nn.Module:
    """An operator checked against the prior and the task (as ``silo restore`` checks it)."""
    from silo.operators import check_compatible, load_operator

    if source.is_file():
        from silo.operators.published import load_published_operator

        operator = load_published_operator(source, kind)
    else:
        operator = load_operator(source)
    operator.to(device).eval().requires_grad_(False)
    features = None
    if getattr(operator, "needs_features", False):
        from silo.operators.features import feature_channels

        features = feature_channels(prior.unet)
    if getattr(operator, "uses_unet_sigma_embedding", True):
        check_compatible(operator, prior.latent_channels, prior.embedding_dim, features, prior.vae_scale)
    elif getattr(operator.config, "latent_channels", prior.latent_channels) != prior.latent_channels:
        raise SiloError(f"operator {source} is for {operator.config.latent_channels} latent channels, the prior has {prior.latent_channels}")
    if getattr(operator.config, "mask_channel", False) and task.degradation.name != "inpainting":
        raise SiloError(f"operator {source} takes an inpainting mask but the task is {task.name}")
    if getattr(operator, "needs_blur_kernel", False) and not task.degradation.has_blur_kernel:
        raise SiloError(f"operator {source} is kernel-aware (reads a blur kernel) but the task {task.name} has none")
    return operator
