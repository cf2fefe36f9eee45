"""``silo bench``: per-step wall time and peak memory of every method, with ratios measured in one run."""

from __future__ import annotations

import argparse

COMMAND = "bench"
HELP = "time one sampling step and measure peak memory of every method (`silo methods`)"
DESCRIPTION = """Measure, for each prior, image size and dtype: the UNet forward, forward+backward, decoder
forward and forward+backward, then one sampling step of every registered method (SILO with a CNN and with a
readout operator, x0-space and annealed SILO with a CNN, Latent-DPS, PSLD, ReSample, Latent-DAPS) through the
real samplers on an sr4 problem, batch 1. Reports the median step time after warm-up, and the mean (which
counts ReSample's consistency step), each step also against a UNet forward+backward, or a forward for the
methods with no UNet backward (x0-space and annealed SILO, Latent-DAPS), run between the method's own steps,
so that drift between blocks cannot move the ratios;
peak memory (CUDA max allocated, or peak resident set on a CPU, also
given less the resident set of the bare runtime measured before any model is built), and
each method's ratio to Latent-DPS and to one UNet forward from the same run, then checks the targets
(SD 1.5, 512 px, float32) on the paired ratios (each target record says whether it was paired). Writes JSON.

Priors: sd15 is the Stable Diffusion 1.5 UNet and VAE built from the published configuration with random
weights: timing and memory do not depend on weight values. silo-tiny is the shipped prior; tiny-random the
test prior; anything else is a Hub id or diffusers folder.

On a GPU: `silo bench --device cuda --output bench-gpu.json` (bfloat16 where the GPU supports it).
On a 2-core CPU, SD 1.5 at 512 px float32 takes about half an hour (run it on an idle machine);
`--quick` takes seconds."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prior",
        default=None,
        help="comma-separated: silo-tiny, sd15, tiny-random, Hub ids or folders [default: silo-tiny,sd15 "
        "(sd15 alone when no silo-tiny is shipped)]",
    )
    p.add_argument("--sizes", default="256,512", help="comma-separated image sides in px")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated bench methods: method labels such as silo[cnn], silo[readout], silo_x0[cnn], "
        "ldps, psld [default: every registered sampler with every operator kind it can feed]",
    )
    p.add_argument("--warmup", type=int, default=1, help="steps (and reference runs) excluded from timing")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method (median reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny random prior, 32 px, float32, 1 warm-up + 1 timed step (seconds)",
    )
    p.add_argument(
        "--offload",
        action="append",
        default=[],
        choices=["vae", "text-encoder"],
        help="keep this part on the CPU during each method's sampling loop (`silo restore --offload`); "
        "methods that decode every step are recorded as refused; repeatable",
    )
    p.add_argument("--output", default="bench.json", help="JSON file to write (never overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _ints(text: str, what: str) -> list[int]:
    from silo.errors import SiloError

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SiloError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SiloError(f"--{what} must be positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys
    from pathlib import Path

    from silo.errors import SiloError
    from silo.evaluation.bench import run_bench
    from silo.io.outputs import json_bytes, json_safe, write_new
    from silo.provenance import resolve_device

    out = Path(args.output)
    if out.exists():
        raise SiloError(f"--output {out} exists; choose another file (bench results are never overwritten)")
    device = resolve_device(args.device)
    if args.quick:
        priors, sizes, dtypes, warmup, repeats = ["tiny-random"], [32], ["float32"], 1, 1
    else:
        sizes, dtypes = _ints(args.sizes, "sizes"), [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
        if bad or not dtypes:
            raise SiloError(f"--dtypes: choose from float32, bfloat16 (got {args.dtypes!r})")
        warmup, repeats = args.warmup, args.repeats
        if warmup < 0 or repeats < 1:
            raise SiloError("--warmup must be >= 0 and --repeats >= 1")
        if args.prior:
            priors = [p.strip() for p in args.prior.split(",") if p.strip()]
        else:
            from silo.models import shipped_root

            priors = ["silo-tiny", "sd15"] if (shipped_root() / "prior" / "unet").is_dir() else ["sd15"]
            if priors == ["sd15"]:
                print("silo bench: no silo-tiny prior is shipped in this build; benching sd15 only", file=sys.stderr)
    from silo.evaluation.bench import bench_methods

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(bench_methods())
    partial = out.with_name(f".{out.name}.partial")

    def save_partial(result: dict) -> None:  # an interrupted run keeps what it measured
        tmp = partial.with_suffix(".tmp")
        tmp.write_bytes(json_bytes(json_safe(result)))
        os.replace(tmp, partial)

    print(
        f"silo bench: {', '.join(priors)} at {sizes} px, {dtypes}, on {device}; SD 1.5 weights are random "
        "(timing does not depend on weight values)",
        file=sys.stderr,
    )
    result = run_bench(
        priors,
        sizes,
        dtypes,
        methods,
        device,
        warmup,
        repeats,
        quick=args.quick,
        on_update=save_partial,
        show_progress=not args.no_progress,
        offload=tuple(args.offload),
    )
    result["command"] = " ".join(sys.argv)
    write_new(out, json_bytes(json_safe(result)))
    partial.unlink(missing_ok=True)
    for run_ in result["runs"]:
        head = f"{run_['prior']} {run_['size']}px {run_['dtype']}"
        if "skipped" in run_:
            print(f"{head}: skipped ({run_['skipped']})")
            continue
        unet = run_["reference"]["unet_forward"]["seconds"]
        print(f"{head}: UNet forward {unet:.4g} s")
        for name, m in run_["methods"].items():
            if "error" in m or "refused" in m:
                print(f"  {name:13s} {'error' if 'error' in m else 'refused'}: {m.get('error') or m['refused']}")
                continue
            to_ldps = f"{m['ratio_to_ldps']:.2f}x LDPS" if m.get("ratio_to_ldps") else "LDPS n/a"
            pair = m.get("paired_reference")
            paired = (
                (
                    f" (paired: {m['ratio_to_paired_reference']:.2f}x {pair['op'].replace('_', ' ')} run between its "
                    f"steps"
                    + (f", {m['paired_ratio_to_ldps']:.2f}x LDPS" if m.get("paired_ratio_to_ldps") else "")
                    + ")"
                )
                if pair
                else ""
            )
            peak = m.get("peak_memory_bytes")
            print(
                f"  {name:13s} {m['seconds_per_step']:.4g} s/step  {m['ratio_to_unet_forward']:.2f}x UNet fwd  "
                f"{to_ldps}{paired}  peak {peak / 2**30 if peak else float('nan'):.2f} GiB"
                + (
                    f" (+{m['extra_memory_bytes'] / 2**30:.2f} over the loaded models)"
                    if m.get("extra_memory_bytes") is not None
                    else ""
                )
                + (
                    f", {m['model_memory_bytes'] / 2**30:.2f} GiB without the runtime"
                    if m.get("model_memory_bytes") is not None
                    else ""
                )
            )
    for t in result["targets"]:
        state = {True: "PASS", False: "FAIL", None: "n/a"}[t["passed"]]
        print(f"target {state}: {t['target']} (value {t['value']}, limit {t['limit']})")
    print(f"wrote {out}", file=sys.stderr)
    json.loads(out.read_text())  # what we wrote must parse
    return 0
