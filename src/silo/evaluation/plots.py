"""Quality against cost: one PNG per metric, one panel per task, one point per method (with 95% intervals).

matplotlib is optional (``pip install matplotlib``); without it the plots are skipped with a message and
the tables are still written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: metrics plotted when present, and whether higher is better (for the axis label)
PLOTTED = {"psnr": "higher", "ssim": "higher", "lpips_alex": "lower", "consistency_psnr": "higher"}


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install matplotlib)"
    return None


def _has(rows: list[dict[str, Any]], metric: str) -> bool:
    return any((r["metrics"].get(metric) or {}).get("mean") is not None for r in rows)


def plot_tables(table: dict[str, Any], out_dir: str | Path, time_metric: str = "seconds") -> list[Path]:
    """Write ``<metric>_vs_time.png`` for each plotted metric; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    rows = [r for r in table["rows"] if (r["metrics"].get(time_metric) or {}).get("mean") is not None]
    tasks = sorted({r["task"] for r in rows})
    labels = sorted({f"{r['method']} ({r['steps']} steps)" for r in rows})
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, better in PLOTTED.items():
        if not _has(rows, metric):
            continue
        cols = min(3, len(tasks))
        fig, axes = plt.subplots(
            math.ceil(len(tasks) / cols), cols, figsize=(4.5 * cols, 3.6 * math.ceil(len(tasks) / cols)), squeeze=False
        )
        for ax, task in zip(axes.flat, tasks):
            for r in (r for r in rows if r["task"] == task):
                y, x = r["metrics"].get(metric) or {}, r["metrics"][time_metric]
                if y.get("mean") is None or not math.isfinite(y["mean"]):
                    continue
                label = f"{r['method']} ({r['steps']} steps)"
                ci = x.get("ci95") or 0.0
                xerr = [[min(ci, 0.95 * x["mean"])], [ci]]  # keep the bar on the log axis
                ax.errorbar(
                    x["mean"],
                    y["mean"],
                    xerr=xerr,
                    yerr=y.get("ci95"),
                    fmt="o",
                    capsize=3,
                    color=colours[label],
                    label=label,
                )
            ax.set_title(task)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("wall time per image (s)")
            ax.set_ylabel(f"{metric} ({better} is better)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(tasks) :]:
            ax.axis("off")
        fig.tight_layout()
        path = out / f"{metric}_vs_time.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
