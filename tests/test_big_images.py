"""Photos of any size: oversized files are refused from their header, big photos are
annotated in bounded memory (issue 20)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CLIP, MEDIA, MULTI, NOFACE, ROOT, SINGLE, cage
from PIL import Image, ImageFile
from typer.testing import CliRunner

from cage_cli.annotation.detection.detect import Detector
from cage_cli.annotation.io.decode import DecodeError, Sampling, frames, load_image
from cage_cli.annotation.io.inputs import MediaFile
from cage_cli.cli import app


def huge_png(path: Path, width: int, height: int) -> None:
    """A valid black 1-bit PNG of width x height, a few hundred KB on disk, written in
    strips (never the whole image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    z, parts = zlib.compressobj(9), []
    for y in range(0, height, 1000):
        parts.append(z.compress(row * min(1000, height - y)))
    parts.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def png_441mp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "scan_441mp.png"
    huge_png(path, 21000, 21000)
    return path


def test_oversized_png_is_refused_from_its_header(png_441mp: Path, monkeypatch) -> None:
    """Refused before any pixel is decoded (which would take seconds and 1.3 GB or more):
    PIL's decoding step is never entered (not a wall-clock limit, which a busy machine can
    miss)."""
    assert png_441mp.stat().st_size < 1_000_000
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def load(self):  # noqa: ANN001, ANN202
        loads.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (nor any other)
        with pytest.raises(DecodeError) as e:
            list(frames(MediaFile(str(png_441mp), "image"), Sampling()))
    assert str(e.value) == ("image too large (21000 x 21000 = 441000000 pixels, "
                            "limit --max-pixels 250000000)")
    assert loads == []


def test_folder_with_oversized_png_keeps_other_rows(png_441mp: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / png_441mp.name).symlink_to(png_441mp)
    for p in (SINGLE, MULTI):
        (folder / p.name).symlink_to(p)
    out = tmp_path / "out.parquet"
    r = cage("annotate", folder, "-o", out, "-q")
    assert r.exit_code == 1, r.output
    assert (f"cage: skipped {folder / png_441mp.name}: image too large (21000 x 21000 = "
            "441000000 pixels, limit --max-pixels 250000000)") in r.stderr
    assert "DecompressionBomb" not in r.stderr
    rows = pq.read_table(out).to_pylist()
    counts = {Path(s).name: sum(1 for x in rows if x["source"] == s)
              for s in {x["source"] for x in rows}}
    assert counts == {SINGLE.name: 1, MULTI.name: 6}


def test_max_pixels_option_refuses_photos_and_videos(tmp_path: Path) -> None:
    # single_face 384x381 = 146,304 px; multiface 1200x630 = 756,000; the clip 596x336 =
    # 200,256 per frame.
    out = tmp_path / "out.parquet"
    r = cage("annotate", SINGLE, MULTI, CLIP, "-o", out, "-q", "--max-pixels", "200000")
    assert r.exit_code == 1, r.output
    assert (f"cage: skipped {MULTI}: image too large (1200 x 630 = 756000 pixels, "
            "limit --max-pixels 200000)") in r.stderr
    assert f"cage: skipped {CLIP}: image too large (596 x 336 = 200256 pixels" in r.stderr
    table = pq.read_table(out)
    assert set(table.column("source").to_pylist()) == {str(SINGLE)}
    meta = json.loads(pq.read_schema(out).metadata[b"cage.run"])
    assert meta["options"]["sampling"]["max_pixels"] == 200000
    wide = CliRunner().invoke(app, ["annotate", "--help"], env={"COLUMNS": "200"})
    help_text = " ".join(wide.stdout.split())
    assert "--max-pixels N Skip images and videos" in help_text
    assert "[default: 250000000]" in help_text


def test_only_the_first_frame_of_an_animation_is_read(tmp_path: Path) -> None:
    """A GIF whose frames add up to more than --max-pixels is read, as its first frame."""
    face = Image.open(SINGLE).convert("RGB")
    gif = tmp_path / "anim.gif"
    face.save(gif, save_all=True, append_images=[face.rotate(90)] * 4)
    image = load_image(str(gif), max_pixels=face.width * face.height)  # five would not fit
    assert image.shape == (face.height, face.width, 3)


RSS_SCRIPT = """
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "cage_cli", "annotate", sys.argv[1], "-o",
                    sys.argv[2], "-q"])
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_45_megapixel_photo_in_bounded_memory(tmp_path: Path) -> None:
    width, height = 7680, 5880  # 45.2 MP, the portrait upscaled 3.75x
    photo = tmp_path / "big.jpg"
    with Image.open(MEDIA / "portrait_kate_siegel.jpg") as im:
        im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(
            photo, quality=90)
    out = tmp_path / "out.parquet"
    run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(photo), str(out)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    code, max_rss_kib = (int(v) for v in run.stdout.split())
    assert code == 0, run.stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 1 and rows[0]["frame_width"] == width
    x1, y1, x2, y2 = (rows[0][k] for k in ("x1", "y1", "x2", "y2"))
    assert min(x2 - x1, y2 - y1) > 1000  # the portrait's face, scaled with the photo
    assert max_rss_kib * 1024 <= 1e9 + 12 * width * height  # issue 20's rule: 1.42 GB


def test_out_of_memory_in_detection_skips_only_that_file(tmp_path: Path, monkeypatch) -> None:
    """A MemoryError in a detection worker fails that file; the run and the rest go on."""
    original = Detector._detect_same_size

    def detect(self, images, is_image=False):
        if images[0].shape[:2] == (630, 1200):  # multiface.jpg
            raise MemoryError
        return original(self, images, is_image)

    monkeypatch.setattr(Detector, "_detect_same_size", detect)
    out = tmp_path / "out.parquet"
    r = cage("annotate", SINGLE, MULTI, NOFACE, "-o", out, "-q", "--keep-empty")
    assert r.exit_code == 1, r.output
    assert f"cage: skipped {MULTI}: out of memory while detecting faces" in r.stderr
    sources = pq.read_table(out).column("source").to_pylist()
    assert sorted(sources) == sorted([str(SINGLE), str(NOFACE)])
