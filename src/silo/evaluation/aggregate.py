"""Aggregate per-image logs into one table: mean and 95% interval per metric, per configuration.

Rows are keyed by :data:`silo.evaluation.records.GROUP_BY`. The table is written as JSON (everything),
CSV (flat) and Markdown (the columns a reader compares). It holds no timestamps or absolute paths, so the
same logs always give byte-identical files: ``silo summarize`` reproduces ``silo evaluate``'s table.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from silo.evaluation.records import GROUP_BY, Record, number

SCHEMA = "silo.aggregate/1"
#: metrics shown first, in this order; any other numeric metric follows alphabetically
PREFERRED = (
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips_alex",
    "lpips_vgg",
    "psnr_y",
    "psnr_known",
    "ssim_known",
    "psnr_hole",
    "ssim_hole",
    "psnr_known_vs_measurement",
    "consistency_psnr",
    "consistency_psnr_y",
    "consistency_psnr_vs_measurement",
    "seconds",
    "seconds_per_step",
    "peak_memory_bytes",
)


def t_quantile(n: int) -> float:
    """Two-sided 95% Student-t quantile for ``n`` samples (normal 1.96 without scipy)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, n - 1))
    except ImportError:  # pragma: no cover - scipy comes with scikit-image
        return 1.96


def mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and the half-width of the 95% confidence interval of the mean (None for n < 2)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "std": None, "n": 0}
    mean = math.fsum(values) / n
    if n < 2 or not all(math.isfinite(v) for v in values):
        return {"mean": mean, "ci95": None, "std": None, "n": n}
    std = statistics.stdev(values)
    return {"mean": mean, "ci95": t_quantile(n) * std / math.sqrt(n), "std": std, "n": n}


def metric_names(records: list[Record]) -> list[str]:
    seen = {k for r in records for k, v in r.log["metrics"].items() if number(v) is not None or v is None}
    seen = {k for k in seen if not k.endswith("_note")}
    return [k for k in PREFERRED if k in seen] + sorted(seen - set(PREFERRED))


def _notes(records: list[Record]) -> dict[str, str]:
    notes: dict[str, str] = {}
    for r in records:
        for k, v in r.log["metrics"].items():
            if k.endswith("_note") and isinstance(v, str):
                notes.setdefault(k[: -len("_note")], v)
    return notes


def aggregate(
    records: list[Record], fid: dict[tuple, dict[str, Any]] | None = None, fid_status: str | None = None
) -> dict[str, Any]:
    """The aggregate table of ``records``; ``fid`` maps a row key to its FID/KID entry (see ``fid.py``)."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.key].append(r)
    rows = []
    for key in sorted(
        groups, key=lambda k: tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in k)
    ):
        members = groups[key]
        metrics = {}
        for name in metric_names(members):
            vals = [number(r.log["metrics"].get(name)) for r in members]
            metrics[name] = mean_ci([v for v in vals if v is not None and not math.isnan(v)])
        peaks = [number(r.log["metrics"].get("peak_memory_bytes")) for r in members]
        peaks = [p for p in peaks if p is not None]
        row = dict(zip(GROUP_BY, key))
        starts = {(r.log.get("settings") or {}).get("start_strength") for r in members}
        row.update(
            {
                "start_strength": starts.pop() if len(starts) == 1 else None,
                "n": len(members),
                "images": len({r.log.get("name") for r in members}),
                "seeds": sorted({r.log.get("seed") for r in members if r.log.get("seed") is not None}),
                "batch_sizes": sorted({r.log.get("batch_size", 1) for r in members}),
                "devices": sorted({str(r.log.get("device")) for r in members}),
                "memory_kind": sorted(
                    {str((r.log.get("memory") or {}).get("memory_kind")) for r in members if r.log.get("memory")}
                ),
                "peak_memory_max_bytes": int(max(peaks)) if peaks else None,
                "metrics": metrics,
                "notes": _notes(members),
            }
        )
        if fid is not None:
            row.update(fid.get(key, {}))
        rows.append(row)
    return {"schema": SCHEMA, "group_by": list(GROUP_BY), "logs": len(records), "fid_status": fid_status, "rows": rows}


# ---------------------------------------------------------------------------------------------- writing
def _fmt(stat: dict[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    mean = stat["mean"] / scale
    if math.isinf(mean):
        return "inf"
    text = f"{mean:.{digits}f}"
    if stat.get("ci95") is not None:
        text += f" ± {stat['ci95'] / scale:.{digits}f}"
    return text


def markdown(table: dict[str, Any]) -> str:
    """The comparison as a Markdown table (mean ± 95% interval half-width)."""
    rows = table["rows"]
    multi_prior = len({r["prior"] for r in rows}) > 1
    pairs = [(r["task"], r["method"], r["prior"]) for r in rows]
    multi_settings = len(set(pairs)) < len(pairs)  # one method run with several settings: tell the rows apart
    show_fid = any(isinstance(r.get("fid"), dict) and r["fid"].get("value") is not None for r in rows)
    regions = any((r["metrics"].get("psnr_hole") or {}).get("mean") is not None for r in rows)  # inpainting
    cols = (
        ["task", "method"]
        + (["prior"] if multi_prior else [])
        + (["settings"] if multi_settings else [])
        + [
            "steps",
            "n",
            "PSNR",
            "SSIM",
            "LPIPS (alex)",
            "consistency PSNR",
            "s / image",
            "s / step",
            "peak memory (GiB)",
        ]
        + (["FID", "KID"] if show_fid else [])
        + (["PSNR known", "SSIM known", "PSNR hole", "SSIM hole"] if regions else [])
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    gib = 2.0**30
    for r in rows:
        m = r["metrics"]
        cells = (
            [str(r["task"]), str(r["method"])]
            + ([str(r["prior"])] if multi_prior else [])
            + ([str(r["settings_key"])] if multi_settings else [])
            + [
                str(r["steps"]),
                str(r["n"]),
                _fmt(m.get("psnr"), 2),
                _fmt(m.get("ssim"), 4),
                _fmt(m.get("lpips_alex"), 4),
                _fmt(m.get("consistency_psnr") or m.get("consistency_psnr_vs_measurement"), 2),
                _fmt(m.get("seconds"), 3),
                _fmt(m.get("seconds_per_step"), 4),
                _fmt(m.get("peak_memory_bytes"), 2, gib),
            ]
        )
        if show_fid:
            fid, kid = r.get("fid") or {}, r.get("kid") or {}
            cells += [
                f"{fid['value']:.2f}" if fid.get("value") is not None else "n/a",
                f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid.get("mean") is not None else "n/a",
            ]
        if regions:
            cells += [
                _fmt(m.get("psnr_known"), 2),
                _fmt(m.get("ssim_known"), 4),
                _fmt(m.get("psnr_hole"), 2),
                _fmt(m.get("ssim_hole"), 4),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({f"{k}: {v}" for r in rows for k, v in r.get("notes", {}).items()})
    if table.get("fid_status") and not show_fid:
        notes.append(f"FID/KID: {table['fid_status']}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


def csv_text(table: dict[str, Any]) -> str:
    """One line per row: the key columns, n, then ``<metric>_mean`` / ``_ci95`` / ``_n`` per metric."""
    names: list[str] = []
    for r in table["rows"]:
        names += [k for k in r["metrics"] if k not in names]
    header = list(GROUP_BY) + ["n", "peak_memory_max_bytes"]
    for k in names:
        header += [f"{k}_mean", f"{k}_ci95", f"{k}_n"]
    header += ["fid", "kid_mean", "kid_std"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in table["rows"]:
        line = [r[k] for k in GROUP_BY] + [r["n"], r["peak_memory_max_bytes"]]
        for k in names:
            s = r["metrics"].get(k) or {}
            line += [s.get("mean"), s.get("ci95"), s.get("n")]
        fid, kid = r.get("fid") or {}, r.get("kid") or {}
        line += [fid.get("value"), kid.get("mean"), kid.get("std")]
        writer.writerow(["" if v is None else v for v in line])
    return buf.getvalue()


def _replace(path: Path, text: str) -> None:
    """Derived files may be rewritten: write a temporary file, then rename it over the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary file


def write_tables(table: dict[str, Any], out_dir: str | Path, stem: str = "aggregate") -> list[Path]:
    from silo.io.outputs import json_bytes, json_safe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        out / f"{stem}.json": json_bytes(json_safe(table)).decode(),
        out / f"{stem}.csv": csv_text(table),
        out / f"{stem}.md": markdown(table),
    }
    for path, text in files.items():
        _replace(path, text)
    return list(files)


def aggregate_folder(folder: str | Path, with_fid: bool = True, inception_weights: str | None = None) -> dict[str, Any]:
    """The table of every per-image log under ``folder``, with FID/KID when Inception weights are local."""
    from silo.errors import SiloError
    from silo.evaluation.fid import fid_kid, find_inception_weights, image_pairs
    from silo.evaluation.records import scan_records

    if not Path(folder).is_dir():
        raise SiloError(f"{folder}: not a folder")
    records, skipped = scan_records(folder)
    if not records:
        why = f"; {len(skipped)} skipped, e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise SiloError(f"{folder}: no per-image logs (JSON files with 'metrics', 'method' and 'task') found{why}")
    fid = status = None
    if with_fid:
        weights, status = find_inception_weights(inception_weights)
        if weights is not None:
            fid = fid_kid(image_pairs(records, lambda r: r.key), weights)
    table = aggregate(records, fid, status)
    # said and kept: a log left out is never silent (relative paths, so the table stays reproducible)
    table["skipped"] = [{"path": s.path.relative_to(Path(folder)).as_posix(), "reason": s.reason} for s in skipped]
    return table
