"""The writer's cost by output kind: a local path, a ``file://`` URI, and ``s3://`` on moto's S3
server on 127.0.0.1 (no network); and the local path with another checkout's writer.

    python benchmarks/uri_writer.py [--baseline /work/main] [--rounds 5]
        [--out benchmarks/results/uri_writer.json]

Rows of a real run (short_clip.mp4, 30 frames) are repeated into 100 inputs of 200 rows
(20,000 rows). Each case, in a process of its own, writes them the way ``annotate_to`` does:
``DatasetWriter`` parts of 2,000 rows (10 parts), then ``merge_parts`` into one Parquet file;
it reports the seconds of that (not imports or reading the rows). Rounds are interleaved;
the median and the fastest are shown (a local path's fsyncs vary a lot on a shared disk).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS, ROWS_EACH, PART_ROWS = 100, 200, 2000


def case(rows_file: str, target: str) -> float:
    """One run of the writer into ``target`` (a folder path or URI with ``{}`` where a name
    goes); seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cage_cli.annotation.io.write import DatasetWriter, merge_parts
    from cage_cli.annotation.running.pipeline import Result

    base = pq.read_table(rows_file)
    reps = -(-ROWS_EACH // base.num_rows)
    one = pa.concat_tables([base] * reps).slice(0, ROWS_EACH).combine_chunks()
    batches = [one.set_column(0, one.schema.field(0), pa.array([f"in{i:03d}.mp4"] * ROWS_EACH))
               .to_batches()[0] for i in range(INPUTS)]
    try:
        from cage_cli.annotation.io.write import output_location
        folder = output_location(target.format("parts/"))
        final = output_location(target.format("faces.parquet"))
    except ImportError:  # a checkout before URI outputs: local paths only
        folder, final = Path(target.format("parts")), Path(target.format("faces.parquet"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    writer = DatasetWriter(folder, "s0of1", {"tool": "cage"}, part_rows=PART_ROWS)
    for i, b in enumerate(batches):
        writer.add(Result(f"in{i:03d}.mp4", "video", b, frames=1, done=True))
    writer.close()
    n = merge_parts(writer.parts, final, "parquet", {"tool": "cage"})
    seconds = time.perf_counter() - start
    assert (n, len(writer.parts)) == (INPUTS * ROWS_EACH, INPUTS * ROWS_EACH // PART_ROWS), (
        n, len(writer.parts))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="another checkout: its writer on a local path too")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/uri_writer.json"))
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # ROWS TARGET (subprocess)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(*args.case)))
        return

    from moto.server import ThreadedMotoServer
    from pyarrow.fs import S3FileSystem

    tmp = Path(tempfile.mkdtemp(prefix="uri_writer."))
    rows = tmp / "rows.parquet"
    subprocess.run([sys.executable, "-m", "cage_cli", "annotate", str(ROOT / "examples" /
                    "short_clip.mp4"), "--max-frames", "30", "-o", str(rows), "-q"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    S3FileSystem(access_key="k", secret_key="s", endpoint_override=f"{host}:{port}",
                 scheme="http", allow_bucket_creation=True).create_dir("bkt")
    cases = {"local path": (ROOT, lambda r: f"{tmp}/local{r}/{{}}"),
             "file:// URI": (ROOT, lambda r: f"file://{tmp}/uri{r}/{{}}"),
             "s3:// on moto (127.0.0.1)": (ROOT, lambda r: f"s3://k:s@bkt/r{r}/{{}}?endpoint_"
                                           f"override={host}:{port}&scheme=http")}
    if args.baseline:
        cases[f"local path, {args.baseline}"] = (Path(args.baseline),
                                                 lambda r: f"{tmp}/base{r}/{{}}")
    times: dict[str, list[float]] = {name: [] for name in cases}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, (repo, target) in cases.items():
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--case",
                                  str(rows), target(r)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
            times[name].append(json.loads(out.stdout.splitlines()[-1]))
    load.append(os.getloadavg()[0])
    server.stop()
    result = {"rows": INPUTS * ROWS_EACH, "parts": INPUTS * ROWS_EACH // PART_ROWS,
              "rounds": args.rounds, "load_avg": load,
              "seconds": {k: statistics.median(v) for k, v in times.items()}, "all": times}
    local = result["seconds"]["local path"]
    print(f"{result['rows']} rows, {result['parts']} parts + merge; median of {args.rounds} "
          f"rounds; load average {load[0]:.1f} -> {load[1]:.1f}")
    print("| output | median s | x local path | fastest s |\n|---|---|---|---|")
    for name, s in result["seconds"].items():
        print(f"| {name} | {s:.3f} | {s / local:.2f} | {min(times[name]):.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
