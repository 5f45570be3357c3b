"""Video decoding: PyAV frames equal decord's, sampling seeks, rotation, bounded memory."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from conftest import CLIP, INTERVIEW, SINGLE
from PIL import Image

from cage_cli.annotation.io import decode
from cage_cli.annotation.io.decode import Sampling, frames
from cage_cli.annotation.io.inputs import MediaFile


def _decord_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    n = len(vr)
    return vr.get_batch(list(range(n))).asnumpy(), vr.get_frame_timestamp(list(range(n)))[:, 0]


def _write(path: Path, images: list[np.ndarray], gop: int = 10) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("h264", rate=25, options={"g": str(gop)})
        s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for im in images:
            c.mux(s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.mark.parametrize("video", [CLIP, INTERVIEW], ids=["short_clip", "interview"])
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(every=7), Sampling(fps=1),
                                      Sampling(start=1.5, max_frames=5)],
                         ids=["all", "every7", "fps1", "start"])
def test_frames_equal_decords(video: Path, sampling: Sampling) -> None:
    ref, ts = _decord_frames(video)
    got = list(frames(MediaFile(str(video), "video"), sampling))
    expected = {"all": len(ref), "every7": -(-len(ref) // 7), "fps1": 5, "start": 5}
    key = ("all" if sampling == Sampling() else "every7" if sampling.every == 7 else
           "fps1" if sampling.fps else "start")
    assert len(got) == expected[key]
    if key == "start":
        assert got[0].index == int(np.searchsorted(ts, 1.5 - 1e-6))
    for f in got:
        assert np.array_equal(f.image, ref[f.index]), f.index
        assert f.timestamp == pytest.approx(float(ts[f.index]), abs=1e-6)


@pytest.mark.parametrize("video", [CLIP, INTERVIEW], ids=["short_clip", "interview"])
def test_timestamps_are_exact(video: Path) -> None:
    """Each frame's time is PTS x time base in float64, exactly PyAV's ``frame.time`` (not
    decord's float32 seconds: 0.03999999910593033 for 0.04), so joins on it work."""
    with av.open(str(video)) as c:
        assert not c.streams.video[0].start_time  # both start at 0: times from the start
        expected = [f.time for f in c.decode(video=0)]
    got = [f.timestamp for f in frames(MediaFile(str(video), "video"))]
    assert got == expected
    assert got[1] == 0.04 and len(got) == {CLIP: 115, INTERVIEW: 105}[video]


def test_sparse_sampling_seeks_between_keyframes(tmp_path: Path, monkeypatch) -> None:
    """A 40 s video with a keyframe every 10 frames, sampled once every 10 s: the frames are
    the right ones, and reading them does not decode the whole video."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(20)]
    path = _write(tmp_path / "long.mp4", images * 50, gop=10)  # 1000 frames
    ref, _ = _decord_frames(path)
    decoded: list[int] = []  # every frame the decoder produced (counted, not timed)
    real_index = decode._frame_index

    def frame_index(*args):  # noqa: ANN002, ANN202
        decoded.append(real_index(*args))
        return decoded[-1]

    monkeypatch.setattr(decode, "_frame_index", frame_index)
    sparse = list(frames(MediaFile(str(path), "video"), Sampling(fps=0.1)))
    n_sparse = len(decoded)
    n_all = sum(1 for _ in frames(MediaFile(str(path), "video"), Sampling()))
    assert [f.index for f in sparse] == [0, 250, 500, 750] and n_all == 1000
    assert all(np.array_equal(f.image, ref[f.index]) for f in sparse)
    assert n_sparse <= 4 * 10 and len(decoded) == n_sparse + 1000  # a GOP per wanted frame


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_videos_are_upright(tmp_path: Path, degrees: int) -> None:
    """A phone video stored sideways with a display matrix: frames come out as displayed."""
    upright = np.asarray(Image.open(SINGLE).convert("RGB").resize((96, 64)))
    # The matrix rotates the stored pixels by `degrees` clockwise for display.
    stored = np.ascontiguousarray(np.rot90(upright, degrees // 90))
    path = _write(tmp_path / "rotated.mp4", [stored] * 3)
    data = bytearray(path.read_bytes())
    i = data.index(b"tkhd")
    offset = i + 4 + (36 if data[i + 4] == 1 else 24) + 16  # tkhd v0/v1 -> matrix
    a, b = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    data[offset : offset + 36] = struct.pack(">9i", a * 65536, b * 65536, 0, -b * 65536,
                                             a * 65536, 0, 0, 0, 0x40000000)
    path.write_bytes(data)
    got = list(frames(MediaFile(str(path), "video")))
    assert len(got) == 3 and got[0].image.shape == upright.shape

    def error(a: np.ndarray) -> float:
        return float(np.abs(got[0].image.astype(int) - a).mean())

    assert error(upright) < 8  # H.264 is lossy; upside down is far worse:
    assert error(np.rot90(upright, 2)) > 3 * error(upright)
    ref, _ = _decord_frames(path)  # decord applies the rotation as well
    assert np.array_equal(got[0].image, ref[0])


def test_slow_consumer_does_not_buffer_the_video(tmp_path: Path) -> None:
    """Memory stays bounded when frames are taken slowly: the decoder does not run ahead
    (decord's own reader decodes the rest of the video in the background meanwhile)."""
    big = np.asarray(Image.open(SINGLE).convert("RGB").resize((1280, 720)))
    path = _write(tmp_path / "hd.mp4", [big] * 120, gop=250)  # 120 x 2.6 MB of RGB

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    it = frames(MediaFile(str(path), "video"))
    next(it)
    before = rss_mib()
    for _ in range(5):
        time.sleep(0.2)  # a slow detector
        next(it)
    assert threading.active_count() >= 1
    assert rss_mib() - before < 100  # the whole video would be about 316 MiB


def test_a_seek_that_overshoots_falls_back_to_decoding_in_order(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Containers with imprecise indexes can land past the wanted frame: the frames still
    come out right (decoded from the start, no more seeking)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(10)]
    path = _write(tmp_path / "v.mp4", images * 12, gop=10)  # 120 frames, keyframe every 10
    ref, _ = _decord_frames(path)
    real_seek = decode._seek

    def late_seek(container, offset, stream):  # lands 2 s (50 frames) later
        late = int(2 / float(stream.time_base)) if offset > 0 else 0
        real_seek(container, offset + late, stream)
        seeks.append(offset)

    seeks: list[int] = []
    monkeypatch.setattr(decode, "_seek", late_seek)  # not PyAV's class: immutable on 3.10
    got = list(frames(MediaFile(str(path), "video"), Sampling(start=1.0, max_frames=3)))
    assert [f.index for f in got] == [25, 26, 27]
    assert all(np.array_equal(f.image, ref[f.index]) for f in got)
    assert seeks[0] > 0 and seeks[1:] == [0]  # one late seek, then from the start, in order
