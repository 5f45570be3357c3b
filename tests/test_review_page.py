"""`cage review`: the review page in a real headless Chromium, driven as a reviewer drives it
(keys, clicks, the menu, a reload, the download), then the download applied with
`cage export --apply-review`; a 2,000-crop page; nothing requested over the network."""

from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import pytest
from browser import chromium, many_crops, missing, network_urls
from conftest import CLIP, MULTI, SINGLE, cage

from cage_cli.export.prelabel import read_manifest, write_manifest
from cage_cli.schema import EXPRESSIONS

NO_BROWSER = missing()
needs_browser = pytest.mark.skipif(NO_BROWSER is not None, reason=f"browser tests: {NO_BROWSER}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A `cage export` of 2 photos (7 faces) and the clip's first 6 frames (one track)."""
    media = tmp_path_factory.mktemp("media")
    for p in (SINGLE, MULTI, CLIP):
        (media / p.name).symlink_to(p)
    root = tmp_path_factory.mktemp("review")
    ann = root / "faces.parquet"
    r = cage("annotate", media, "-o", ann, "--max-frames", 6, "-q")
    assert r.exit_code == 0, r.stderr
    r = cage("export", ann, "-o", root / "ds", "-q", "--split", "train=0.7,test=0.3")
    assert r.exit_code == 0, r.stderr
    return root / "ds"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if NO_BROWSER:
        pytest.skip(f"browser tests: {NO_BROWSER}")
    downloads = tmp_path_factory.mktemp("downloads")
    driver = chromium(downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


def open_page(driver, page: Path) -> None:
    network_urls(driver)  # drop what the browser loaded before (its start page)
    driver.get(page.resolve().as_uri())
    wait(driver, lambda: driver.execute_script("return document.body.dataset.ready"))


def all_in(driver) -> None:
    """Wait until every tile is in the page (they go in in chunks)."""
    wait(driver, lambda: driver.execute_script("return document.body.dataset.complete"))


def wait(driver, ok, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while True:
        v = ok()
        if v or time.monotonic() > end:
            assert v, "timed out"
            return v
        time.sleep(0.02)


def keys(driver, *ks: str, shift: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    if shift:
        chain.key_down(Keys.SHIFT)
    for k in ks:
        chain.send_keys(k)
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def tiles(driver) -> list[str]:
    """The shown tiles' ``data-image``, in page order."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.tile')].map(e => e.dataset.image)")


def answers(driver) -> dict[str, str]:
    return driver.execute_script(
        "const o = {}; for (const e of document.querySelectorAll('.tile')) "
        "if (e.dataset.answer) o[e.dataset.image] = e.dataset.answer; return o")


def focused(driver) -> str:
    return driver.execute_script("return document.querySelector('.tile.focus').dataset.image")


def tile(driver, image: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'.tile[data-image="{image}"]')


def click(driver, element) -> None:
    """Scroll an element to the middle of the window (as a reader would), then click it."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def js_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_review_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    r = cage("review", tmp_path)
    assert r.exit_code == 2
    assert r.stderr.strip() == f"cage: error: {tmp_path}: not a `cage export` dataset (no " \
                               "export.json)"
    assert not (tmp_path / "review.html").exists()


def test_review_open_opens_the_page(dataset: Path, monkeypatch) -> None:
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    r = cage("review", dataset, "--open")
    assert r.exit_code == 0, r.stderr
    page = dataset / "review.html"
    assert r.stdout.strip() == str(page) and page.is_file()
    assert opened == [page.resolve().as_uri()]


@needs_browser
def test_review_by_keyboard_save_and_apply(dataset: Path, browser, tmp_path: Path) -> None:
    d = browser
    assert cage("review", dataset).exit_code == 0
    _, manifest = read_manifest(dataset)
    by_image = {m["image"]: m for m in manifest}
    open_page(d, dataset / "review.html")
    shown = tiles(d)
    assert sorted(shown) == sorted(by_image) and len(shown) == 13
    confs = [round(by_image[i]["confidence"], 4) for i in shown]  # as the page has them
    assert confs == sorted(confs)  # the uncertain ones first
    assert focused(d) == shown[0]
    # The tile says what the model said, and where the crop comes from.
    clip = sorted(i for i in shown if i.startswith("images/short_clip"))
    text = tile(d, clip[1]).text
    m = by_image[clip[1]]
    percent = math.floor(100 * round(m["confidence"], 4) + 0.5)  # as the page rounds
    assert m["machine_label"] in text and f"{percent}%" in text
    assert "short_clip.mp4" in text and f"frame {m['frame_index']}" in text
    assert f"{m['timestamp_s']:.2f} s" in text and "track 0" in text

    # The group photo alone (Source filter): relabel, reject, accept twice, a label then undo.
    choose(d, "f-source", by_image[next(i for i in shown if "multiface" in i)]["source"])
    group = tiles(d)
    assert len(group) == 6 and all("multiface" in i for i in group)
    first = by_image[group[0]]["machine_label"]
    new = next(e for e in ("surprise", "disgust") if e != first)
    keys(d, str(EXPRESSIONS.index(new) + 1))
    assert focused(d) == group[1]  # answered, on to the next
    keys(d, "x", "a", "\ue007")  # reject, accept, Enter = accept
    keys(d, "7")
    assert answers(d)[group[4]] == "anger" and focused(d) == group[5]
    keys(d, "u")  # undo: the answer goes, the focus comes back
    assert group[4] not in answers(d) and focused(d) == group[4]
    keys(d, "\ue012", "1")  # left arrow, then neutral over the earlier accept
    assert answers(d) == {group[0]: new, group[1]: "reject", group[2]: "ok",
                          group[3]: "neutral"}

    # The clip's track (Track filter): shift + key answers all 6 crops, undo takes all back.
    choose(d, "f-source", "")
    track = d.execute_script(
        "return document.querySelector('#f-track option:nth-child(2)').value")
    choose(d, "f-track", track)
    assert sorted(tiles(d)) == clip and len(clip) == 6
    click(d, tile(d, clip[3]))
    assert focused(d) == clip[3]
    keys(d, "2", shift=True)
    assert {i: answers(d).get(i) for i in clip} == dict.fromkeys(clip, "happy")
    keys(d, "u")
    assert not any(i in answers(d) for i in clip)
    # The same by mouse: the menu, "all 6 crops of track 0" ticked, happy.
    click(d, tile(d, clip[3]).find_element("css selector", ".more"))
    d.find_element("id", "m-track").click()
    d.find_element("css selector", '#menu button[data-v="happy"]').click()
    assert {i: answers(d).get(i) for i in clip} == dict.fromkeys(clip, "happy")
    click(d, tile(d, clip[2]))
    keys(d, "x")  # one crop of the track on its own
    # The mouse: the single photo's menu.
    choose(d, "f-track", "")
    single = next(i for i in shown if "single_face" in i)
    click(d, tile(d, single))
    click(d, tile(d, single).find_element("css selector", ".more"))
    d.find_element("css selector", '#menu button[data-v="surprise"]').click()
    want = {group[0]: new, group[1]: "reject", group[2]: "ok", group[3]: "neutral",
            **dict.fromkeys(clip, "happy"), clip[2]: "reject", single: "surprise"}
    assert answers(d) == want
    assert "11 / 13 answered" in d.find_element("id", "count").text

    # Closing the page loses nothing; ? shows the keys.
    d.refresh()
    wait(d, lambda: d.execute_script("return document.body.dataset.ready"))
    assert answers(d) == want
    keys(d, "?")
    assert d.find_element("id", "help").is_displayed()
    assert "--apply-review review-answers.csv" in d.find_element("id", "help").text
    keys(d, "\ue00c")  # Escape
    assert not d.find_element("id", "help").is_displayed()

    # Save: the download holds the answered crops only, in the format apply-review reads.
    keys(d, "s")
    saved = d.downloads / "review-answers.csv"
    wait(d, saved.is_file)
    time.sleep(0.3)
    rows = read_csv(saved)
    assert list(rows[0]) == ["image", "reviewed_label"]
    assert {r["image"]: r["reviewed_label"] for r in rows} == want and len(rows) == 11
    assert js_errors(d) == []
    urls = network_urls(d)
    assert urls and all(u.startswith(dataset.resolve().as_uri() + "/") for u in urls), urls

    r = cage("export", "--apply-review", saved, dataset)
    assert r.exit_code == 0, r.stderr
    relabelled = sum(v not in ("ok", "reject") and v != by_image[k]["machine_label"]
                     for k, v in want.items())
    line = " ".join(r.stderr.split())
    assert f"{relabelled} relabelled, {9 - relabelled} confirmed, 2 rejected (11 crops " \
           "changed); 2 crops without an answer keep their labels" in line
    _, after = read_manifest(dataset)
    for m in after:
        v = want.get(m["image"])
        assert m["rejected"] == (v == "reject"), m["image"]
        assert m["label_source"] == ("machine" if v in (None, "reject") else "human")
        label = by_image[m["image"]]["label"] if v in (None, "ok", "reject") else v
        assert m["label"] == label and m["expression"] == EXPRESSIONS.index(label)
    labelled = {r["image"]: r for s in ("train", "test") for r in read_csv(dataset / f"{s}.csv")}
    assert set(labelled) == set(by_image) - {group[1], clip[2]}
    assert labelled[single]["expression_name"] == "surprise"
    assert labelled[clip[0]]["expression_name"] == "happy"
    r = cage("export", "--apply-review", saved, dataset)  # again: the counts say so
    assert "(as before: nothing changed)" in " ".join(r.stderr.split())


@needs_browser
def test_photos_only_with_a_parquet_manifest(dataset: Path, browser, tmp_path: Path) -> None:
    """No tracks: no Track filter, shift + key answers the one crop; a manifest.parquet is
    read and updated."""
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    shutil.copy(dataset / "export.json", photos)
    rows = [m for m in read_manifest(dataset)[1] if m["media"] == "image"]
    for m in rows:  # as exported (an earlier test applied a review to the dataset)
        shutil.copy(dataset / m["image"], photos / m["image"])
        m.update(label=m["machine_label"], expression=EXPRESSIONS.index(m["machine_label"]),
                 label_source="machine", rejected=False)
    write_manifest(photos / "manifest.parquet", rows)
    assert cage("review", photos).exit_code == 0
    d = browser
    open_page(d, photos / "review.html")
    shown = tiles(d)
    assert sorted(shown) == sorted(m["image"] for m in rows) and len(shown) == 7
    assert not d.find_element("id", "f-track").is_displayed()
    keys(d, "4", shift=True)
    assert answers(d) == {shown[0]: "surprise"} and focused(d) == shown[1]
    face = next(m for m in rows if m["face_index"])
    assert f"face {face['face_index']}" in tile(d, face["image"]).text
    for f in d.downloads.glob("review-answers*.csv"):
        f.unlink()
    d.find_element("id", "save").click()  # the button this time
    saved = d.downloads / "review-answers.csv"
    wait(d, saved.is_file)
    time.sleep(0.3)
    assert saved.read_text() == f"image,reviewed_label\n{shown[0]},surprise\n"
    assert js_errors(d) == []
    r = cage("export", "--apply-review", saved, photos)
    assert r.exit_code == 0, r.stderr
    after = {m["image"]: m for m in read_manifest(photos)[1]}
    assert after[shown[0]]["label"] == "surprise" and after[shown[0]]["label_source"] == "human"
    assert sum(m["label_source"] == "human" for m in after.values()) == 1


@needs_browser
def test_2000_crops_load_lazily_and_answer_fast(dataset: Path, browser, tmp_path: Path) -> None:
    """2,000 tiles (the 13 crops, linked under new names): the page is ready and answers a key
    within seconds, loads only the images in view, and requests nothing but its own files."""
    big = many_crops(dataset, tmp_path / "big", 2000)
    t = time.monotonic()
    assert cage("review", big).exit_code == 0
    written = time.monotonic() - t

    d = browser
    t0 = time.monotonic()
    open_page(d, big / "review.html")
    ready = time.monotonic() - t0
    first = tiles(d)[0]
    assert first == "images/crop_00000.jpg"  # confidence 0
    keys(d, "3")
    wait(d, lambda: answers(d).get(first) == "sad")
    answered = time.monotonic() - t0
    all_in(d)
    assert len(tiles(d)) == 2000
    loaded = [u for u in network_urls(d) if "/images/" in u]
    print(f"\n2000 crops: cage review {written:.2f} s; page ready {ready:.2f} s, first key "
          f"answered {answered:.2f} s after opening; {len(loaded)} images loaded")
    assert answered < 5.0
    assert 0 < len(loaded) < 400, len(loaded)  # lazily: the images near the view only
    keys(d, "\ue010")  # End: the last tile, scrolled into view, loads its image
    last = tiles(d)[-1]
    wait(d, lambda: d.execute_script(
        f"const i = document.querySelector('.tile[data-image=\"{last}\"] img');"
        "return i.complete && i.naturalWidth > 0"))
    urls = network_urls(d)
    assert any(u.endswith(last) for u in urls)
    assert all(u.startswith(big.resolve().as_uri() + "/") for u in loaded + urls)
    choose(d, "f-person", "P3")
    assert len(tiles(d)) == 400 and "P3" in tile(d, tiles(d)[0]).text
    assert js_errors(d) == []
