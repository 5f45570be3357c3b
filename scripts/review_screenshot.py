"""Screenshot of a `cage review` page in the test browser (headless Chromium, tests/browser.py),
after answering it as a reviewer would: click a crop, press its key.

    python scripts/review_screenshot.py ds/ docs/img/review_page.jpg --answers answers.csv \
        --menu images/short_clip_f000009_00.jpg

``--answers``: a CSV of ``image,reviewed_label`` (the docs' answers.csv) to press in;
``--menu IMAGE``: leave that crop's menu open.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import chromium, missing  # noqa: E402

KEYS = {"ok": "a", "reject": "x", "neutral": "1", "happy": "2", "sad": "3", "surprise": "4",
        "fear": "5", "disgust": "6", "anger": "7", "contempt": "8"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--answers", type=Path)
    ap.add_argument("--menu", metavar="IMAGE")
    ap.add_argument("--size", default="1280x860", metavar="WxH")
    a = ap.parse_args()
    if missing():
        sys.exit(f"cannot take the screenshot: {missing()}")
    subprocess.run(["cage", "review", str(a.dataset)], check=True, stdout=subprocess.DEVNULL)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    w, h = (int(v) for v in a.size.split("x"))
    d = chromium(Path(tempfile.mkdtemp()), w, h)
    try:
        d.get((a.dataset / "review.html").resolve().as_uri())

        def tile(image: str):
            el = d.find_element(By.CSS_SELECTOR, f'.tile[data-image="{image}"]')
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
            return el

        rows = list(csv.DictReader(open(a.answers, newline=""))) if a.answers else []
        for r in rows:
            tile(r["image"]).click()
            ActionChains(d).send_keys(KEYS[r["reviewed_label"].lower()]).perform()
        d.execute_script("window.scrollTo(0, 0)")
        first_open = d.execute_script(
            "return [...document.querySelectorAll('.tile')].find(e => !e.dataset.answer)"
            ".dataset.image")
        d.execute_script("arguments[0].click()", tile(first_open))
        if a.menu:
            el = tile(a.menu)
            d.execute_script("window.scrollTo(0, 0)")
            d.execute_script("arguments[0].click()", el.find_element(By.CSS_SELECTOR, ".more"))
        time.sleep(0.5)  # the toasts fade out
        d.execute_script("document.getElementById('toast').classList.remove('show')")
        png = d.get_screenshot_as_png()
    finally:
        d.quit()
    if a.out.suffix.lower() in (".jpg", ".jpeg"):  # photos: a tenth of the PNG's size
        import io

        from PIL import Image

        Image.open(io.BytesIO(png)).convert("RGB").save(a.out, quality=88, optimize=True)
    else:
        a.out.write_bytes(png)
    print(a.out)


if __name__ == "__main__":
    main()
