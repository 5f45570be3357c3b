"""CPU worker threads shared by detection and classification.

On a CPU, cage runs its compute in a few threads with one torch thread each instead of one
thread with several intra-op torch threads: MTCNN's small operators scale poorly over intra-op
threads, and two sets of intra-op threads side by side (detection and classification) spin
against each other. Measured on 2 cores in docs/performance.md.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - imported where used, so `cage --help` stays quick
    import torch


class Workers(ThreadPoolExecutor):
    """``n`` threads, each running torch with one intra-op thread."""

    def __init__(self, n: int):
        import torch

        super().__init__(n, "cage-worker", torch.set_num_threads, (1,))
        self.n = n


def cpu_workers(device: torch.device | str, threads: int | None = None) -> Workers | None:
    """Workers for a CPU run (``threads`` of them, default torch's thread count); None on an
    accelerator or with one thread, where work runs in the calling thread."""
    import torch

    n = threads or torch.get_num_threads()
    return Workers(n) if torch.device(device).type == "cpu" and n > 1 else None


class Results:
    """Results of work items, in order: already computed, or futures still running."""

    def __init__(self, values: list | None = None, futures: list[Future] | None = None,
                 flat: bool = False):
        self._values, self._futures, self._flat = values, futures, flat

    @classmethod
    def map(cls, pool: ThreadPoolExecutor | None, fn: Callable, *items: list,
            flat: bool = False) -> Results:
        """``fn`` over the items, in the pool if there is one, else here and now. With
        ``flat``, each call returns a list and ``get`` joins them."""
        if pool is None:
            return cls(values=list(map(fn, *items)), flat=flat)
        return cls(futures=[pool.submit(fn, *args) for args in zip(*items, strict=True)],
                   flat=flat)

    def done(self) -> bool:
        return self._futures is None or all(f.done() for f in self._futures)

    def get(self) -> list:
        """Wait for every result."""
        out = self._values if self._futures is None else [f.result() for f in self._futures]
        return [x for part in out for x in part] if self._flat else out


def _libc() -> ctypes.CDLL | None:
    """glibc, or None on other C libraries (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist
        return libc
    except (OSError, AttributeError):
        return None


_glibc = _libc()
#: mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap, not from a mapping of their own...
MMAP_THRESHOLD = 32 * 2**20
#: ...and free memory at the heap's top is handed back only past this
TRIM_THRESHOLD = 64 * 2**20


def tune_malloc() -> None:
    """Keep freed heap memory for reuse during a run. Detection allocates and frees hundreds
    of MiB of 1-35 MiB blocks a frame (frames, MTCNN's pyramid); with glibc's defaults these
    are mapped and unmapped, or trimmed, and every reuse page-faults again: on interview.mp4
    965k page faults, 1.8 s of system time in 12 s of CPU (docs/performance.md, "Memory")."""
    if _glibc is not None:
        _glibc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _glibc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def release_memory() -> None:
    """Hand freed heap memory back to the OS (after a file: a big photo's detection memory,
    326 MiB after a 51 MP photo, is not kept for the next one)."""
    if _glibc is not None:
        _glibc.malloc_trim(0)
