"""Writing results atomically and never over an existing file, so parallel or resumed runs are safe."""

from __future__ import annotations

import io
import json
import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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
