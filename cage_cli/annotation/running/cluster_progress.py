"""The progress actor of ``--ray`` runs (cage_cli.annotation.running.cluster), in a module of its
own so that its process starts without importing torch."""

from __future__ import annotations


class Progress:
    """Running counts (frames, faces) per input and segment (its first frame position; 0 for
    a whole input), reported by tasks and taken by the driver; and the node each task runs on
    (by its part tag, or tag:position for a segment), so the driver can say what a lost node
    was running."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], tuple[int, int]] = {}
        self.nodes: dict[str, str] = {}

    def report(self, counts: dict[tuple[str, int], tuple[int, int]],
               where: tuple[str, str] | None = None) -> None:
        self.counts.update(counts)
        if where is not None:
            self.nodes[where[0]] = where[1]

    def take(self) -> tuple[dict[tuple[str, int], tuple[int, int]], dict[str, str]]:
        out, self.counts = self.counts, {}
        nodes, self.nodes = self.nodes, {}
        return out, nodes
