"""Memory before work: the peak a restoration will need, estimated from the prior, the method and the size,
checked against what the device has, so that an image too large is refused with a message instead of
ending in the kernel's out-of-memory killer hours later.

The estimate is ``bytes per restored pixel x pixels x batch`` on top of the models already loaded, with the
bytes per pixel measured per method and per prior architecture (VAE down-sampling factor) in float32:

- f4 (silo-tiny): ``silo evaluate`` on 256 and 512 px images, 2 steps, sr4, the slope of the process's peak
  resident set between the two sizes (docs/results.md, "Memory per pixel");
- f8 (the Stable Diffusion 1.5 architecture): ``silo bench --prior sd15`` at 512 px, each step's own memory
  (docs/results.md, "Speed and memory").

Half-precision dtypes halve the activations. Attention layers grow faster than linearly with the image, so
for large images on attention priors the estimate is a floor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from silo.errors import SiloError

GIB = 1024**3

#: bytes per restored pixel (float32, batch 1) by the prior's VAE factor and the method; measured, see above
BYTES_PER_PIXEL: dict[int, dict[str, int]] = {
    4: {"silo": 5330, "silo_x0": 2350, "ldps": 6240, "psld": 8220, "naive": 64},
    8: {"silo": 12200, "silo_x0": 4800, "ldps": 32900, "psld": 44600, "naive": 64},
}
_DEFAULT_METHOD_BYTES = max  # a method not in the table (a registered newcomer): the largest measured
#: bytes per pixel of the whole image when the networks run by tiles (silo.priors.tiled): the image, the
#: measurement, the output and the latents stay whole (a few float32 copies of each)
WHOLE_IMAGE_BYTES_PER_PIXEL = 256


def bytes_per_pixel(prior, method: str, dtype: torch.dtype | str = "float32") -> int:
    """The measured activation bytes per restored pixel for ``method`` on ``prior``'s architecture."""
    factor = int(getattr(prior, "vae_scale", 8) or 8)
    table = BYTES_PER_PIXEL.get(factor) or BYTES_PER_PIXEL[min(BYTES_PER_PIXEL, key=lambda f: abs(f - factor))]
    per = table.get(method, _DEFAULT_METHOD_BYTES(table.values()))
    half = str(dtype).replace("torch.", "") in ("bfloat16", "float16")
    return per // 2 if half else per


def estimate_bytes(
    prior, method: str, height: int, width: int, batch: int = 1, dtype: torch.dtype | str = "float32", tile: int = 0
) -> int:
    """The extra memory a batch of ``height x width`` restorations needs beyond the loaded models; with
    ``tile`` > 0 and a side over it, the networks see one ``tile x tile`` piece at a time."""
    batch = max(1, batch)
    if tile and max(height, width) > tile:
        piece = bytes_per_pixel(prior, method, dtype) * min(height, tile) * min(width, tile)
        return (piece + WHOLE_IMAGE_BYTES_PER_PIXEL * height * width) * batch
    return bytes_per_pixel(prior, method, dtype) * height * width * batch


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup (v2) limit, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """What the device can still give: free CUDA memory, or the system's available RAM (psutil when installed,
    else ``/proc/meminfo``), lowered by a cgroup limit; None when unknown (no check is made then)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            avail = None
    group = _cgroup_available()
    if group is not None:
        avail = group if avail is None else min(avail, group)
    return avail


def tile_option() -> str | None:
    """The restore option for tiles, if the sampling settings have one (named among the refusal's alternatives)."""
    from dataclasses import fields

    from silo.samplers.problem import SamplerSettings

    return "--tile-size PX" if any(f.name == "tile_size" for f in fields(SamplerSettings)) else None


def check_memory(
    prior, method: str, height: int, width: int, batch: int, dtype: str, limit: float | None, source: str, tile: int = 0
) -> None:
    """Refuse (SiloError, one line) a restoration whose estimated peak exceeds ``limit`` bytes, or, when
    ``limit`` is None, what the device has available; ``limit`` 0 turns the check off."""
    if limit == 0:
        return
    need = estimate_bytes(prior, method, height, width, batch, dtype, tile)
    have = limit if limit is not None else available_bytes(prior.device)
    if have is None or need <= have:
        return
    where = "--memory-limit" if limit is not None else f"available on {prior.device.type}"
    ways = [f"a smaller image (at most about {int((have / need) ** 0.5 * min(height, width))} px a side)"]
    if str(dtype) == "float32":
        half = estimate_bytes(prior, method, height, width, batch, "bfloat16", tile)
        ways.append(f"--dtype bfloat16 (about {_size(half)})")
    if batch > 1:
        ways.append("--batch-size 1")
    tiles = tile_option()
    if tiles and not (tile and tile <= 256):
        ways.append(f"{tiles} (smaller tiles)" if tile else tiles)
    ways.append("--memory-limit 0 to try anyway")
    raise SiloError(
        f"{source}: restoring {width}x{height} with {method} needs about {_size(need)} (estimate), "
        f"{_size(have)} {where}; use {', '.join(ways)}"
    )


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"
