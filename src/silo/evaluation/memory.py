"""Peak memory of a block of work: CUDA's max-allocated counter, or the process's resident set on a CPU.

On CUDA the peak is exact (``torch.cuda.max_memory_allocated`` after a reset). A CPU process has no
resettable peak (``ru_maxrss`` only grows), so a background thread samples the current resident set
(``/proc/self/statm``) every few milliseconds; freed memory is first handed back to the OS
(``malloc_trim``) so an earlier, larger run does not mask a later one. Both include the models' weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import sys
import threading
import time
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int | None:
    """Resident set size of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def max_rss() -> int:
    """The process's lifetime peak resident set in bytes (``resource``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def release_memory(device: torch.device) -> None:
    """Collect garbage and return freed memory to the OS / driver before a measurement."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Context manager: ``result()`` gives the peak bytes during the block and how they were measured."""

    def __init__(self, device: torch.device | str, interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak: int | None = None
        self.start: int | None = None
        self._stop = threading.Event()
        self._paused = False
        self._lock = threading.Lock()  # no sample lands once a pause has begun
        self._cuda_floor = 0  # CUDA: the peak before a paused block reset the counter
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = current_rss()
            self.peak = self.start
            if self.start is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._paused:
                    self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss

    @contextlib.contextmanager
    def paused(self):
        """A block whose memory does not count towards the peak (a reference op timed beside the work)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            before = torch.cuda.max_memory_allocated(self.device)
            try:
                yield
            finally:
                synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                self._cuda_floor = max(self._cuda_floor, before)
            return
        with self._lock:
            self._sample()
            self._paused = True
        try:
            yield
        finally:
            with self._lock:
                self._paused = False

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = max(torch.cuda.max_memory_allocated(self.device), self._cuda_floor)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._sample()

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda_max_allocated"
        return "cpu_peak_rss" if self.start is not None else "unavailable"

    def result(self) -> dict[str, Any]:
        return {"peak_memory_bytes": self.peak, "memory_at_start_bytes": self.start, "memory_kind": self.kind}
