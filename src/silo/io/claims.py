"""Claims on results, so that several runs writing into one folder split the work instead of racing for it.

Before a run restores a result it creates ``.STEM.claim`` beside it with ``O_CREAT | O_EXCL`` (atomic on
local and network file systems), holding its pid, host and the time. Another run that meets the claim leaves
that result alone while the claim is live. A claim is stale when its process is gone (same host: the pid
no longer runs) or when it has not been refreshed for :data:`STALE_SECONDS` (any host: the holder refreshes it
while it samples); a stale claim is taken over under a folder lock, and only then are the result's leftovers
(images without a log, hidden temporary files) removed: nothing a live run is writing is ever touched.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from silo.errors import SiloError

#: a claim not refreshed for this long is stale whatever its host says (the holder refreshes it every
#: :data:`REFRESH_SECONDS` while it samples)
STALE_SECONDS = 15 * 60
REFRESH_SECONDS = 30
CLAIM_SUFFIX = ".claim"
_LOCK_NAME = ".silo-claims.lock"
_OURS: set[Path] = set()  # the claims this process holds


@dataclass
class Holder:
    """Who holds a claim, as its file says."""

    pid: int
    host: str
    started: float

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {time.strftime('%H:%M:%S', time.localtime(self.started))}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def read_holder(path: Path) -> Holder | None:
    """The claim's holder, or None if the file is gone or unreadable (a claim cut short when written)."""
    try:
        data = json.loads(path.read_text())
        return Holder(int(data["pid"]), str(data["host"]), float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(path: Path, holder: Holder | None, now: float | None = None) -> bool:
    """Whether a claim's run is gone: its pid is dead on this host, or it was not refreshed for
    :data:`STALE_SECONDS`; an unreadable claim counts by its age alone."""
    now = time.time() if now is None else now
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > STALE_SECONDS:
        return True
    if holder is None:
        return age > REFRESH_SECONDS  # a claim being written is readable within moments
    if holder.host == socket.gethostname():
        if holder.pid == os.getpid():  # ours only if this process made it (a container reuses pids)
            return path not in _OURS
        return not _pid_alive(holder.pid)
    return False


class Claim:
    """This run's claim on one result: :meth:`refresh` while working, :meth:`release` when done."""

    def __init__(self, path: Path):
        self.path = path
        _OURS.add(path)
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """Mark the claim live (cheap; at most every :data:`REFRESH_SECONDS`)."""
        if time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = time.monotonic()
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        _OURS.discard(self.path)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _create(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    _OURS.add(path)  # from its first byte, so that release_all gives it back even if this run is stopped now
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
    except BaseException:
        _OURS.discard(path)
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def release_all() -> None:
    """Give back every claim this process holds (a run stopped by Ctrl-C or SIGTERM, wherever it was)."""
    for path in list(_OURS):
        _OURS.discard(path)
        path.unlink(missing_ok=True)


def claim(log: Path, images: list[Path]) -> Claim | Holder | None:
    """Claim the result whose log is ``log``: a :class:`Claim`; the :class:`Holder` of a live claim by another
    run; or None if the result is finished (its log exists). Once the claim is ours, the result's images
    (``images``: there is no log, so they are leftovers of a run that stopped) and the hidden temporary files
    of its writes are removed.

    Raises SiloError (one line) if the folder cannot take the claim file (read-only, full, ...).
    """
    path = log.with_name(f".{log.name.removesuffix('.json')}{CLAIM_SUFFIX}")
    taken_from: Holder | None = None
    try:
        try:
            _create(path)
        except FileExistsError:
            holder = read_holder(path)
            if not is_stale(path, holder):
                return holder or Holder(-1, "?", time.time())
            from filelock import FileLock

            with FileLock(str(path.parent / _LOCK_NAME)):  # one run at a time breaks a stale claim
                holder = read_holder(path)
                if path.exists() and not is_stale(path, holder):
                    return holder or Holder(-1, "?", time.time())
                path.unlink(missing_ok=True)
                _create(path)
            taken_from = holder or Holder(-1, "?", 0.0)
    except FileExistsError:
        return read_holder(path) or Holder(-1, "?", time.time())
    except OSError as err:
        raise SiloError(f"{path.parent}: cannot write here ({err.strerror or err})") from None
    mine = Claim(path)
    try:
        if log.exists():  # finished by another run between the caller's check and our claim
            mine.release()
            return None
        removed = _remove_leftovers(log, images)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) before the caller holds the claim: give it back
        mine.release()
        raise
    if removed:
        import sys

        who = f" (pid {taken_from.pid} on {taken_from.host} stopped before finishing it)" if taken_from else ""
        print(
            f"silo: removed {len(removed)} incomplete leftover file(s) of {log.name.removesuffix('.json')}{who}",
            file=sys.stderr,
        )
    return mine


def tidy_finished(log: Path, images: list[Path]) -> None:
    """A finished result (its log exists) whose run was killed before it gave the claim back: the stale claim
    and the hidden temporary files of its writes go; its finished files stay. A live claim is left alone."""
    path = log.with_name(f".{log.name.removesuffix('.json')}{CLAIM_SUFFIX}")
    if not path.exists() or not is_stale(path, read_holder(path)):
        return
    from filelock import FileLock

    with FileLock(str(path.parent / _LOCK_NAME)):
        if path.exists() and is_stale(path, read_holder(path)):
            import glob

            for target in [log, *images]:  # temporary files only: the images belong to the finished result
                for tmp in log.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
                    tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def _remove_leftovers(log: Path, images: list[Path]) -> list[Path]:
    """A result's images without a log and the hidden temporary files of its writes (the claim is ours)."""
    import glob

    removed = []
    for p in images:
        if p.exists():
            p.unlink()
            removed.append(p)
    for target in [log, *images]:
        for tmp in log.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
