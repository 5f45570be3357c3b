"""The progress actor of ``--ray`` runs (cage_cli.cluster), in a module of its own so that its
process starts without importing torch."""

from __future__ import annotations


class Progress:
    """Running counts per input, reported by tasks and taken by the driver."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}

    def report(self, counts: dict[str, tuple[int, int]]) -> None:
        self.counts.update(counts)

    def take(self) -> dict[str, tuple[int, int]]:
        out, self.counts = self.counts, {}
        return out
