"""Quality against time: per task, every configuration's mean PSNR and SSIM against its wall time per image,
and which configurations lie on the Pareto front (no other has higher PSNR at equal or lower time).

Read from the aggregate table (:mod:`silo.evaluation.aggregate`), so ``silo summarize`` and ``silo evaluate``
give the same frontier. "SILO variants" are the methods whose name starts with ``silo``; for every other
point the table names the best SILO variant at equal or lower time and by how much the point leads it, next
to the point's 95% interval, so a reader sees whether a peer beats SILO at that budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA = "silo.frontier/1"


def _mean(row: dict[str, Any], metric: str) -> float | None:
    value = (row["metrics"].get(metric) or {}).get("mean")
    return float(value) if value is not None and math.isfinite(value) else None


def _ci(row: dict[str, Any], metric: str) -> float:
    return float((row["metrics"].get(metric) or {}).get("ci95") or 0.0)


def is_silo(method: str) -> bool:
    return method.startswith("silo")


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark ``on_front`` on each point: True when no other point is at least as good in both time and PSNR
    and better in one."""

    def dominates(q: dict[str, Any], p: dict[str, Any]) -> bool:
        return (
            q["seconds"] <= p["seconds"]
            and q["psnr"] >= p["psnr"]
            and (q["seconds"] < p["seconds"] or q["psnr"] > p["psnr"])
        )

    for p in points:
        p["on_front"] = not any(dominates(q, p) for q in points if q is not p)
    return points


def frontier(table: dict[str, Any]) -> dict[str, Any]:
    """Per task, the points (method, steps, start strength, seconds, PSNR, SSIM) sorted by time, front marked."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for row in table["rows"]:
        seconds, psnr = _mean(row, "seconds"), _mean(row, "psnr")
        if seconds is None or psnr is None:
            continue
        tasks.setdefault(row["task"], []).append(
            {
                "method": row["method"],
                "steps": row.get("steps"),
                "start_strength": row.get("start_strength"),
                "settings_key": row.get("settings_key"),
                "n": row.get("n"),
                "seconds": seconds,
                "seconds_ci95": _ci(row, "seconds"),
                "psnr": psnr,
                "psnr_ci95": _ci(row, "psnr"),
                "ssim": _mean(row, "ssim"),
                "ssim_ci95": _ci(row, "ssim"),
                "consistency_psnr": (row["metrics"].get("consistency_psnr") or {}).get("mean"),  # inf: A(x) == y
            }
        )
    out = {}
    for task, points in sorted(tasks.items()):
        pareto(points)
        points.sort(key=lambda p: (p["seconds"], -p["psnr"]))
        for p in points:
            if is_silo(p["method"]):
                continue
            rivals = [q for q in points if is_silo(q["method"]) and q["seconds"] <= p["seconds"]]
            best = max(rivals, key=lambda q: q["psnr"], default=None)
            p["best_silo_at_or_below"] = None if best is None else _label(best)
            p["lead_over_silo"] = None if best is None else p["psnr"] - best["psnr"]
        out[task] = points
    return {"schema": SCHEMA, "tasks": out}


def _label(p: dict[str, Any]) -> str:
    start = p.get("start_strength")
    return f"{p['method']} {p['steps']} steps" + (f", start {start:g}" if start not in (None, 1, 1.0) else "")


def has_sweep(table: dict[str, Any]) -> bool:
    """Whether some task and method ran at several step counts (a frontier says something)."""
    seen: dict[tuple, set] = {}
    for row in table["rows"]:
        seen.setdefault((row["task"], row["method"]), set()).add(row.get("steps"))
    return any(len(s) > 1 for s in seen.values())


def markdown(front: dict[str, Any]) -> str:
    lines = []
    for task, points in front["tasks"].items():
        lines += [
            f"### {task}",
            "",
            "| method | steps | start | s / image | PSNR | SSIM | consistency PSNR | front "
            "| best SILO at <= time | lead (dB) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in points:
            lead = p.get("lead_over_silo")
            lines.append(
                "| "
                + " | ".join(
                    [
                        p["method"],
                        str(p["steps"]),
                        f"{p['start_strength']:g}" if p.get("start_strength") is not None else "?",
                        f"{p['seconds']:.3f}",
                        f"{p['psnr']:.2f} ± {p['psnr_ci95']:.2f}",
                        f"{p['ssim']:.4f}" if p.get("ssim") is not None else "n/a",
                        f"{p['consistency_psnr']:.2f}" if p.get("consistency_psnr") is not None else "n/a",
                        "**yes**" if p["on_front"] else "",
                        "(SILO)" if is_silo(p["method"]) else (p.get("best_silo_at_or_below") or "none"),
                        "" if lead is None else f"{lead:+.2f}",
                    ]
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """Strict JSON: an infinite consistency PSNR (``A(x) == y``) written as the string "inf"."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return value


def write_frontier(front: dict[str, Any], out_dir: str | Path) -> list[Path]:
    from silo.evaluation.aggregate import _replace

    out = Path(out_dir)
    paths = [out / "frontier.json", out / "frontier.md"]
    _replace(paths[0], json.dumps(_finite(front), indent=2, sort_keys=True) + "\n")
    _replace(paths[1], markdown(front))
    return paths


def plot_frontier(front: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``frontier_TASK.png``: PSNR against seconds per image, one line per method over its step counts, the
    points on the front ringed and joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task, points in front["tasks"].items():
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        methods = sorted({p["method"] for p in points})
        for i, method in enumerate(methods):
            mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["seconds"])
            style = "-" if is_silo(method) else "--"
            ax.errorbar(
                [p["seconds"] for p in mine],
                [p["psnr"] for p in mine],
                yerr=[p["psnr_ci95"] for p in mine],
                fmt="o" + style,
                capsize=2,
                color=plt.get_cmap("tab10")(i % 10),
                label=method,
                markersize=4,
            )
            for p in mine:
                ax.annotate(
                    str(p["steps"]), (p["seconds"], p["psnr"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        front_pts = sorted((p for p in points if p["on_front"]), key=lambda p: p["seconds"])
        ax.plot(
            [p["seconds"] for p in front_pts],
            [p["psnr"] for p in front_pts],
            "o",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor="black",
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_xlabel("wall time per image (s)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{task}: quality against time (labels: steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"frontier_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
