"""Writing results atomically and never over an existing file, so parallel or resumed runs are safe."""

from __future__ import annotations

import io
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from silo.errors import SiloError


def write_new(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; fail (SiloError) if ``path`` exists, even under a race.

    The bytes go to a temporary file in the same folder, which is then hard-linked to the final name
    (``link`` refuses to replace an existing file) and removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result is shared like any file the user writes
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:  # a full disk: the error names the result's file, not a descriptor
            raise OSError(err.errno, err.strerror, str(path)) from None
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise SiloError(f"{path}: already exists; not overwritten") from None
        except OSError:  # file systems without hard links: best effort, still atomic
            if path.exists():
                raise SiloError(f"{path}: already exists; not overwritten") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


TMP_SUFFIX = ".tmp"
#: the longest file name most file systems take, in bytes
NAME_MAX = 255
#: bytes a result's file names add to its stem: ``.STEM_grid.png.XXXXXXXX.tmp`` (the temporary file)
NAME_OVERHEAD = len(".") + len("_grid.png") + len(".XXXXXXXX") + len(TMP_SUFFIX)


@lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask (read by setting and restoring it, once: it does not change during a run)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def safe_name(text: str) -> str:
    """``text`` as one file-name component: letters, digits, ``-``, ``_`` and ``.`` kept, everything else
    (``/``, spaces, ``..`` at the start) replaced, so a name from a file or a task can never become a path."""
    import re

    out = re.sub(r"\.{2,}", "_", "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)))
    if out.strip(".") == "" or out.startswith("."):
        out = "_" + out.lstrip(".")  # no hidden files, no "." or ".."
    return out or "_"


def fit_stem(stem: str, budget: int | None = None) -> str:
    """``stem`` shortened so that every file of its result (image, grid, log, temporary file) stays within
    :data:`NAME_MAX` bytes: cut at a character boundary and tagged with a hash of the whole stem, so two long
    names that share their beginning still differ."""
    import hashlib

    budget = NAME_MAX - NAME_OVERHEAD if budget is None else budget
    if len(stem.encode()) <= budget:
        return stem
    tag = "~" + hashlib.sha256(stem.encode()).hexdigest()[:8]
    out = ""
    for c in stem:
        if len((out + c + tag).encode()) > budget:
            break
        out += c
    return out + tag


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """JSON-safe values: infinities and NaN become the strings 'inf', '-inf', 'nan'."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()


def write_group(files: dict[Path, bytes]) -> list[Path]:
    """Write several new files for one result; if any fails, remove the ones written, so no partial result."""
    written: list[Path] = []
    try:
        for path, data in files.items():
            written.append(write_new(path, data))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
