"""The runner every front door calls (``silo restore``, ``silo evaluate``, the Python API, the web page):
inputs, models, settings, batching, result identity, atomic writes and resume."""

from silo.runs.evaluate import EvaluateConfig, evaluate
from silo.runs.items import Inputs, collect, tensor_items
from silo.runs.models import Models
from silo.runs.restore import RestoreConfig, restore_inputs
from silo.runs.runner import Report, Request, RunOptions, Setup, run

__all__ = [
    "EvaluateConfig",
    "Inputs",
    "Models",
    "Report",
    "Request",
    "RestoreConfig",
    "RunOptions",
    "Setup",
    "collect",
    "evaluate",
    "restore_inputs",
    "run",
    "tensor_items",
]
