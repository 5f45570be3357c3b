"""What annotate reads (issue 35): the containers and photo formats of
cage_cli.annotation.io.inputs, each made here from the shared media, give the same faces as their
source; explicit paths are probed by content; folder walks skip by extension and say which files
they skipped."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, MULTI, SINGLE, cage
from PIL import Image, features

from cage_cli.annotation.io.inputs import (
    FORMATS,
    SKIPPED_CONTENT,
    SKIPPED_EXTENSION,
    SKIPPED_TYPESCRIPT,
    discover,
)

FRAMES = 3  # the clip's first frames: its face scores 0.98+ there, well above the threshold
PAD = (62, 120)  # the clip pasted here into DV's fixed 720x576 frame
#: name -> (FFmpeg muxer, encoder, muxer options): what PyAV writes, as cameras and
#: archives do. ts_named.mp4 is MPEG-TS under the wrong extension.
VIDEOS = {
    "clip.ts": ("mpegts", "libx264", {}),
    "clip.mts": ("mpegts", "libx264", {"mpegts_m2ts_mode": "1"}),  # AVCHD's 192-byte packets
    "clip.mpg": ("mpeg", "mpeg1video", {}),  # MPEG-PS
    "clip.wmv": ("asf", "wmv2", {}),
    "clip.flv": ("flv", "flv1", {}),
    "clip.3gp": ("3gp", "mpeg4", {}),
    "clip.mxf": ("mxf", "mpeg2video", {}),
    "clip.dv": ("dv", "dvvideo", {}),
    "ts_named.mp4": ("mpegts", "libx264", {}),
}


def _transcode(src: Path, dst: Path, fmt: str, codec: str, options: dict) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = (720, 576) if codec == "dvvideo" else (596, 336)
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        for i, frame in enumerate(inp.decode(video=0)):
            if i == FRAMES:
                break
            image = frame.to_image()
            if codec == "dvvideo":
                canvas = Image.new("RGB", (720, 576))
                canvas.paste(image, PAD)
                image = canvas
            for packet in stream.encode(av.VideoFrame.from_image(image).reformat(
                    format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _heic(src: Path, dst: Path) -> None:
    """HEIC written by pillow-heif (dev extra; pi-heif, the run-time reader, cannot write)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    with Image.open(src) as im:
        pillow_heif.from_pillow(im.convert("RGB")).save(str(dst), quality=90)


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("formats")
    for name, spec in VIDEOS.items():
        _transcode(CLIP, d / name, *spec)
    assert features.check("avif"), "this Pillow cannot read AVIF (pyproject asks for 11.3+)"
    with Image.open(MULTI) as im:
        im.save(d / "faces.avif", quality=90)
    _heic(MULTI, d / "faces.heic")
    shutil.copy(MULTI, d / "photo_without_extension")
    shutil.copy(CLIP, d / "video_without_extension")
    (d / "notes.txt").write_text("not a photo\n")
    return d


def _faces(table, source: str) -> dict[int, np.ndarray]:
    """Boxes per frame of one source, sorted left to right."""
    rows = [r for r in table.to_pylist() if r["source"] == source]
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(r["frame_index"], []).append([r["x1"], r["y1"], r["x2"], r["y2"]])
    return {k: np.array(sorted(v)) for k, v in out.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_every_format_gives_the_faces_of_its_source(made: Path, tmp_path: Path) -> None:
    explicit = sorted(p for p in made.iterdir())
    out = tmp_path / "out.parquet"
    r = cage("annotate", *explicit, CLIP, MULTI, "--max-frames", FRAMES, "-o", out, "-v")
    assert r.exit_code == 0, r.stderr
    assert f"cage: ignored {made / 'notes.txt'}: {SKIPPED_CONTENT}" in r.stderr
    table = pq.read_table(out)
    media = dict(zip(table["source"].to_pylist(), table["media"].to_pylist(), strict=True))
    clip, photo = _faces(table, str(CLIP)), _faces(table, str(MULTI))
    assert sorted(clip) == list(range(FRAMES)) and len(photo[0]) == 6
    videos = [*VIDEOS, "video_without_extension"]
    for name in videos + ["faces.avif", "faces.heic", "photo_without_extension"]:
        src = str(made / name)
        want = clip if name in videos else photo
        assert media.get(src) == ("video" if name in videos else "image"), name
        got = _faces(table, src)
        assert sorted(got) == sorted(want), f"{name}: faces on frames {sorted(got)}"
        for k, boxes in got.items():
            if name == "clip.dv":
                boxes = boxes - np.array(PAD * 2)
            assert boxes.shape == want[k].shape, f"{name} frame {k}: {len(boxes)} faces"
            worst = min(_iou(a, b) for a, b in zip(boxes, want[k], strict=True))
            assert worst > 0.8, f"{name} frame {k}: {boxes} vs {want[k]}"
    meta = json.loads(pq.read_metadata(out).metadata[b"cage.run"])
    assert meta["files_skipped"] == 1
    assert meta["skipped"] == [{"source": str(made / "notes.txt"), "reason": SKIPPED_CONTENT}]


def test_folder_walk_reads_heic_and_reports_what_it_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    _heic(SINGLE, folder / "IMG_0001.HEIC")
    (folder / "notes.txt").write_text("holiday\n")
    (folder / "app.ts").write_text("const x: number = 1;\n")  # TypeScript, not MPEG-TS
    out = tmp_path / "out.parquet"
    r = cage("annotate", folder, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert re.search(r"files skipped \(not media\) +│ +2 │", r.stderr), r.stderr
    assert "cage: ignored" not in r.stderr  # without --verbose, only the count
    table = pq.read_table(out)
    assert table["source"].to_pylist() == [str(folder / "IMG_0001.HEIC")]
    meta = json.loads(pq.read_metadata(out).metadata[b"cage.run"])
    assert meta["files_skipped"] == 2
    assert meta["skipped"] == [
        {"source": str(folder / "app.ts"), "reason": SKIPPED_TYPESCRIPT},
        {"source": str(folder / "notes.txt"), "reason": SKIPPED_EXTENSION},
    ]
    r = cage("annotate", folder, "-o", tmp_path / "again.parquet", "--verbose", "-q")
    assert r.exit_code == 0
    assert f"cage: ignored {folder / 'notes.txt'}: {SKIPPED_EXTENSION}" in r.stderr
    # render draws on a JPEG copy: Pillow cannot write HEIC
    r = cage("render", out, "-o", f"{tmp_path / 'drawn'}/", "-q")
    assert r.exit_code == 0, r.stderr
    with Image.open(tmp_path / "drawn" / "IMG_0001.jpg") as im, Image.open(SINGLE) as src:
        assert im.size == src.size


def test_explicit_files_are_probed_folders_go_by_extension(made: Path) -> None:
    photo, video = made / "photo_without_extension", made / "video_without_extension"
    walked = discover([str(made)])
    assert {p for p, _ in walked.skipped} == {str(photo), str(video), str(made / "notes.txt")}
    named = discover([str(photo), str(video), str(made / "notes.txt")])
    assert [(f.path, f.media) for f in named.files] == [(str(photo), "image"),
                                                        (str(video), "video")]
    assert named.skipped == [(str(made / "notes.txt"), SKIPPED_CONTENT)]


def test_every_listed_extension_has_a_kind_and_a_reason() -> None:
    for ext, (kind, why) in FORMATS.items():
        assert ext.startswith(".") and ext == ext.lower() and kind in ("image", "video")
        assert len(why) > 3, ext
    for ext in (".mts", ".m2ts", ".ts", ".mpg", ".mpeg", ".wmv", ".asf", ".flv", ".3gp",
                ".ogv", ".mxf", ".dv", ".avif", ".heic", ".heif"):
        assert ext in FORMATS


def test_heif_reader_is_loaded_only_when_a_heif_file_is_seen(made: Path) -> None:
    code = (
        "import sys\n"
        "from cage_cli.annotation.io.decode import load_image\n"
        f"a = load_image({str(MULTI)!r}); b = load_image({str(made / 'faces.avif')!r})\n"
        "assert not {'pi_heif', 'pillow_heif'} & set(sys.modules), 'loaded too early'\n"
        f"h = load_image({str(made / 'faces.heic')!r})\n"
        "assert 'pi_heif' in sys.modules\n"
        "assert h.shape == a.shape == b.shape, (h.shape, a.shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
