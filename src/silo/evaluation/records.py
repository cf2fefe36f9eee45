"""Per-image JSON logs (written by ``silo restore`` and ``silo evaluate``): finding, reading and labelling them.

One place decides what identifies a compared configuration (task, method label, prior, steps, scheduler and
the settings key: everything that changes pixels but the input and the seed), so ``evaluate``'s table and
``summarize``'s table of the same logs cannot disagree, and a folder holding runs of several settings
aggregates each apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the columns that identify one row of an aggregate table
GROUP_BY = ("task", "method", "prior", "steps", "scheduler", "settings_key")


@dataclass
class Record:
    """One per-image log and where it was found."""

    path: Path
    log: dict[str, Any]

    @property
    def key(self) -> tuple:
        return tuple(group_value(self.log, k) for k in GROUP_BY)


def format_value(v: float) -> str:
    """Short, stable text for an option value (``1.0`` -> ``1``, ``0.25`` -> ``0.25``)."""
    return f"{float(v):g}"


def method_label(method: str, operator_kind: str | None, options: dict[str, float]) -> str:
    """``silo[cnn]``, ``ldps(zeta=0.5)``: what a table row calls a method configuration."""
    label = method + (f"[{operator_kind}]" if operator_kind else "")
    if options:
        label += "(" + ",".join(f"{k}={format_value(v)}" for k, v in sorted(options.items())) + ")"
    return label


def method_slug(method: str, operator_kind: str | None, options: dict[str, float]) -> str:
    """File-name-safe form of :func:`method_label`: ``silo-cnn``, ``ldps-zeta0.5``."""
    parts = [method] + ([operator_kind] if operator_kind else [])
    parts += [f"{k}{format_value(v)}" for k, v in sorted(options.items())]
    return "-".join(parts)


def group_value(log: dict[str, Any], key: str) -> Any:
    if key == "task":
        task = log.get("task")
        return task.get("name") if isinstance(task, dict) else task
    if key == "method":
        if log.get("method_label"):
            return log["method_label"]
        method = log.get("method", "?")
        kind = (log.get("operator") or {}).get("kind")  # logs of methods without an operator have none
        return method_label(method, kind, {})
    if key == "settings_key":  # logs written before result identities group by the other columns alone
        return ((log.get("identity") or {}).get("config_key") or "")[:8] or None
    if key == "prior":
        prior = log.get("prior")
        return prior.get("name") or prior.get("source") if isinstance(prior, dict) else prior
    settings = log.get("settings") or {}
    return settings.get(key)


def is_image_log(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "method" in data and "task" in data


def find_records(folder: str | Path) -> list[Record]:
    """Every per-image log under ``folder`` (recursively), sorted by path; other JSON files are ignored."""
    root = Path(folder)
    records = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if is_image_log(data):
            records.append(Record(path, data))
    return records


def number(v: Any) -> float | None:
    """A metric value as a float: ``"inf"`` strings (how logs store infinities) become ``inf``; None stays."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return None

