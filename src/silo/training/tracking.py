"""Which experiment tracker training logs to: TensorBoard when installed, else JSON lines only, said once."""

from __future__ import annotations

import sys
from importlib.util import find_spec

_NOTED: set[str] = set()


def tensorboard_installed(jsonl: str) -> bool:
    """Whether ``tensorboard`` imports; if not, say once per process on stderr what is logged instead."""
    if find_spec("tensorboard") is not None:
        return True
    if jsonl not in _NOTED:
        _NOTED.add(jsonl)
        print(
            f"silo: note: tensorboard is not installed; training logs go to {jsonl} only "
            "(pip install tensorboard adds TensorBoard logs)",
            file=sys.stderr,
        )
    return False
