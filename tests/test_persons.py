"""--persons and `cage persons`: person ids within a source, descriptors stored once per
track, run-wide linking across sources, crash-safe, every output format."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, MEDIA, MULTI, SINGLE, cage, read
from test_runs import read_folder, run_cli, signal_after_first_part

from cage_cli.annotation.io.read import read_annotations
from cage_cli.schema import SCHEMA

CLIP_FRAMES = ["--max-frames", "30"]


@pytest.fixture(scope="module")
def same_and_different(tmp_path_factory) -> Path:
    """Photos of one person (three frames of the clip, seconds apart) beside photos of other
    people (two portraits, the six-face photo)."""
    d = tmp_path_factory.mktemp("people")
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 50, 100):
                f.to_image().save(d / f"clip_{i}.jpg", quality=92)
    for p in (MEDIA / "portrait_kate_siegel.jpg", MEDIA / "portrait_paul_rudd.jpg", MULTI):
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture(scope="module")
def photo_run(same_and_different: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "faces.parquet"
    r = cage("annotate", same_and_different, "--persons", "-o", out)
    assert r.exit_code == 0, r.stderr
    return out


def test_photos_get_one_person_per_face_and_a_descriptor_each(photo_run: Path) -> None:
    t = read(photo_run)
    assert t.schema.metadata[b"cage.schema_version"] == b"3"
    assert t.num_rows == 3 + 2 + 6
    assert t.column("person_id").to_pylist() == t.column("face_index").to_pylist()
    emb = t.column("embedding").to_pylist()
    assert all(e is not None and len(e) == 128 for e in emb)
    assert all(1.2 < np.linalg.norm(e) < 1.8 for e in emb)  # faceapi-recognition's norms


def test_cage_persons_links_the_same_person_and_keeps_others_apart(
        photo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "persons.csv"
    r = cage("persons", photo_run, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "9 persons" in r.stdout  # the clip's person, two portraits, six faces
    p = pa.csv.read_csv(out)
    assert p.column_names == ["source", "frame_index", "face_index", "person"]
    assert p.num_rows == 11
    person = {(Path(s).name, f): q for s, f, q in zip(
        *(p.column(c).to_pylist() for c in ("source", "face_index", "person")), strict=True)}
    clip = {person[(f"clip_{i}.jpg", 0)] for i in (0, 50, 100)}
    assert len(clip) == 1
    others = [q for (name, _), q in person.items() if not name.startswith("clip_")]
    assert len(set(others)) == len(others) == 8 and clip.isdisjoint(others)
    # A stricter threshold splits, never merges more
    strict = tmp_path / "strict.parquet"
    assert cage("persons", photo_run, "-o", strict, "--threshold", "0.05").exit_code == 0
    assert len(set(pq.read_table(strict).column("person").to_pylist())) == 11
    # and the table is not replaced without --overwrite
    r = cage("persons", photo_run, "-o", out)
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def test_cage_persons_needs_person_ids(tmp_path: Path) -> None:
    out = tmp_path / "plain.parquet"
    assert cage("annotate", SINGLE, "-o", out).exit_code == 0
    r = cage("persons", out, "-o", tmp_path / "p.parquet")
    assert r.exit_code == 2 and "--persons" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> pa.Table:
    out = tmp_path_factory.mktemp("clip") / "clip.parquet"
    r = cage("annotate", CLIP, SINGLE, "--persons", *CLIP_FRAMES, "-o", out)
    assert r.exit_code == 0, r.stderr
    return read(out)


def test_video_tracks_share_persons_and_store_one_descriptor_per_track(
        clip_run: pa.Table) -> None:
    video = clip_run.filter(pa.compute.equal(clip_run.column("media"), "video"))
    assert video.num_rows >= 28
    assert video.column("person_id").null_count == 0
    assert set(video.column("person_id").to_pylist()) == {0}  # one person in the clip
    tracks = video.column("track_id").to_pylist()
    has = [e is not None for e in video.column("embedding").to_pylist()]
    # exactly one descriptor per track, on the track's first row
    firsts = {t: i for i, t in reversed(list(enumerate(tracks)))}
    assert sum(has) == len(set(tracks))
    assert all(has[i] for i in firsts.values())


def test_without_persons_nothing_biometric_is_computed(tmp_path: Path) -> None:
    out = tmp_path / "plain.parquet"
    assert cage("annotate", CLIP, *CLIP_FRAMES, "-o", out).exit_code == 0
    t = read(out)
    assert t.column("person_id").null_count == t.num_rows
    assert t.column("embedding").null_count == t.num_rows


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_text_outputs_keep_person_ids_and_descriptors(clip_run: pa.Table, tmp_path: Path,
                                                      ext: str) -> None:
    out = tmp_path / f"clip.{ext}"
    r = cage("annotate", CLIP, SINGLE, "--persons", *CLIP_FRAMES, "-o", out)
    assert r.exit_code == 0, r.stderr
    got = read_annotations(out)
    assert got.schema.equals(SCHEMA)
    assert got.column("person_id").to_pylist() == clip_run.column("person_id").to_pylist()
    assert got.column("embedding").to_pylist() == clip_run.column("embedding").to_pylist()


def test_stdout_has_person_ids(tmp_path: Path) -> None:
    r = cage("annotate", SINGLE, "--persons", "-o", "-")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and len(rows) == 1
    assert rows[0]["person_id"] == 0 and len(rows[0]["embedding"]) == 128


def test_kill_then_resume_gives_the_same_person_ids(tmp_path: Path) -> None:
    media = tmp_path / "in"
    media.mkdir()
    for p in (SINGLE, MULTI, CLIP, MEDIA / "portrait_kate_siegel.jpg"):
        (media / p.name).symlink_to(p)
    ref = tmp_path / "ref.parquet"
    assert cage("annotate", media, "--persons", *CLIP_FRAMES, "-o", ref).exit_code == 0
    out = tmp_path / "out"
    proc = run_cli(media, "--persons", *CLIP_FRAMES, "-o", f"{out}/",
                   "--frames-per-batch", "2", "--part-seconds", "0")
    signal_after_first_part(proc, out, signal.SIGKILL)
    r = cage("annotate", media, "--persons", *CLIP_FRAMES, "-o", f"{out}/", "--resume")
    assert r.exit_code == 0, r.stderr
    key = ["source", "frame_index", "face_index"]
    got = read_folder(out).sort_by([(k, "ascending") for k in key])
    want = read(ref).sort_by([(k, "ascending") for k in key])
    for col in (*key, "track_id", "person_id"):
        assert got.column(col).to_pylist() == want.column(col).to_pylist(), col
    # descriptors too, exactly: on a CPU they do not depend on how faces were batched
    assert got.column("embedding").to_pylist() == want.column("embedding").to_pylist()


def test_a_bad_embedding_model_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    from cage_cli.models import registry

    bad = tmp_path / "broken.bin"  # an absolute path: WEIGHTS_DIR / bad is bad
    bad.write_bytes(b"not a model")
    cfg = registry.get_config("faceapi-recognition")
    monkeypatch.setitem(registry._REGISTRY, cfg.name,  # noqa: SLF001
                        dataclasses.replace(cfg, weights=str(bad)))
    r = cage("annotate", SINGLE, "--persons", "-o", tmp_path / "x.parquet")
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken.bin" in lines[0] and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def two_people_cut(tmp_path_factory) -> tuple[Path, list[int]]:
    """Hard cuts at irregular frames between two people: short_clip.mp4 (one face) and a
    portrait seen through a drifting window."""
    import cut_video
    from cut_video import _source, panned

    size = (596, 336)
    path = tmp_path_factory.mktemp("cut2") / "two_people.mp4"
    sources = [_source(CLIP, size, None), panned(MEDIA / "portrait_paul_rudd.jpg", size)]
    return path, cut_video.build(path, MEDIA, [13, 8, 17, 11, 22, 9, 14], size, 25, sources)


@pytest.mark.parametrize("fps", [None, 2.0])
def test_cut_video_shots_of_each_person_share_one_person_id(two_people_cut, tmp_path: Path,
                                                            fps: float | None) -> None:
    path, starts = two_people_cut
    out = tmp_path / "cut.parquet"
    args = ["--fps", str(fps)] if fps else []
    r = cage("annotate", path, "--persons", *args, "-o", out)
    assert r.exit_code == 0, r.stderr
    t = read(out).to_pydict()
    shot_of = [int(np.searchsorted(starts, f, side="right")) - 1 for f in t["frame_index"]]
    if fps is None:
        assert t["shot"] == shot_of  # every cut found, at the right frame
    spans: dict[int, set[int]] = {}
    for tid, shot in zip(t["track_id"], shot_of, strict=True):
        spans.setdefault(tid, set()).add(shot)
    assert all(len(s) == 1 for s in spans.values()), spans  # no track spans a cut
    person_of_shot: dict[int, set[int]] = {}
    for pid, shot in zip(t["person_id"], shot_of, strict=True):
        person_of_shot.setdefault(shot, set()).add(pid)
    assert len(person_of_shot) == 7  # a face in every shot (a sampled frame falls in each)
    assert all(len(p) == 1 for p in person_of_shot.values()), person_of_shot
    clip = {p for s, ps in person_of_shot.items() if s % 2 == 0 for p in ps}
    portrait = {p for s, ps in person_of_shot.items() if s % 2 == 1 for p in ps}
    assert clip == {0} and portrait == {1}  # two persons, numbered by first appearance


def test_appearance_ends_a_track_that_boxes_would_carry_onto_someone_else(
        same_and_different: Path) -> None:
    """Two keyframes, the same box: without descriptors the tracker continues the track; with
    the descriptors of two different people (real faces) it starts a new one, and with two of
    one person it continues."""
    import torch
    from PIL import Image

    from cage_cli.annotation.detection import track
    from cage_cli.annotation.detection.detect import DetectOptions, Detector
    from cage_cli.annotation.identity.embed import embed_faces

    detector = Detector(DetectOptions(), torch.device("cpu"), None)
    faces = {}
    for name in ("clip_0.jpg", "clip_100.jpg", "portrait_paul_rudd.jpg"):
        image = np.asarray(Image.open(same_and_different / name).convert("RGB"))
        d = detector.submit([image], [True], [True], None).get()[0]
        faces[name] = embed_faces([image], d.landmarks[:1], boxes=d.boxes[:1])
    box = np.array([[100, 100, 200, 220]], np.float32)
    marks = np.full((1, 5, 2), np.nan, np.float32)

    def second_id(first: str | None, then: str | None) -> int:
        state = track.TrackState()
        track.update(state, 0.0, box, marks, None, None if first is None else faces[first])
        return int(track.update(state, 0.2, box, marks, None,
                                None if then is None else faces[then])[1][0])

    assert second_id(None, None) == 0
    assert second_id("clip_0.jpg", "clip_100.jpg") == 0  # one person: the track goes on
    assert second_id("clip_0.jpg", "portrait_paul_rudd.jpg") == 1  # someone else: new track


def test_persons_does_not_import_pandas(tmp_path: Path) -> None:
    """pa.array() and pyarrow's numpy conversions import pandas when it is installed (0.2 s
    of CPU a run): --persons reads and builds its columns from Arrow buffers instead."""
    import subprocess
    import sys

    pytest.importorskip("pandas")
    code = ("import sys\nfrom cage_cli.cli import app\n"
            f"app(['annotate', {str(CLIP)!r}, {str(SINGLE)!r}, '--persons', '--max-frames', "
            f"'10', '-q', '-o', {str(tmp_path / 'out.parquet')!r}], standalone_mode=False)\n"
            "assert 'pandas' not in sys.modules, 'pandas was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    assert read(tmp_path / "out.parquet").column("person_id").null_count == 0
