"""One training per output folder: a lock file holding the owner's host and process id.

Two trainings writing one operator folder would interleave checkpoints, logs and the exported weights, and
a resume would pick up the other run's state. The owner holds an exclusive ``flock`` on the lock file for
as long as it runs: the operating system drops it when the process ends, however it ends (SIGKILL, a crash),
so a lock file left behind is stale by construction and the next run takes it over with a note. The file's
content (host, process id, start time) only names the owner in messages. Where ``fcntl`` is missing, the
file is created exclusively instead and a lock whose process no longer runs on this host is stale.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from silo.errors import SiloError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None

LOCK_FILE = ".silo-train.lock"


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal still runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrainingLock:
    """``acquire()`` or a one-line :class:`SiloError` naming the running owner; ``release()`` removes it."""

    def __init__(self, folder: str | Path, command: str = "silo train-operator") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.command = command
        self.fd: int | None = None
        self.made_folder = False  # created for the lock: removed with it while still empty

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _owner(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _busy(self, owner: dict) -> SiloError:
        pid, started = owner.get("pid", "unknown"), owner.get("started", "at an unknown time")
        return SiloError(
            f"another training (process {pid} on {owner.get('host', 'this host')}, started {started}) "
            f"is writing {self.path.parent}: wait for it to finish, or choose another --output-dir"
        )

    def acquire(self) -> TrainingLock:
        self.made_folder = not self.path.parent.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SiloError(f"cannot create the output folder {self.path.parent}: {err.strerror or err}") from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
        }
        try:
            if fcntl is not None:
                self._acquire_flock(me)
            else:  # pragma: no cover - not a POSIX system
                self._acquire_exclusive(me)
        except BaseException:
            self._remove_made_folder()
            raise
        return self

    def _acquire_flock(self, me: dict) -> None:
        for _ in range(50):  # the file was replaced between opening and locking it: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise SiloError(f"cannot create {self.path}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(self._owner()) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False  # its owner removed it as it finished
            if not same:
                os.close(fd)
                continue
            before = self._owner()
            if before.get("pid") is not None:
                print(
                    f"{self.command}: took over a stale lock {self.path} (process {before.get('pid')} no longer runs)",
                    file=sys.stderr,
                )
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            self.fd = fd
            return
        raise SiloError(f"cannot take the lock {self.path}: other trainings keep replacing it")

    def _acquire_exclusive(self, me: dict) -> None:  # pragma: no cover - not a POSIX system
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid = owner.get("pid")
                if owner.get("host") not in (None, me["host"]) or (isinstance(pid, int) and _alive(pid)):
                    raise self._busy(owner) from None
                print(
                    f"{self.command}: took over a stale lock {self.path} (process {pid} no longer runs)",
                    file=sys.stderr,
                )
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            os.write(fd, json.dumps(me).encode())
            self.fd = fd
            return
        raise SiloError(f"cannot take the lock {self.path}: other trainings keep creating it")

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no other run locks a file about to vanish)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)
        self._remove_made_folder()

    def __del__(self) -> None:  # a trainer dropped without finishing (set up in Python, never trained)
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def _remove_made_folder(self) -> None:
        if self.made_folder:
            try:
                self.path.parent.rmdir()  # only while empty: a run that failed before writing leaves nothing
            except OSError:
                pass
