"""The nine published SILO runs as presets: prior, operator file, task and sampler settings of each script.

Operator files are looked up as ``<weights_dir>/<file>``; ``weights_dir`` defaults to ``./trained_ckpt``,
the folder the published archive unpacks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from silo.errors import SiloError

FFHQ_PRIOR = "stablediffusionapi/realistic-vision-v51"
COCO_PRIOR = "botp/stable-diffusion-v1-5"
FFHQ_PROMPT = "A high quality photo of a face"
COCO_PROMPT = "A high quality photo"


@dataclass(frozen=True)
class Preset:
    name: str
    script: str
    prior: str
    operator_file: str
    kind: str  # "readout", "cnn" or "preserve"
    task: str
    eta: float
    clamp: bool
    prompt: str
    steps: int = 999
    seed: int = 1000

    def operator_path(self, weights_dir: str | Path) -> Path:
        """The published operator file: ``<weights_dir>/<file>``, or the one file of that name below it.

        The archive's inner layout is not documented, so sub-folders are searched; when nothing matches,
        the error lists the ``.pt`` files that are there so the user can pass ``--operator FILE``.
        """
        root = Path(weights_dir)
        direct = root / self.operator_file
        if direct.is_file():
            return direct
        found = sorted(root.rglob(self.operator_file)) if root.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise SiloError(
                f"preset {self.name}: several files named {self.operator_file} under {root}: pass --operator FILE"
            )
        others = sorted(str(p.relative_to(root)) for p in root.rglob("*.pt")) if root.is_dir() else []
        listing = f" (found: {', '.join(others[:12])}); pass --operator FILE" if others else ""
        raise SiloError(
            f"preset {self.name}: operator file {direct} not found; unpack the published trained_ckpt archive "
            f"there or pass --weights-dir / --operator{listing}"
        )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "rg-coco-inpaint",
            "rg_coco_ip.sh",
            COCO_PRIOR,
            "rg_coco_ip.pt",
            "readout",
            "inpaint_center",
            1.0,
            False,
            COCO_PROMPT,
        ),
        Preset(
            "cnn-coco-sr4",
            "cnn_coco_sr_4.sh",
            COCO_PRIOR,
            "cnn_coco_sr_4.pt",
            "preserve",
            "sr4",
            0.75,
            True,
            COCO_PROMPT,
        ),
        Preset(
            "rg-ffhq-gaussian-blur",
            "rg_ffhq_gb.sh",
            FFHQ_PRIOR,
            "rg_ffhq_gb.pt",
            "readout",
            "gaussian_blur",
            0.5,
            True,
            FFHQ_PROMPT,
        ),
        Preset(
            "rg-ffhq-inpaint",
            "rg_ffhq_ip.sh",
            FFHQ_PRIOR,
            "rg_ffhq_ip.pt",
            "readout",
            "inpaint_center",
            1.0,
            False,
            FFHQ_PROMPT,
        ),
        Preset(
            "rg-ffhq-random-inpaint",
            "rg_ffhq_rand_ip.sh",
            FFHQ_PRIOR,
            "rg_ffhq_rand_ip.pt",
            "readout",
            "inpaint_random",
            1.0,
            False,
            FFHQ_PROMPT,
        ),
        Preset(
            "rg-ffhq-jpeg", "rg_ffhq_jpeg.sh", FFHQ_PRIOR, "rg_ffhq_jpeg.pt", "readout", "jpeg", 0.5, False, FFHQ_PROMPT
        ),
        Preset(
            "rg-ffhq-sr4", "rg_ffhq_sr_4.sh", FFHQ_PRIOR, "rg_ffhq_sr_4.pt", "readout", "sr4", 0.5, True, FFHQ_PROMPT
        ),
        Preset(
            "rg-ffhq-sr8", "rg_ffhq_sr_8.sh", FFHQ_PRIOR, "rg_ffhq_sr_8.pt", "readout", "sr8", 0.5, True, FFHQ_PROMPT
        ),
        Preset(
            "cnn-ffhq-sr8", "cnn_ffhq_sr_8.sh", FFHQ_PRIOR, "cnn_ffhq_sr_8.pt", "cnn", "sr8", 0.5, True, FFHQ_PROMPT
        ),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SiloError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
