"""Headless Chromium for page tests (Debian's `chromium` + `chromium-driver`, selenium).

``missing()`` says why no browser can be started (tests skip with it); ``chromium(downloads)``
starts one with a fresh profile, downloads going into ``downloads`` without a prompt, and the
DevTools network log on (``network_urls``). ``many_crops`` makes a large `cage export`
dataset out of a small one (tests/test_review_page.py, benchmarks/review_page.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe, pkg in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if not shutil.which(exe):
            return f"{exe} not found (apt-get install -y {pkg})"
    return None


def chromium(downloads: Path, width: int = 1280, height: int = 900):
    """A headless Chromium (selenium WebDriver) with a fresh profile; quit() it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download drivers
    profile = tempfile.mkdtemp(prefix="cage-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False})
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    quit_ = driver.quit

    def quit_and_clean() -> None:
        quit_()
        shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def network_urls(driver) -> list[str]:
    """The URLs pages requested since the last call (DevTools Network.requestWillBeSent),
    leaving out those of Chromium's own pages (its new-tab page, chrome://...)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent" and not msg["params"].get(
                "documentURL", "").startswith(("chrome://", "chrome-untrusted://")):
            urls.append(msg["params"]["request"]["url"])
    return urls


def many_crops(dataset: Path, out: Path, n: int) -> Path:
    """A dataset of ``n`` crops made of ``dataset``'s (hard links under new names), with
    confidences spread over [0, 1), 40 tracks per video and person ids 0-4."""
    from cage_cli.export.prelabel import read_manifest, write_manifest

    (out / "images").mkdir(parents=True)
    shutil.copy(dataset / "export.json", out)
    _, rows = read_manifest(dataset)
    many = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        name = f"images/crop_{i:05d}.jpg"
        os.link(dataset / r["image"], out / name)
        r.update(image=name, confidence=(i * 7919 % n) / n, rejected=False)
        if r["track_id"] is not None:
            r["track_id"] = i % 40
        r["person_id"] = i % 5  # as `cage annotate --persons` gives it
        many.append(r)
    write_manifest(out / "manifest.csv", many)
    return out
