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


def looks_like_log(data: Any) -> bool:
    """A JSON object meant as a per-image log (its schema says so, or it has a log's keys), valid or not."""
    if not isinstance(data, dict):
        return False
    schema = data.get("schema")
    return (isinstance(schema, str) and schema.startswith("silo.result")) or bool({"metrics", "method"} & set(data))


_SCALAR = (str, int, float, bool, type(None))


def log_problem(data: Any) -> str | None:
    """Why a per-image log cannot be tabled (a field of the wrong type, a missing one), or None if it can.

    Checks every field the tables read, so one bad log is skipped with its reason, never a traceback."""
    if not is_image_log(data):
        missing = [k for k in ("metrics", "method", "task") if k not in data]
        return f"missing {', '.join(missing)}" if missing else "'metrics' is not a mapping"
    bad = [k for k, v in data["metrics"].items() if not isinstance(v, _SCALAR)]
    if bad:
        return f"metrics {', '.join(map(str, bad[:3]))} are not numbers"
    shapes = {
        "method": (str,),
        "method_label": (str, type(None)),
        "task": (dict, str),
        "operator": (dict, type(None)),
        "identity": (dict, type(None)),
        "prior": (dict, str, type(None)),
        "settings": (dict, type(None)),
        "memory": (dict, type(None)),
        "name": _SCALAR,
        "device": _SCALAR,
    }
    for key, kinds in shapes.items():
        if key in data and not isinstance(data[key], kinds):
            return f"'{key}' is a {type(data[key]).__name__}"
    for key in ("seed", "batch_size"):
        if data.get(key) is not None and (isinstance(data[key], bool) or not isinstance(data[key], int)):
            return f"'{key}' is not an integer ({data[key]!r})"
    for key in GROUP_BY:
        try:
            value = group_value(data, key)
        except (TypeError, AttributeError):
            return f"its {key} cannot be read (a field of the wrong type)"
        if not isinstance(value, _SCALAR):
            return f"its {key} is a {type(value).__name__}, not a name or a number"
    return None


@dataclass
class Skipped:
    """A JSON file under the folder that looked like a log but could not be read as one, and why."""

    path: Path
    reason: str


def scan_records(folder: str | Path) -> tuple[list[Record], list[Skipped]]:
    """Every per-image log under ``folder`` (recursively, sorted by path), and the files that looked like logs
    but were skipped (unreadable, not JSON, fields of the wrong type), each with its reason. JSON files that
    are not logs (tables, model cards) are neither."""
    root = Path(folder)
    records: list[Record] = []
    skipped: list[Skipped] = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as err:
            skipped.append(Skipped(path, f"unreadable ({err.strerror or err})"))
            continue
        except UnicodeDecodeError:
            skipped.append(Skipped(path, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as err:
            skipped.append(Skipped(path, f"not valid JSON ({err.msg} at line {err.lineno})"))
            continue
        except RecursionError:
            skipped.append(Skipped(path, "JSON nested too deeply"))
            continue
        if not looks_like_log(data):
            continue
        why = log_problem(data)
        if why:
            skipped.append(Skipped(path, why))
        else:
            records.append(Record(path, data))
    return records, skipped


def find_records(folder: str | Path) -> list[Record]:
    """Every per-image log under ``folder`` (recursively), sorted by path; other JSON files are ignored."""
    return scan_records(folder)[0]


def number(v: Any) -> float | None:
    """A metric value as a float: ``"inf"`` strings (how logs store infinities) become ``inf``; None stays."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return None
