"""``annotate_to``: run the pipeline into an output, with resume, shards, errors and signals."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from ... import __version__
from ...schema import SCHEMA_VERSION
from ..io.inputs import Inputs, discover, in_shard
from ..io.store import UriPath, one_line, redact
from ..io.write import (
    PARTIAL_SUFFIX,
    DatasetWriter,
    OutputError,
    StdoutWriter,
    check_writable,
    merge_parts,
    output_format,
    output_location,
    read_done,
    remove_tree,
    write_json_atomic,
)
from . import cluster
from .cluster import RayOptions
from .pipeline import AnnotateOptions, Pipeline, Result, RunOptions

#: The run metadata names at most this many of the files left out as not media (all are
#: counted in ``files_skipped``).
MAX_SKIPPED_LISTED = 1000


@dataclass
class Summary:
    files_ok: int = 0
    files_failed: int = 0
    files_skipped: int = 0  # not media files
    files_resumed: int = 0  # done by an earlier run (--resume)
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0  # wall time in all
    load_seconds: float = 0.0  # of which: loading the models
    interrupted: str | None = None  # "SIGINT" | "SIGTERM"
    errors: list[dict] = field(default_factory=list)
    output: str = ""
    resume_hint: str | None = None

    @property
    def faces_per_s(self) -> float:
        """Faces per second of annotation (model loading not counted)."""
        work = self.seconds - self.load_seconds
        return self.faces / work if work > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130 if self.interrupted == "SIGINT" else 143
        return 1 if self.files_failed else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_info(options: AnnotateOptions, weights_sha256: str | None) -> dict:
    """What the output's metadata records about the run; resume compares these."""
    return {
        "tool": "cage",
        "tool_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "model": options.model,
        "weights_sha256": weights_sha256,
        # Through JSON, so a fresh run compares equal to one read back from disk.
        "options": json.loads(json.dumps(dataclasses.asdict(options))),
    }


def _same_run(old: dict, new: dict) -> str | None:
    """None if ``old`` and ``new`` describe the same rows; else what differs."""
    diffs = []
    for key in ("model", "weights_sha256", "schema_version"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)} -> {new.get(key)}")
    oo, no = old.get("options", {}), new.get("options", {})
    for key in sorted(set(oo) | set(no)):
        if oo.get(key) != no.get(key):
            diffs.append(f"{key} {oo.get(key)} -> {no.get(key)}")
    return "; ".join(diffs) or None


class _Signals:
    """SIGINT/SIGTERM: ask the pipeline to stop; a second signal exits at once."""

    def __init__(self, on_stop: Callable[[str], None]):
        self.on_stop = on_stop
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        name = signal.Signals(signum).name
        if self.received:
            raise SystemExit(130 if signum == signal.SIGINT else 143)
        self.received = name
        self.on_stop(name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def annotate_to(
    inputs: Iterable[str],
    output: str,
    options: AnnotateOptions = AnnotateOptions(),
    run: RunOptions = RunOptions(),
    fmt: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
    errors_file: str | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    found: Inputs | None = None,
    part_seconds: float = 30.0,
    ray: RayOptions | None = None,
) -> Summary:
    """Annotate ``inputs`` into ``output`` (file, folder/ or '-'). Raises OutputError for
    problems the user must fix before anything runs; bad input files are reported, not raised.

    With ``ray`` (cage_cli.annotation.running.cluster.RayOptions) the work runs as tasks on a Ray
    cluster that write the part files themselves; everything else is the same.
    """
    started = time.monotonic()
    started_at = _now()
    kind = output_format(output, fmt)
    found = found if found is not None else discover(inputs)
    files = [f for f in found.files if in_shard(f.path, shard)] if shard[1] > 1 else found.files
    summary = Summary(files_skipped=len(found.skipped), output=output)
    if kind != "dataset" and shard[1] > 1:
        raise OutputError("--shard needs a folder output (-o out_dir/), one part set per shard")
    if kind == "jsonl" and output == "-" and resume:
        raise OutputError("--resume needs a file or folder output, not stdout")
    if ray is not None and (output == "-" or shard[1] > 1):
        raise OutputError("--ray needs a file or folder output, and no --shard")

    # Where the parts go, and what an earlier run already finished.
    tag = f"s{shard[0]}of{shard[1]}" if ray is None else cluster.TAG
    parts = tag if ray is None else f"{tag}*"  # Ray tasks write part-ray<hash>-<seq>
    final: Path | UriPath | None = None
    if kind == "dataset":
        folder = output_location(output)
    elif output != "-":
        final = output_location(output)
        folder = final.with_name(final.name + PARTIAL_SUFFIX)
    manifest = folder / f"_cage_run-{tag}.json" if output != "-" else None
    output = summary.output = redact(output)  # messages never show a URI's credentials

    with _output_errors(output):
        if final is not None and final.exists() and not overwrite:
            if resume and not folder.exists():
                log(f"cage: {output} is already complete; nothing to resume")
                summary.seconds = time.monotonic() - started
                return summary
            if not resume:
                raise OutputError(f"{output} exists; use --overwrite to replace it")
        if output != "-":
            _prepare_folder(folder, parts, manifest, kind, resume, overwrite, output)  # type: ignore[arg-type]

    loading = time.monotonic()
    pipeline = (Pipeline(options, run) if ray is None
                else cluster.RayPipeline(options, run, ray, log))
    summary.load_seconds = time.monotonic() - loading
    if ray is not None:
        try:
            pipeline.connect()  # a cluster that cannot be used: one line, before any output
        except OutputError:
            with contextlib.suppress(OSError):
                if final is not None and not any(folder.iterdir()):  # made by this run
                    remove_tree(folder)
            raise
    info = run_info(options, pipeline.model.weights_sha256)
    done_before: dict[str, dict] = {}
    next_seq = 0
    with _output_errors(output):
        if resume and manifest is not None and manifest.exists():
            old = json.loads(manifest.read_text())
            diff = _same_run(old, info)
            if diff:
                raise OutputError(f"cannot resume {output}: the run used other settings "
                                  f"({diff})")
            d = read_done(folder, parts)
            done_before, next_seq = d.sources, d.next_seq
            info["started"] = old.get("started", started_at)
        else:
            info["started"] = started_at
        info["shard"] = f"{shard[0]}/{shard[1]}"
        if manifest is not None:
            write_json_atomic(manifest, info)

    todo = [f for f in files if f.path not in done_before]
    summary.files_resumed = len(files) - len(todo)
    errors_out: IO[str] | None = open(errors_file, "a", encoding="utf-8") if errors_file else None

    def report_error(source: str, reason: str) -> None:
        summary.errors.append({"source": source, "error": reason})
        log(f"cage: skipped {source}: {reason}")
        if errors_out:
            errors_out.write(json.dumps({"source": source, "error": reason}) + "\n")
            errors_out.flush()

    for path, reason in found.warnings:
        log(f"cage: warning: {path}: {reason}")
    for path, reason in found.errors:
        summary.files_failed += 1
        report_error(path, reason)

    writer: DatasetWriter | StdoutWriter | cluster.WrittenByWorkers
    if ray is not None:
        writer, results = cluster.WrittenByWorkers(), pipeline.run(todo, folder, info)
    elif output == "-":
        writer, results = StdoutWriter(), pipeline.run(todo)
    else:
        writer = DatasetWriter(folder, tag, info, next_seq, part_seconds=part_seconds)
        results = pipeline.run(todo)
    if on_start:
        on_start(len(todo))

    with _Signals(lambda name: pipeline.stop.set()) as signals:
        try:
            for result in results:
                writer.add(result)
                summary.frames += result.frames
                summary.faces += result.faces
                if result.done:
                    if result.error and not (signals.received and result.error == "interrupted"):
                        summary.files_failed += 1
                        report_error(result.source, result.error)
                    else:
                        summary.files_ok += 1
                if on_result:
                    on_result(result)
        except BrokenPipeError:
            raise  # the reader of stdout left (`-o - | head`): the caller stops quietly
        except OSError as e:
            raise OutputError(f"cannot write {output}: {one_line(e)}", exit_code=1) from None
        finally:
            pipeline.close()
            if isinstance(writer, DatasetWriter):
                try:
                    writer.close()
                except OSError:
                    pass
            if errors_out:
                errors_out.close()
            if ray is not None:
                results.close()  # type: ignore[union-attr] - cancels the tasks in flight
        summary.interrupted = signals.received

    summary.seconds = time.monotonic() - started
    if summary.interrupted:
        summary.resume_hint = f"cage annotate ... -o {output} --resume"
        return summary
    if manifest is not None:
        try:
            part_files = (sorted(folder.glob(f"part-{tag}-*.parquet")) if ray is None
                          else cluster.drop_duplicates(folder))
            all_errors = [
                {"source": s, "error": e["error"]}
                for s, e in read_done(folder, parts).sources.items() if e.get("error")
            ]
            info.update(finished=_now(), errors=all_errors, files_skipped=summary.files_skipped,
                        skipped=[{"source": p, "reason": why}
                                 for p, why in found.skipped[:MAX_SKIPPED_LISTED]])
            write_json_atomic(manifest, info)
            if final is not None:
                merge_parts(part_files, final, kind, info)
        except OSError as e:
            raise OutputError(f"cannot write {output}: {one_line(e)}; the finished "
                              f"rows are kept in {folder}/ (use --resume)", 1) from None
        if final is not None:
            remove_tree(folder)
    return summary


@contextlib.contextmanager
def _output_errors(output: str):  # noqa: ANN202
    """An OSError while preparing the output (a URI's bucket missing, no credentials, no
    permission) is a usage error of one line (exit 2)."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot use output {output}: {one_line(e)}") from None


def _prepare_folder(folder: Path | UriPath, tag: str, manifest: Path | UriPath, kind: str,
                    resume: bool, overwrite: bool, output: str) -> None:
    """Check (at start, before any work) that the parts folder can be used as asked."""
    ours = list(folder.glob(f"part-{tag}-*.parquet")) + ([manifest] if manifest.exists() else [])
    if ours and not resume:
        if not overwrite:
            if kind == "dataset":
                raise OutputError(f"{output} already holds a run; use --resume to continue it "
                                  "or --overwrite to start again")
            raise OutputError(f"an interrupted run left {folder}/; use --resume to continue it "
                              "or --overwrite to start again")
        for p in ours:
            p.unlink()
    if kind == "dataset" and not resume and not overwrite and folder.exists():
        others = [p for p in folder.iterdir() if not p.name.startswith(("_cage_run", "part-"))
                  and not p.name.startswith(".")]
        if others:
            raise OutputError(f"{output} is a folder with other files in it; "
                              "choose an empty or new folder")
    check_writable(folder)
    for tmp in folder.glob(f".part-{tag}-*.tmp"):  # left by a killed run
        tmp.unlink()
