"""Per-step wall time and peak memory of every method, with reference costs measured in the same run.

Methods run through their real sampler functions (``SAMPLERS``), timed step by step through the sampler
callback; the first ``warmup`` steps (measurement encoding, allocator warm-up) are excluded and the median
of the rest is reported. Reference operations (UNet forward, forward+backward, decoder forward,
forward+backward) give the denominators of the ratios.

Why paired references: on a shared or thermally throttled machine the speed drifts by 10-15% over the
minutes between a reference block and a method's steps, enough to flip a 1.1x target. So each method's
step is also timed against a reference op run *between its own steps* (in the sampler callback, memory
sampling paused): the UNet forward+backward (the UNet forward for x0-space SILO). The paired ratios
(median of step / reference over the timed steps) are what the targets check; the unpaired ones stay
in the JSON.

The Stable Diffusion 1.5 architecture is built from its published configuration with random weights:
timing and memory do not depend on weight values, only on shapes, so no download is needed.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from silo.errors import SiloError
from silo.evaluation.memory import PeakMemory, release_memory, synchronize

WEIGHTS_NOTE = "random weights: timing and peak memory depend on shapes, not on weight values"

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5), published unet/vae/scheduler config values.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
SD15_TEXT = dict(context_length=77, hidden_size=768)  # CLIP ViT-L/14 text encoder output; runs once, not timed

#: operator kinds the bench builds (random, at the published sizes, or shipped for silo-tiny)
BENCH_KINDS = ("cnn", "readout")
REFERENCE_OPS = ("unet_forward", "unet_forward_backward", "decoder_forward", "decoder_forward_backward")


def bench_methods() -> dict[str, tuple[str, str | None]]:
    """Bench name (the method label, ``silo[cnn]``) -> (sampler, operator kind), from the sampler registry:
    one entry per operator kind a method can feed. Ordered by expected memory (methods with a UNet-forward
    reference first), so that memory freed by one method cannot hide the next one's peak."""
    from silo.operators import OPERATOR_CLASSES
    from silo.samplers.registry import SAMPLERS

    specs = sorted(SAMPLERS.values(), key=lambda s: (s.paired_reference != "unet_forward", not s.needs_operator))
    out: dict[str, tuple[str, str | None]] = {}
    for spec in specs:
        if not spec.needs_operator:
            out[spec.name] = (spec.name, None)
            continue
        for kind in BENCH_KINDS:
            if set(OPERATOR_CLASSES[kind].can_read) & {"z0", "features"} <= set(spec.operator_inputs):
                out[f"{spec.name}[{kind}]"] = (spec.name, kind)
    return out


def paired_reference(name: str) -> str:
    """The reference op timed between a method's steps (the registry's ``paired_reference``)."""
    from silo.samplers.registry import SAMPLERS

    return SAMPLERS[bench_methods()[name][0]].paired_reference or "unet_forward_backward"


@dataclass
class BenchPrior:
    """A prior to bench, the text conditioning to use, and its operators."""

    name: str
    prior: Any
    prompt_embeds: Any
    operators: dict[str, torch.nn.Module]
    note: str


def sd15_prior(device: torch.device, seed: int = 0):
    """The SD 1.5 UNet and VAE with random weights (float32; change dtype with :func:`with_dtype`)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from silo.priors.prior import Prior

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)  # the published file is a PNDM config; DDPM reads its betas
    return Prior(vae, unet, scheduler, name="sd15-architecture-random", device=device)


def with_dtype(prior, dtype: torch.dtype):
    """The same modules as a prior of another dtype (converted in place)."""
    from silo.priors.prior import Prior

    return Prior(
        prior.vae, prior.unet, prior.scheduler, prior.text_encoder, prior.tokenizer, prior.name, prior.device, dtype
    )


def random_operators(prior, small: bool = False) -> dict[str, torch.nn.Module]:
    """CNN and readout operators shaped for ``prior`` (published sizes, or tiny ones for ``--quick``)."""
    from silo.operators import CNNOperator, ReadoutOperator
    from silo.operators.features import feature_channels

    common = dict(latent_channels=prior.latent_channels, embedding_dim=prior.embedding_dim)
    cnn_kw = dict(channels=(8, 8, 8, 8), norm_size=16) if small else {}
    readout_kw = (
        dict(bottleneck_channels=8, projection_dim=16, norm_groups=4, head_channels=(8, 8), norm_size=16)
        if small
        else {}
    )
    torch.manual_seed(0)
    ops = {
        "cnn": CNNOperator(**common, **cnn_kw),
        "readout": ReadoutOperator(**common, feature_channels=feature_channels(prior.unet), **readout_kw),
    }
    return {k: v.to(prior.device).eval().requires_grad_(False) for k, v in ops.items()}


def prompt_embeds_for(prior, name: str):
    """Random SD 1.5 text embeddings (the text encoder runs once per image, so it is not timed), else None."""
    from silo.priors.prior import PromptEmbeddings

    if name == "sd15":
        g = torch.Generator().manual_seed(0)
        ctx = torch.randn(1, SD15_TEXT["context_length"], SD15_TEXT["hidden_size"], generator=g)
        return PromptEmbeddings(ctx.to(prior.device, prior.dtype))
    return None


# ---------------------------------------------------------------------------------------------- timing
def _median_after_warmup(times: list[float], warmup: int) -> float:
    kept = times[warmup:] or times[-1:]
    return statistics.median(kept)


def time_callable(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs, and the peak memory of all."""
    times = []
    release_memory(device)
    with PeakMemory(device) as mem:
        for _ in range(warmup + repeats):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return {"seconds": _median_after_warmup(times, warmup), "all_seconds": times, **mem.result()}


def reference_fns(bp: BenchPrior, size: int) -> dict[str, Callable[[], None]]:
    """Costs every sampler builds on: UNet and decoder, forward alone and forward+backward, at ``size`` px."""
    prior = bp.prior
    side = size // prior.vae_scale
    z = torch.randn(1, prior.latent_channels, side, side, generator=torch.Generator().manual_seed(1)).to(prior.device)
    t = torch.tensor(500, device=prior.device)
    ctx = bp.prompt_embeds.cond if bp.prompt_embeds is not None else prior.encode_prompt("", 1).cond

    def make(forward: Callable[[torch.Tensor], torch.Tensor], grad: bool) -> Callable[[], None]:
        def run() -> None:
            if grad:
                zz = z.clone().requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(forward(zz).float().square().sum(), zz)
            else:
                with torch.no_grad():
                    forward(z)

        return run

    def unet(x: torch.Tensor) -> torch.Tensor:
        return prior.denoise(x, t, ctx)

    return {
        "unet_forward": make(unet, False),
        "unet_forward_backward": make(unet, True),
        "decoder_forward": make(prior.decode, False),
        "decoder_forward_backward": make(prior.decode, True),
    }


def reference_ops(bp: BenchPrior, size: int, warmup: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Each reference op timed on its own, one after another (the unpaired denominators)."""
    fns = reference_fns(bp, size)
    return {name: time_callable(fns[name], bp.prior.device, warmup, repeats) for name in REFERENCE_OPS}


def time_method(
    bp: BenchPrior, name: str, size: int, warmup: int, repeats: int, task: str = "sr4", offload: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One method's per-step time (median after warm-up steps) and its peak memory over the whole run.

    The method's reference op (:func:`paired_reference`) runs once after every step, inside
    the sampler callback, untimed in the step and unseen by the memory peak; ``ratio_to_paired_reference``
    is the median of step / reference over the timed steps."""
    from silo.degradations.tasks import load_task
    from silo.samplers import SAMPLERS, Problem, SamplerSettings
    from silo.testing import random_images

    method, kind = bench_methods()[name]
    prior, device = bp.prior, bp.prior.device
    deg = load_task(task).degradation
    x = random_images(1, (size, size), seed=2).to(device)
    params = {k: v.to(device) for k, v in deg.sample_params(x.shape, [0]).items()}
    with torch.no_grad():
        y = deg.add_noise(deg.A(x, params), [0])
    problem = Problem(deg, y, params, [0], (size, size))
    settings = SamplerSettings(steps=warmup + repeats, prompt_embeds=bp.prompt_embeds)
    reference = paired_reference(name)
    ref = {"fn": reference_fns(bp, size)[reference], "error": None}
    steps: list[float] = []
    ref_seconds: list[float] = []
    last = [0.0]

    def on_step(info: dict[str, Any]) -> None:
        synchronize(device)
        now = time.perf_counter()
        steps.append(now - last[0])
        if ref["fn"] is not None:
            try:  # the bare op: without the sampler's feature hooks (readout), out of its memory peak
                with mem.paused(), without_forward_hooks(prior.unet):
                    ref["fn"]()
                    synchronize(device)
            except (SiloError, RuntimeError) as err:  # out of memory, ...: keep the method's own result
                ref.update(fn=None, error=str(err).strip().splitlines()[0][:300])
                release_memory(device)
            else:
                ref_seconds.append(time.perf_counter() - now)
            now = time.perf_counter()
        last[0] = now

    release_memory(device)
    with PeakMemory(device) as mem:
        last[0] = time.perf_counter()
        from silo.samplers.registry import offload_refusal

        why = offload_refusal(method, offload)  # a method that decodes every step keeps the VAE on the device
        if why:
            return {"method": method, "operator": kind, "task": task, "refused": why}
        prior.set_offload(offload)  # the parts offloaded wait on the CPU, outside the device's peak
        try:
            SAMPLERS[method](
                prior,
                problem,
                settings,
                operator=bp.operators.get(kind) if kind else None,
                callback=on_step,
                show_progress=False,
            )
        finally:
            prior.set_offload(())
    timed = steps[warmup:] or steps[-1:]
    out = {
        "method": method,
        "operator": kind,
        "task": task,
        "seconds_per_step": _median_after_warmup(steps, warmup),
        "mean_seconds_per_step": sum(timed) / len(timed),  # counts a step with extra work (ReSample's consistency)
        "step_seconds": steps,
        **mem.result(),
    }
    if ref["error"]:
        out["paired_reference"] = {"op": reference, "error": ref["error"]}
    else:
        ratios = [s / r for s, r in zip(steps, ref_seconds)]
        out["paired_reference"] = {
            "op": reference,
            "seconds": _median_after_warmup(ref_seconds, warmup),
            "all_seconds": ref_seconds,
        }
        out["ratio_to_paired_reference"] = _median_after_warmup(ratios, warmup)
    return out


@contextlib.contextmanager
def without_forward_hooks(module: torch.nn.Module):
    """``module`` with its submodules' forward hooks set aside (a readout sampler collects UNet features
    through them; a reference op run between its steps must neither pay for nor keep those features)."""
    saved = [(m, dict(m._forward_hooks)) for m in module.modules() if m._forward_hooks]
    for m, _ in saved:
        m._forward_hooks.clear()
    try:
        yield
    finally:
        for m, hooks in saved:
            m._forward_hooks.update(hooks)


# ---------------------------------------------------------------------------------------------- a whole bench
def load_bench_prior(name: str, device: torch.device) -> BenchPrior:
    """``sd15`` (random SD 1.5 architecture), ``tiny-random`` (test prior), ``silo-tiny`` (shipped), or a
    Hub id / diffusers folder."""
    from silo.priors.prior import Prior

    if name == "sd15":
        prior = sd15_prior(device)
        return BenchPrior(
            name, prior, prompt_embeds_for(prior, name), random_operators(prior), f"SD 1.5 architecture, {WEIGHTS_NOTE}"
        )
    if name == "tiny-random":
        from silo.testing import tiny_prior

        prior = tiny_prior()
        prior = Prior(prior.vae, prior.unet, prior.scheduler, name="tiny-random", device=device)
        return BenchPrior(name, prior, None, random_operators(prior, small=True), f"test prior, {WEIGHTS_NOTE}")
    if name == "silo-tiny":
        from silo.models import default_operator_path, default_prior_path

        prior = Prior.from_pretrained(default_prior_path(), device=device)
        ops, notes = random_operators(prior), []
        for kind in ("cnn", "readout"):
            try:
                from silo.operators import load_operator

                ops[kind] = load_operator(default_operator_path("sr4", kind), device=device).requires_grad_(False)
                notes.append(f"shipped sr4 {kind} operator")
            except SiloError:
                notes.append(f"{kind} operator: random, published sizes (none shipped)")
        return BenchPrior(name, prior, None, ops, "shipped silo-tiny prior; " + "; ".join(notes))
    prior = Prior.from_pretrained(name, device=device)
    return BenchPrior(
        name, prior, None, random_operators(prior), f"operators: random, published sizes ({WEIGHTS_NOTE})"
    )


def dtype_supported(dtype: str, device: torch.device) -> str | None:
    """None if ``dtype`` runs on ``device``, else why not."""
    if dtype == "float32":
        return None
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU does not support bfloat16"
    if device.type == "cpu":
        return None
    return f"bfloat16 is not benchmarked on {device.type}"


def add_ratios(run: dict[str, Any]) -> None:
    """Each method's per-step time over Latent-DPS's and over one UNet forward (and forward+backward), from
    the reference block; and, where the method was paired, over its paired reference and (drift-corrected)
    over Latent-DPS's paired ratio to the same reference."""
    ref, methods = run.get("reference", {}), run.get("methods", {})
    ldps = methods.get("ldps", {})
    for entry in methods.values():
        if "seconds_per_step" not in entry:
            continue
        s = entry["seconds_per_step"]
        entry["ratio_to_ldps"] = s / ldps["seconds_per_step"] if ldps.get("seconds_per_step") else None
        for op in ("unet_forward", "unet_forward_backward"):
            base = (ref.get(op) or {}).get("seconds")
            entry[f"ratio_to_{op}"] = s / base if base else None
        same_reference = (entry.get("paired_reference") or {}).get("op") == (ldps.get("paired_reference") or {}).get(
            "op"
        )
        paired, ldps_paired = entry.get("ratio_to_paired_reference"), ldps.get("ratio_to_paired_reference")
        entry["paired_ratio_to_ldps"] = paired / ldps_paired if paired and ldps_paired and same_reference else None
        peak, ldps_peak = entry.get("peak_memory_bytes"), ldps.get("peak_memory_bytes")
        entry["peak_memory_ratio_to_ldps"] = peak / ldps_peak if peak and ldps_peak else None
        # the peak without the bare runtime (interpreter, libraries): the models and tensors, as CUDA counts them
        # (only where a CPU baseline was measured: on CUDA the peak already counts tensors alone)
        runtime = run.get("runtime_memory_bytes") if run.get("runtime_memory_kind") == "cpu_rss_before_models" else None
        model, ldps_model = _minus(peak, runtime), _minus(ldps_peak, runtime)
        entry["model_memory_bytes"] = model
        entry["model_memory_ratio_to_ldps"] = model / ldps_model if (model or 0) > 0 and (ldps_model or 0) > 0 else None
        # what the step adds on top of the loaded models (the peak includes the weights)
        extra, ldps_extra = _extra_memory(entry), _extra_memory(ldps)
        entry["extra_memory_bytes"] = extra
        entry["extra_memory_ratio_to_ldps"] = extra / ldps_extra if extra and ldps_extra else None


def _minus(value: int | None, base: int | None) -> int | None:
    return value - base if value is not None and base is not None else None


def runtime_memory(device: torch.device) -> dict[str, Any]:
    """What the process holds before any model is built: on a CPU the resident set of the interpreter and
    the libraries (imported first); on CUDA nothing, since ``max_memory_allocated`` counts tensors only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (the libraries every method runs on)

    from silo.evaluation.memory import current_rss

    if device.type == "cuda":
        return {"runtime_memory_bytes": 0, "runtime_memory_kind": "none: CUDA's counter holds tensors only"}
    release_memory(device)
    rss = current_rss()
    return {"runtime_memory_bytes": rss, "runtime_memory_kind": "cpu_rss_before_models" if rss else "unavailable"}


def _extra_memory(entry: dict[str, Any]) -> int | None:
    peak, start = entry.get("peak_memory_bytes"), entry.get("memory_at_start_bytes")
    return peak - start if peak is not None and start is not None else None


def check_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bench's targets at 512 px, SD 1.5 architecture, float32, batch 1 (absent runs: not checked)."""
    out = []
    for run in runs:
        if (run["prior"], run["size"], run["dtype"]) != ("sd15", 512, "float32"):
            continue
        m = run.get("methods", {})

        def get(name: str, key: str, m: dict = m):
            return (m.get(name) or {}).get(key)

        def paired(name: str, key: str, op: str, m: dict = m) -> tuple[float | None, bool]:
            """The paired ratio where ``name`` was paired with ``op``, else the unpaired ``key``; and which."""
            entry = m.get(name) or {}
            value = entry.get("ratio_to_paired_reference")
            if (entry.get("paired_reference") or {}).get("op") == op and value is not None:
                return value, True
            return entry.get(key), False

        to_ldps = get("silo[cnn]", "paired_ratio_to_ldps")
        to_ldps = (to_ldps, True) if to_ldps is not None else (get("silo[cnn]", "ratio_to_ldps"), False)
        checks = [
            ("SILO (CNN) per step at least 4x faster than Latent-DPS", to_ldps, 0.25),
            (
                "SILO (CNN) per step at most 1.1x one UNet forward+backward",
                paired("silo[cnn]", "ratio_to_unet_forward_backward", "unet_forward_backward"),
                1.1,
            ),
            (
                "SILO (CNN) peak memory at most half of Latent-DPS's (process peak)",
                (get("silo[cnn]", "peak_memory_ratio_to_ldps"), None),
                0.5,
            ),
            (
                "SILO (CNN) peak memory at most half of Latent-DPS's "
                "(models and tensors: the peak less the bare runtime)",
                (get("silo[cnn]", "model_memory_ratio_to_ldps"), None),
                0.5,
            ),
            (
                "x0-space SILO per step at most 1.15x one UNet forward",
                paired("silo_x0[cnn]", "ratio_to_unet_forward", "unet_forward"),
                1.15,
            ),
            (
                "annealed SILO (silo_daps, CNN) per step at most 1.2x one UNet forward",
                paired("silo_daps[cnn]", "ratio_to_unet_forward", "unet_forward"),
                1.2,
            ),
        ]
        for text, (value, was_paired), limit in checks:
            out.append(
                {
                    "target": text,
                    "value": value,
                    "limit": limit,
                    "paired": was_paired,
                    "passed": None if value is None else bool(value <= limit),
                }
            )
    return out


def run_bench(
    priors: list[str],
    sizes: list[int],
    dtypes: list[str],
    methods: list[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    quick: bool = False,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
    offload: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every (prior, size, dtype): reference costs, then each method; ``on_update`` sees partial results."""
    from tqdm.auto import tqdm

    from silo.provenance import device_name, library_versions

    known = bench_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SiloError(f"unknown bench method(s) {unknown} (choose from {', '.join(known)})")
    result: dict[str, Any] = {
        "schema": "silo.bench/1",
        "note": WEIGHTS_NOTE,
        "device": device_name(device),
        "versions": library_versions(),
        "settings": {
            "warmup_steps": warmup,
            "repeats": repeats,
            "batch": 1,
            "task": "sr4",
            "quick": quick,
            "offload": sorted(offload),
            "statistic": "median over repeats after warm-up",
            "paired_reference": "each method's step against the reference op run between its steps "
            "(targets use these ratios)",
            "paired_ops": {m: paired_reference(m) for m in known},
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "runs": [],
        "targets": [],
    }
    result.update(runtime_memory(device))
    order = [m for m in known if m in methods]
    total = len(priors) * len(sizes) * len(dtypes) * (len(REFERENCE_OPS) + len(order))
    bar = tqdm(total=total, desc="bench", disable=not show_progress, leave=False, dynamic_ncols=True)
    for name in priors:
        bp = load_bench_prior(name, device)
        base = bp.prior
        for dtype in dtypes:
            why = dtype_supported(dtype, device)
            if why is None:
                bp.prior = with_dtype(base, getattr(torch, dtype))
                if bp.prompt_embeds is not None:
                    bp.prompt_embeds.cond = bp.prompt_embeds.cond.to(bp.prior.dtype)
            for size in sizes:
                run: dict[str, Any] = {
                    "prior": name,
                    "prior_note": bp.note,
                    "prior_info": base.describe(),
                    "size": size,
                    "dtype": dtype,
                    "reference": {},
                    "methods": {},
                    "runtime_memory_bytes": result["runtime_memory_bytes"],
                    "runtime_memory_kind": result["runtime_memory_kind"],
                }
                result["runs"].append(run)
                try:
                    if why:
                        raise SiloError(why)
                    bp.prior.check_image_size(size, size)
                except SiloError as err:
                    run["skipped"] = str(err)
                    bar.update(len(REFERENCE_OPS) + len(order))
                    continue
                run["prior_info"] = bp.prior.describe()
                run["reference"] = reference_ops(bp, size, warmup, repeats)
                bar.update(len(REFERENCE_OPS))
                for method in order:
                    try:
                        run["methods"][method] = time_method(bp, method, size, warmup, repeats, offload=tuple(offload))
                    except (SiloError, RuntimeError) as err:  # out of memory, unsupported dtype kernel, ...
                        run["methods"][method] = {"error": str(err).strip().splitlines()[0][:300]}
                        release_memory(device)
                    bar.update(1)
                    add_ratios(run)
                    if on_update is not None:
                        on_update(result)
        del bp
        release_memory(device)
    bar.close()
    result["targets"] = check_targets(result["runs"])
    result["complete"] = True
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result
