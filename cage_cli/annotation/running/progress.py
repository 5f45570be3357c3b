"""Progress bar and end-of-run summary on stderr (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .pipeline import Result
from .runner import Summary


class RunProgress:
    """Files done / total, frames, faces and faces/s. Silent when disabled."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.frames = self.faces = 0
        self._t0 = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]annotating"), BarColumn(), MofNCompleteColumn(),
            TextColumn("files  {task.fields[stats]}"), TimeElapsedColumn(),
            console=console, transient=False, disable=not enabled,
        )
        self._task = self._progress.add_task("files", total=None, stats="")

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        self._t0 = time.monotonic()
        self._progress.update(self._task, total=total)

    def update(self, result: Result) -> None:
        self.frames += result.frames
        self.faces += result.faces
        rate = self.faces / max(time.monotonic() - self._t0, 1e-9)
        self._progress.update(
            self._task, advance=1 if result.done else 0,
            stats=f"{self.frames} frames  {self.faces} faces  {rate:.1f} faces/s",
        )

    def log(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_summary(console: Console, s: Summary) -> None:
    table = Table(title="cage annotate", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("files ok", s.files_ok),
        ("files failed", s.files_failed),
        ("files skipped (not media)", s.files_skipped),
    ]
    if s.files_resumed:
        rows.append(("files done earlier (resumed)", s.files_resumed))
    rows += [
        ("frames", s.frames),
        ("faces", s.faces),
        ("wall time", f"{s.seconds:.1f} s" + (f" ({s.load_seconds:.1f} s loading models)"
                                               if s.load_seconds >= 0.5 else "")),
        ("faces/s", f"{s.faces_per_s:.1f}"),
        ("output", s.output),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
