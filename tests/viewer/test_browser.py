"""End to end: the viewer's page in headless Chromium shows the model's similarity maps.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium`` (the ``test``
extra; ``.ci/run`` installs the browser); skipped, saying so, where they are missing.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import localdisc
from localdisc.data.io import read_image
from localdisc.data.synthetic import synthetic_fundus
from localdisc.models import LDConfig, LDModel
from localdisc.tasks.predict import collect_images
from localdisc.tasks.similarity import load_model
from localdisc.viewer.server import Viewer, create_server, display_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 60  # seconds: generous for a loaded 2-core machine; the page is ready in about one


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    for path, package in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]:
        if not Path(path).is_file():
            pytest.skip(f"{path} not found: apt-get install chromium chromium-driver ({package})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,900", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager then never tries to download a browser.
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


SIZE = 64  # the viewer's and the library's working size


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    driver = _driver()
    root = tmp_path_factory.mktemp("viewer-browser")
    LDModel(LDConfig(dim=8, clusters=4)).save(root / "run")
    (root / "images").mkdir()
    for i, size in enumerate([64, 64, 72]):
        image = np.round(synthetic_fundus(size, seed=i).image * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"eye{i}.png")
    (root / "images" / "broken.png").write_bytes(b"not an image at all")
    loaded = load_model(root / "run")
    # At 64 px: the 72 px image shrinks, none is enlarged, as the library's reference (SIZE).
    viewer = Viewer(loaded, collect_images([root / "images"]), size=SIZE)
    server = create_server(viewer, port=0, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    viewer.warm_up()
    try:
        driver.get(server.login_url)
        yield {"driver": driver, "root": root, "loaded": loaded}
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def wait_for(driver, script: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(script))


def click_image(driver, fx: float, fy: float) -> None:
    """Click the large image at a fraction of its width and height, as a user would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    image = driver.find_element(By.ID, "main-image")
    w, h = image.rect["width"], image.rect["height"]
    # Selenium measures the offset from the element's centre.
    ActionChains(driver).move_to_element_with_offset(
        image, round((fx - 0.5) * w), round((fy - 0.5) * h)
    ).click().perform()


def results(driver) -> dict:
    """What the page shows: the query it ran and, per card, the values it displays."""
    return driver.execute_script(
        """
        const r = document.getElementById('results');
        const cards = [...document.querySelectorAll('#matches .match')].map((c) => ({
          id: Number(c.dataset.imageId), rank: Number(c.dataset.rank), max: Number(c.dataset.max),
          best: [Number(c.dataset.bestX), Number(c.dataset.bestY)],
          heatmapLoaded: c.querySelector('img.heatmap').naturalWidth > 0,
          marker: !!c.querySelector('.marker'),
        }));
        return {state: r.dataset.state, image: Number(r.dataset.image), x: Number(r.dataset.x),
                y: Number(r.dataset.y), level: r.dataset.level, cards};
        """
    )


def check_against_library(page, shown: dict) -> None:
    names = ["eye0", "eye1", "eye2"]
    # As the page shows them (display pixels): the 72 px image shrunk to SIZE.
    files = [read_image(page["root"] / "images" / f"{n}.png")[0] for n in names]
    images = [display_image(image, SIZE) for image in files]
    query = images[shown["image"]]
    ref = localdisc.similarity(
        page["loaded"], query, [(shown["x"], shown["y"])], images, level=shown["level"],
        size=SIZE,
    )  # fmt: skip
    cards = shown["cards"]
    assert [c["id"] for c in cards][0] == shown["image"] and cards[0]["rank"] == 0
    assert sorted(c["id"] for c in cards) == [0, 1, 2]
    for card in cards:
        target = ref.targets[card["id"]][0]
        assert card["max"] == pytest.approx(float(target.max()), abs=1e-4)
        assert tuple(card["best"]) == ref.best[card["id"]][0] or card["rank"] == 0
        assert card["heatmapLoaded"] and card["marker"]
    others = cards[1:]
    assert [c["rank"] for c in others] == [1, 2]
    assert [c["id"] for c in others] == sorted(
        (c["id"] for c in others), key=lambda i: -ref.targets[i][0].max()
    )


def test_page_lists_images_and_the_unreadable_one(page):
    driver = page["driver"]
    wait_for(driver, "return document.body.dataset.ready === 'true'")
    assert len(driver.find_elements("css selector", "#thumbs .thumb")) == 3
    bad = driver.find_element("css selector", "#bad-list li")
    assert bad.text.startswith("broken") and len(bad.text) > len("broken")  # name, reason
    assert driver.find_element("id", "bad-images").is_displayed()


def test_clicking_a_point_shows_the_models_similarity_maps(page):
    driver = page["driver"]
    wait_for(driver, "return document.getElementById('main-image').naturalWidth > 0")
    click_image(driver, 0.3, 0.6)
    wait_for(driver, "return document.getElementById('results').dataset.state === 'ready'")
    shown = results(driver)
    assert shown["level"] == "pixel" and shown["image"] == 0
    # The page turned the click into the pixel under the cursor (64 px image).
    assert abs(shown["x"] - 0.3 * 64) <= 1.5 and abs(shown["y"] - 0.6 * 64) <= 1.5
    check_against_library(page, shown)
    # The large view shows the query's heatmap and its point.
    assert wait_for(
        driver,
        "const h = document.getElementById('stage-heatmap');"
        "return !h.hidden && h.naturalWidth > 0"
        " && !!document.querySelector('#stage .marker.query')",
    )


def test_patch_level_and_other_image_on_the_large_view(page):
    from selenium.webdriver.common.by import By

    driver = page["driver"]
    driver.find_element(By.CSS_SELECTOR, 'input[name="level"][value="patch"]').click()
    wait_for(
        driver,
        "const r = document.getElementById('results');"
        "return r.dataset.level === 'patch' && r.dataset.state === 'ready'",
    )
    check_against_library(page, results(driver))
    # Open the best-ranked other image large: its heatmap and best-match circle are shown.
    driver.find_elements(By.CSS_SELECTOR, "#matches .match")[1].click()
    assert wait_for(driver, "return !!document.querySelector('#stage .marker.best')")


def test_cluster_overlay_toggles(page):
    from selenium.webdriver.common.by import By

    driver = page["driver"]
    driver.find_element(By.ID, "show-clusters").click()
    wait_for(driver, "const o = document.getElementById('cluster-overlay');"
                     "return !o.hidden && o.complete && o.naturalWidth > 0")  # fmt: skip
    driver.find_element(By.CSS_SELECTOR, '#cluster-legend input[data-cluster="2"]').click()
    src = wait_for(driver, "const s = document.getElementById('cluster-overlay').src;"
                           "return s.includes('hide=2') && s")  # fmt: skip
    assert src.endswith("hide=2")


def test_the_page_gives_the_clicked_point_in_the_files_pixels(page):
    """Shrunk images: the page's pixels are display pixels; a landmark file for `localize
    --landmarks` needs the file's, which the page shows too (they were missing)."""
    driver, root = page["driver"], page["root"]
    (root / "large").mkdir()
    image = np.round(synthetic_fundus(203, seed=3).image[:97] * 255).astype(np.uint8)
    Image.fromarray(image).save(root / "large" / "wide.png")  # 203 x 97: shown at 64 x 31
    viewer = Viewer(page["loaded"], collect_images([root / "large"]), size=64)
    server = create_server(viewer, port=0, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(server.login_url)
        wait_for(driver, "return document.getElementById('main-image').naturalWidth > 0")
        click_image(driver, 0.7, 0.9)
        wait_for(driver, "return document.getElementById('results').dataset.state === 'ready'")
        r = driver.execute_script("return {...document.getElementById('results').dataset}")
        x, y = int(r["x"]), int(r["y"])
        assert abs(x - 0.7 * 64) <= 1.5 and abs(y - 0.9 * 31) <= 1.5
        # The centre of the clicked display pixel, each axis at its own scale.
        fx, fy = round((x + 0.5) * 203 / 64 - 0.5, 1), round((y + 0.5) * 97 / 31 - 0.5, 1)
        assert (float(r["fileX"]), float(r["fileY"])) == (fx, fy)
        shown = driver.find_element("id", "query-file").text
        assert "file pixels" in shown and "localize --landmarks" in shown
        assert f"[{fx:g}, {fy:g}]" in shown, shown
        card = driver.find_element("css selector", "#matches .match.self .file-point").text
        assert f"[{fx:g}, {fy:g}]" in card
    finally:
        server.shutdown()
        server.server_close()


def test_progress_ends_when_the_cache_holds_fewer_images_than_the_folder(page):
    """The page took "fewer cached pixel embeddings than images" for a warm-up still running:
    with a cache too small for the folder its progress bar never went away."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver, root = page["driver"], page["root"]
    one = 8 * 64 * 64 * 4  # the largest display image's pixel embeddings (dim 8)
    viewer = Viewer(
        page["loaded"], collect_images([root / "images"]), size=SIZE, cache_mb=one / 2**20
    )
    server = create_server(viewer, port=0, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        viewer.warm_up().join(WAIT)
        assert viewer.progress()["embeddings"]["pixel"] < 3
        driver.get(server.login_url)
        wait_for(driver, "return document.getElementById('main-image').naturalWidth > 0")
        click_image(driver, 0.5, 0.5)  # shows the progress while the query runs
        wait_for(driver, "return document.getElementById('results').dataset.state === 'ready'")
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script("return document.getElementById('progress').hidden")
        )
        check_against_library(page, results(driver))  # the values with a small cache too
    finally:
        server.shutdown()
        server.server_close()
