"""The Python front door: ``silo.restore(images, task=...)``, the same runner and settings as ``silo restore``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from silo.errors import SiloError


@dataclass
class Result:
    """One restored image: ``image`` (1 x 3 x H x W in [-1, 1]), its log (settings with their sources,
    metrics, identity) and, when an output folder was given, the log's path."""

    image: Tensor
    log: dict[str, Any]
    path: Path | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.log["metrics"]


def restore(
    images: Tensor | str | Path | Sequence[str | Path],
    task: str = "sr4",
    method: str = "silo",
    *,
    simulate: bool = False,
    prior: str | Path | None = None,
    operator: str | Path | Sequence[str] | None = None,
    operator_kind: str | None = None,
    preset: str | None = None,
    method_options: dict[str, float] | None = None,
    mask: str | Path | None = None,
    kernel: str | Path | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    output_dir: str | Path | None = None,
    batch_size: int = 1,
    pad: bool = False,
    offload: Sequence[str] = (),
    lpips: bool = True,
    show_progress: bool = True,
    **settings: Any,
) -> list[Result]:
    """Restore images with one task and method, exactly as ``silo restore`` does with the same options.

    ``images``: a ``B x 3 x H x W`` tensor in [-1, 1], or image files or folders. With ``simulate`` they are
    clean references (degraded here, then restored and measured); else they are measurements. ``settings``
    are sampling settings (``steps``, ``eta``, ``start_strength``, ``scheduler``, ...): what is not given is
    resolved from the preset, the operator's card, the prior's card and the task (:func:`silo.settings.resolve`).
    ``offload``: ``"vae"`` and/or ``"text-encoder"``, kept on the CPU while the sampling loop runs (outputs
    unchanged; methods that decode every step refuse ``"vae"``). ``tile_size`` / ``tile_overlap`` (settings)
    restore large images by tiles; ``keep_known`` (default True) keeps inpainting's known pixels.
    With ``output_dir`` the results are also written, and a rerun skips them: a finished result's ``image`` is
    then read back from its 8-bit PNG.
    """
    from silo.runs.items import Inputs, tensor_items
    from silo.runs.restore import RestoreConfig, restore_inputs

    items = None
    inputs = Inputs()
    if isinstance(images, Tensor):
        items = tensor_items(images)
    elif isinstance(images, (str, Path)):
        inputs.files = [str(images)]
    else:
        inputs.files = [str(p) for p in images]
    config = RestoreConfig(
        inputs=inputs,
        simulate=simulate,
        task=task if preset is None else None,
        preset=preset,
        prior=None if prior is None else str(prior),
        operator=[str(o) for o in ([operator] if isinstance(operator, (str, Path)) else operator or [])],
        operator_kind=operator_kind,
        method=method,
        method_options=dict(method_options or {}),
        settings={**settings, "seed": seed},
        device=device,
        dtype=dtype,
        output_dir=output_dir,
        save="both",
        pad=pad,
        batch_size=batch_size,
        mask=str(mask) if mask else None,
        kernel=str(kernel) if kernel else None,
        show_progress=show_progress,
        lpips=lpips,
        command="silo.restore",
        keep_outputs=True,
        quiet=True,
        offload=list(offload),
    )
    report = restore_inputs(config, items)
    if report.failures:
        raise SiloError("; ".join(report.failures))
    return [Result(r["output"], r["log"], r["path"]) for r in report.results]


__all__ = ["Result", "restore"]
