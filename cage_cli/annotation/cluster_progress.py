"""The progress actor of ``--ray`` runs (cage_cli.annotation.cluster), in a module of its own
so that its process starts without importing torch."""

from __future__ import annotations


class Progress:
    """Running counts (frames, faces) per input and segment (its first frame position; 0 for
    a whole input), reported by tasks and taken by the driver."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], tuple[int, int]] = {}

    def report(self, counts: dict[tuple[str, int], tuple[int, int]]) -> None:
        self.counts.update(counts)

    def take(self) -> dict[tuple[str, int], tuple[int, int]]:
        out, self.counts = self.counts, {}
        return out
