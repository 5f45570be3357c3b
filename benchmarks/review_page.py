"""How the `cage review` page copes with many crops, in headless Chromium (tests/browser.py).

    python benchmarks/review_page.py                      # 500, 2,000 and 10,000 crops
    python benchmarks/review_page.py --sizes 2000 --repeat 5

The crops of a small export (examples/: 2 photos and the clip's first 6 frames, 13 faces)
are linked under new names into datasets of N crops (tests/browser.py ``many_crops``). Per N:
seconds `cage review` takes to write the page and the page's size; then, in the page, the
time from navigation until its first tiles are in (``data-ready``, the page's own clock),
until selenium's ``get`` returns (the load event), until a key press is answered on screen
(selenium round trips included) and until all tiles are in (they go in in chunks); the
images loaded when the key was answered (lazy loading) and the milliseconds a filter change
takes to show its first tiles. Medians over ``--repeat`` openings. Prints a markdown table
and writes benchmarks/results/review_page.json and review_page.md.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))
from browser import chromium, many_crops, missing, network_urls  # noqa: E402

from cage_cli.export.review_page import write_review_page  # noqa: E402


def small_export(tmp: Path) -> Path:
    media = tmp / "media"
    media.mkdir()
    for name in ("single_face.jpg", "multiface.jpg", "short_clip.mp4"):
        (media / name).symlink_to(ROOT / "examples" / name)
    cage = [sys.executable, "-m", "cage_cli"]
    subprocess.run([*cage, "annotate", media, "-o", tmp / "faces.parquet", "--max-frames", "6",
                    "-q"], check=True)
    subprocess.run([*cage, "export", tmp / "faces.parquet", "-o", tmp / "ds", "-q"], check=True)
    return tmp / "ds"


def measure(driver, page: Path) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains

    network_urls(driver)
    driver.get("about:blank")
    t0 = time.perf_counter()
    driver.get(page.as_uri())
    while not driver.execute_script("return document.body.dataset.ready"):
        time.sleep(0.01)
    get_s = time.perf_counter() - t0
    ready_ms = int(driver.execute_script("return document.body.dataset.ready"))
    first = driver.execute_script("return document.querySelector('.tile').dataset.image")
    ActionChains(driver).send_keys("2").perform()
    while driver.execute_script(
            f"return document.querySelector('.tile[data-image=\"{first}\"]').dataset.answer")\
            != "happy":
        time.sleep(0.01)
    key_s = time.perf_counter() - t0
    while not driver.execute_script("return document.body.dataset.complete"):
        time.sleep(0.01)
    all_s = time.perf_counter() - t0
    images = sum("/images/" in u for u in network_urls(driver))
    filter_ms = driver.execute_script(
        "const s = document.getElementById('f-person'); s.value = 'P1';"
        "const t = performance.now(); s.dispatchEvent(new Event('change'));"
        "return performance.now() - t")
    driver.execute_script("localStorage.clear()")
    return {"ready_ms": ready_ms, "get_s": get_s, "key_s": key_s, "all_s": all_s,
            "images": images, "filter_ms": filter_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="500,2000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if missing():
        sys.exit(f"benchmarks/review_page.py: {missing()}")
    tmp = Path(tempfile.mkdtemp(prefix="cage-review-bench-"))
    ds = small_export(tmp)
    driver = chromium(tmp / "downloads")
    results = []
    try:
        for n in (int(s) for s in a.sizes.split(",")):
            big = many_crops(ds, tmp / f"n{n}", n)
            t = time.perf_counter()
            page = write_review_page(big)
            write_s = time.perf_counter() - t
            runs = [measure(driver, page.resolve()) for _ in range(a.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]
                   if runs[0][k] is not None}
            results.append({"crops": n, "write_s": write_s,
                            "page_mb": page.stat().st_size / 2**20, **med, "runs": runs})
    finally:
        driver.quit()
    head = ("| crops | write page (s) | page (MB) | first tiles (ms) | opened (s) | key "
            "answered (s) | all tiles in (s) | images loaded | filter (ms) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head] + [
        f"| {r['crops']} | {r['write_s']:.2f} | {r['page_mb']:.2f} | {r['ready_ms']:.0f} | "
        f"{r['get_s']:.2f} | {r['key_s']:.2f} | {r['all_s']:.2f} | {r['images']:.0f} | "
        f"{r['filter_ms']:.0f} |" for r in results]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    import platform

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "repeat": a.repeat,
            "browser": driver.capabilities.get("browserVersion")}
    (RESULTS / "review_page.json").write_text(json.dumps({**meta, "results": results},
                                                          indent=2) + "\n")
    (RESULTS / "review_page.md").write_text(
        f"benchmarks/review_page.py (Chromium {meta['browser']}, headless; medians of "
        f"{a.repeat}; {meta['cpus']} CPUs, load average {meta['load_average'][0]:.0f} at the "
        f"end: a shared machine)\n\n{table}\n")


if __name__ == "__main__":
    main()
