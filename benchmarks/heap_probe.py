"""What holds the memory of an annotate run: RSS against glibc's heap, per result piece.

    python benchmarks/heap_probe.py VIDEO [MAX_FRAMES]

Runs the Pipeline API on one video and prints, after each result piece: frames done, RSS,
the bytes malloc has handed out and not yet got back ("live"), the heap's extent ("heap":
what glibc holds from the OS outside single mmapped blocks) and each arena's extent and free
bytes (malloc_info), plus peaks sampled every 10 ms. Live flat while heap grows means
fragmentation, not data kept (docs/performance.md, "Memory"). glibc only (Linux).
"""

from __future__ import annotations

import ctypes
import re
import resource
import sys
import threading
import time

MiB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = _MallInfo2
libc.open_memstream.restype = ctypes.c_void_p
libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MiB


def heap() -> dict[str, float]:
    """MiB: live (malloc'd, mmapped blocks included) and heap extent (arenas)."""
    m = libc.mallinfo2()
    return {"live": (m.uordblks + m.hblkhd) / MiB, "heap": m.arena / MiB}


def arenas() -> str:
    """Each arena's extent/free bytes in MiB (arena 0 is the main thread's brk heap)."""
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    libc.malloc_info(0, f)
    libc.fclose(f)
    out = []
    for nr, body in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', buf.value.decode(), re.S):
        cur = int(re.search(r'<system type="current" size="(\d+)"', body).group(1))
        free = int(re.search(r'<total type="rest" count="\d+" size="(\d+)"', body).group(1))
        if cur:
            out.append(f"{nr}:{cur // MiB}/{free // MiB}")
    return " ".join(out)


def main(path: str, max_frames: int | None) -> None:
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import MediaFile
    from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline

    pipeline = Pipeline(AnnotateOptions(sampling=Sampling(max_frames=max_frames)))
    print(f"start: rss {rss_mib():.0f} MiB, {heap()}")
    peak = {"rss": 0.0, "live": 0.0, "heap": 0.0}

    def sample() -> None:
        while True:
            now = {"rss": rss_mib(), **heap()}
            for k in peak:
                peak[k] = max(peak[k], now[k])
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    print("| frames | RSS | live | heap | peak RSS | peak live | peak heap | arenas extent/free |")
    print("|---|---|---|---|---|---|---|---|")
    n, start = 0, time.perf_counter()
    for r in pipeline.run([MediaFile(path, "video")]):
        n += r.frames
        h = heap()
        print(f"| {n} | {rss_mib():.0f} | {h['live']:.0f} | {h['heap']:.0f} | "
              f"{peak['rss']:.0f} | {peak['live']:.0f} | {peak['heap']:.0f} | {arenas()} |",
              flush=True)
    took = time.perf_counter() - start
    print(f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"{n / took:.2f} frames/s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
