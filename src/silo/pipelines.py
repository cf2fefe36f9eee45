"""``SiloPipeline``: silo in the shape of a diffusers pipeline.

``SiloPipeline.from_pretrained(prior, operator=...)`` loads the prior once (the shipped ``silo-tiny`` by
default); ``pipe(image, task=..., num_inference_steps=..., generator=..., method=...)`` restores images and
returns :class:`SiloPipelineOutput` (``.images``, ``.logs``). Each call runs the runner of ``silo restore``
(:func:`silo.runs.restore.restore_inputs`) with the settings resolved as ``silo restore`` resolves them
(:func:`silo.settings.resolve`), so a result is the same whichever door it came through. The pipeline keeps
diffusers' habits where they fit: ``.to(device)``, ``.device``, ``.dtype``, ``set_progress_bar_config``,
``output_type`` and ``return_dict``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from silo.errors import SiloError
from silo.runs.models import Models

#: the name of the shipped prior, accepted wherever a prior is named
SHIPPED_PRIOR = "silo-tiny"
_OUTPUT_TYPES = ("pil", "np", "pt")

ImageInput: TypeAlias = PIL.Image.Image | torch.Tensor | str | os.PathLike[str]


@dataclass
class SiloPipelineOutput(BaseOutput):
    """What a :class:`SiloPipeline` call returns.

    ``images``: the restorations, as PIL images, a ``B x H x W x 3`` numpy array in [0, 1] (``"np"``) or a list
    of ``1 x 3 x H x W`` tensors in [0, 1] (``"pt"``); ``logs``: one per image, as ``silo restore`` writes it
    (settings with their sources, metrics, identity, versions)."""

    images: list[PIL.Image.Image] | np.ndarray | list[torch.Tensor]
    logs: list[dict[str, Any]]


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float16", "bfloat16"):
        raise SiloError(f"torch_dtype must be float32, float16 or bfloat16, got {dtype}")
    return name


def _seeds(generator: Any, count: int) -> list[int | None]:
    """The run seed of each image: a ``torch.Generator`` gives its initial seed, an int is the seed, a list
    gives one per image; None: the resolved default (the preset's, else 1000), as ``silo restore``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise SiloError(f"got {len(generator)} generators for {count} images: give one, or one per image")
        return [_seeds(g, 1)[0] for g in generator]
    if generator is None:
        return [None] * count
    if isinstance(generator, torch.Generator):
        return [int(generator.initial_seed())] * count
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return [int(generator)] * count
    raise SiloError(
        f"generator must be a torch.Generator, an int seed or a list of them, got {type(generator).__name__}"
    )


class SiloPipeline:
    """Restore degraded images with a latent diffusion prior and SILO's latent operators, diffusers-style.

    >>> pipe = SiloPipeline.from_pretrained()                      # the shipped silo-tiny, on the CPU
    >>> out = pipe(image, task="sr4", generator=torch.Generator().manual_seed(7))
    >>> out.images[0].save("restored.png"); out.logs[0]["setting_sources"]
    """

    # diffusers' own progress-bar configuration: ``set_progress_bar_config(disable=True)``, ``desc=...``, ...
    progress_bar = DiffusionPipeline.progress_bar
    set_progress_bar_config = DiffusionPipeline.set_progress_bar_config

    def __init__(self, models: Models, dtype: str = "float32") -> None:
        self.models = models
        self._dtype = dtype
        self._progress_bar_config: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        prior: str | os.PathLike[str] | None = SHIPPED_PRIOR,
        *,
        operator: str | os.PathLike[str] | Sequence[str] | None = None,
        operator_kind: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: str | torch.device = "cpu",
    ) -> SiloPipeline:
        """Load a prior and, for its tasks, its operators: ``prior`` is ``"silo-tiny"`` (the shipped prior,
        whose shipped operators are used for every task), a Hub id, a diffusers folder or a single-file
        checkpoint. ``operator``: an operator folder, published ``.pt`` file or Hub id
        (``owner/name[/subfolder]``; ``{task}`` in it is replaced by the task), or ``TASK=PATH`` entries, as
        ``silo restore --operator``. Loads on the CPU unless ``device`` says otherwise; move with ``.to``."""
        from silo.provenance import resolve_dtype

        name = _dtype_name(torch_dtype)
        source = None if prior is None or str(prior) == SHIPPED_PRIOR else str(prior)
        operators = [str(operator)] if isinstance(operator, (str, os.PathLike)) else [str(o) for o in operator or []]
        models = Models.load(source, torch.device(device), resolve_dtype(name), operators, operator_kind)
        return cls(models, name)

    # -- diffusers conventions ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def dtype(self) -> torch.dtype:
        return self.models.prior.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SiloPipeline:
        """Move the prior and the operators loaded so far to ``device`` (and the prior to ``dtype``); returns
        the pipeline, as diffusers' ``.to`` does."""
        if isinstance(device, torch.dtype):  # pipe.to(torch.float16), as diffusers allows
            device, dtype = None, device
        if device is not None:
            self.models.to(device)
        if dtype is not None:
            self._dtype = _dtype_name(dtype)
            prior = self.models.prior
            for module in (prior.vae, prior.unet, prior.text_encoder):
                if module is not None:
                    module.to(dtype=dtype)
            prior.dtype = dtype
        return self

    # -- restoring ------------------------------------------------------------------------------------------
    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput],
        task: str = "sr4",
        num_inference_steps: int | None = None,
        generator: torch.Generator | int | Sequence[torch.Generator | int] | None = None,
        method: str = "silo",
        *,
        simulate: bool = False,
        prompt: str | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        start_strength: float | None = None,
        mask: str | os.PathLike[str] | None = None,
        kernel: str | os.PathLike[str] | None = None,
        method_options: dict[str, float] | None = None,
        batch_size: int | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        lpips: bool = True,
        **settings: Any,
    ) -> SiloPipelineOutput | tuple[Any, list[dict[str, Any]]]:
        """Restore ``image`` (a PIL image, a ``B x 3 x H x W`` tensor in [-1, 1], an image file, or a list of
        them) for ``task`` with ``method``, as ``silo restore`` does with the same options.

        Without ``simulate`` the images are measurements (a low-resolution photo for ``sr4``, ...); with it they
        are clean references, degraded here, restored and measured (PSNR, SSIM, ... in each log).
        ``num_inference_steps``, ``eta``, ``start_strength``, ``prompt``, ``guidance_scale`` and ``settings``
        (``scheduler``, ``clamp_measurement``, ...) override what the operator's card, the prior's card and the
        task would set. ``generator``: a ``torch.Generator`` (its initial seed is the run's seed: silo draws
        each image's noise from named streams of it and the image's content, so a batch equals single runs),
        an int, or one per image. ``output_dir``: also write each result's files, as ``silo restore``."""
        from silo.runs.items import Inputs
        from silo.runs.restore import RestoreConfig, build_setup, load_run_task, restore_inputs, settings_request

        if output_type not in _OUTPUT_TYPES:
            raise SiloError(f"output_type must be one of {', '.join(_OUTPUT_TYPES)}, got {output_type!r}")
        items = self._items(image)
        count = len(items)
        seeds = _seeds(generator, count)
        request = {
            **settings,
            "steps": num_inference_steps,
            "prompt": prompt,
            "guidance_scale": guidance_scale,
            "eta": eta,
            "start_strength": start_strength,
        }
        request = {k: v for k, v in request.items() if v is not None}
        options = dict(method_options or {})
        size = batch_size or count
        # one run per distinct seed (one run in all unless a list of generators differs)
        groups: dict[int | None, list[int]] = {}
        for index, seed in enumerate(seeds):
            groups.setdefault(seed, []).append(index)
        task_obj = load_run_task(task, None, None)
        setup = build_setup(self.models, task_obj, method, settings_request({**request, "seed": seeds[0]}), options)
        per_batch = setup.resolved.settings.steps_run if method != "naive" else 0
        total = sum(per_batch * math.ceil(len(indices) / size) for indices in groups.values())
        results: list[dict[str, Any] | None] = [None] * count
        with self.progress_bar(total=total) as bar:
            for seed, indices in groups.items():
                config = RestoreConfig(
                    inputs=Inputs(),
                    simulate=simulate,
                    task=task,
                    method=method,
                    method_options=options,
                    settings={**request, "seed": seed},
                    device=str(self.device),
                    dtype=self._dtype,
                    output_dir=None if output_dir is None else Path(output_dir),
                    batch_size=size,
                    mask=str(mask) if mask else None,
                    kernel=str(kernel) if kernel else None,
                    show_progress=False,
                    lpips=lpips,
                    command="SiloPipeline",
                    keep_outputs=True,
                    quiet=True,
                )
                chosen = [items[i] for i in indices]
                report = restore_inputs(config, chosen, models=self.models, callback=lambda _info: bar.update(1))
                if report.failures:
                    raise SiloError("; ".join(report.failures))
                for result in report.results:
                    results[indices[result["order"]]] = result
        missing = [items[i].source for i, r in enumerate(results) if r is None]
        if missing:  # with output_dir, a result asked twice in one call is made once
            raise SiloError(f"{missing[0]}: the same image, seed and settings as another input of this call")
        done = [r for r in results if r is not None]
        images = self._convert([r["output"] for r in done], output_type)
        logs = [r["log"] for r in done]
        if not return_dict:
            return images, logs
        return SiloPipelineOutput(images=images, logs=logs)

    @staticmethod
    def _items(image: ImageInput | Sequence[ImageInput]) -> list[Any]:
        """The runner's items, in call order: in-memory images named ``image-000``, ``image-001``, ... (by
        position), files by their names, each image of a folder by its own (as ``silo restore`` names them)."""
        from silo.io.images import pil_to_tensor
        from silo.runs.items import Inputs, collect, tensor_items

        given = list(image) if isinstance(image, (list, tuple)) else [image]
        images: list[Any] = []
        for img in given:  # a batch tensor is its images, each named by its position
            images += list(img.split(1)) if isinstance(img, torch.Tensor) and img.ndim == 4 else [img]
        if not images:
            raise SiloError("no image given")
        items: list[Any] = []
        for i, img in enumerate(images):
            if isinstance(img, PIL.Image.Image):
                items += tensor_items(pil_to_tensor(img), [f"image-{i:03d}"])
            elif isinstance(img, torch.Tensor):
                items += tensor_items(img, [f"image-{i:03d}"])
            elif isinstance(img, (str, os.PathLike)):
                items += collect(Inputs(files=[str(img)]))
            else:
                raise SiloError(f"image {i}: expected a PIL image, a tensor or a file, got {type(img).__name__}")
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SiloError(f"several inputs share the name(s) {dupes[:5]}; their results would collide")
        return items

    @staticmethod
    def _convert(outputs: list[torch.Tensor], output_type: str) -> Any:
        from silo.io.images import tensor_to_pil

        if output_type == "pil":
            return [tensor_to_pil(o) for o in outputs]
        unit = [((o.float().clamp(-1, 1) + 1) / 2) for o in outputs]  # diffusers' [0, 1] convention
        if output_type == "pt":
            return unit
        return np.concatenate([u.permute(0, 2, 3, 1).numpy() for u in unit])


__all__ = ["SHIPPED_PRIOR", "SiloPipeline", "SiloPipelineOutput"]
