"""A screenshot of `localdisc view` with a real model: click a point in headless Chromium, save.

    python benchmarks/viewer_screenshot.py --model /tmp/cpuscale/pretrain \
        --images ../shared/data/DRIVE/test/images --out docs/viewer.png

Takes the first ``--count`` images (default: DRIVE test 01-04, else scikit-image's retina
photograph) and clicks the optic disc of the first DRIVE image (its shipped centre), or
``--point X,Y`` in pixels of the first file. Needs Debian's ``chromium`` and ``chromium-driver``
and ``pip install selenium``; prints the best matches it saw and where the PNG went.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from localdisc.tasks.benchmark_localize import drive_optic_discs
from localdisc.tasks.predict import collect_images
from localdisc.tasks.similarity import load_model, nearest_pixel, parse_point, to_resized
from localdisc.viewer.server import Viewer, create_server

ROOT = Path(__file__).resolve().parents[1]
DRIVE_TEST = ROOT.parent / "shared" / "data" / "DRIVE" / "test" / "images"


def default_images(count: int) -> list[Path]:
    """The first DRIVE test photographs, or scikit-image's retina written to a temporary PNG."""
    if DRIVE_TEST.is_dir():
        return sorted(DRIVE_TEST.iterdir())[:count]
    from skimage.data import retina

    path = Path(tempfile.mkdtemp()) / "retina.png"
    Image.fromarray(retina()).save(path)
    return [path]


def chromium(width: int, height: int):
    """Headless Chromium driven by Debian's chromedriver (Selenium Manager downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/cpuscale/pretrain"))
    parser.add_argument("--images", type=Path, nargs="*", default=None)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--segmenter", type=Path, default=None)
    parser.add_argument("--point", default=None, help="X,Y in pixels of the first image's file.")
    parser.add_argument("--level", choices=("pixel", "patch"), default="pixel")
    parser.add_argument("--clusters", action="store_true", help="Show the cluster overlay.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png")
    parser.add_argument("--window", type=int, nargs=2, default=(1600, 900))
    args = parser.parse_args()

    files = collect_images(args.images or default_images(args.count))[: args.count]
    loaded = load_model(args.model)
    segmenter = None
    if args.segmenter:
        from localdisc.models.segmenter import Segmenter

        segmenter = Segmenter.from_pretrained(args.segmenter)
    viewer = Viewer(loaded, files, segmenter=segmenter)
    first = viewer.entries[0]
    if args.point:
        px, py = parse_point(args.point)
    else:  # the optic disc, a landmark every fundus photograph has
        w, h = first.original
        px, py = drive_optic_discs().get(first.name, (w * 0.5, h * 0.5))
    # The display pixel whose centre is nearest the point (a scale per axis: Entry.file_point).
    (w, h), (dh, dw) = first.original, first.shape
    sx, sy = to_resized((px, py), (dw / w, dh / h))
    x, y = nearest_pixel(sx, dw), nearest_pixel(sy, dh)

    server = create_server(viewer, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    viewer.warm_up()
    driver = chromium(*args.window)
    try:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, 120)
        driver.get(server.login_url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
        wait.until(
            lambda d: d.execute_script("return document.getElementById('main-image').complete")
        )
        if args.level == "patch":
            driver.find_element(By.CSS_SELECTOR, 'input[name="level"][value="patch"]').click()
        if args.clusters:  # the cluster map on the large image, the heatmaps beside it
            driver.find_element(By.ID, "show-clusters").click()
            driver.find_element(By.ID, "show-heatmap").click()
        stage = driver.find_element(By.ID, "main-image")
        rect = stage.rect
        # Selenium offsets are from the element's centre.
        dx = (x + 0.5) / first.shape[1] * rect["width"] - rect["width"] / 2
        dy = (y + 0.5) / first.shape[0] * rect["height"] - rect["height"] / 2
        start = time.perf_counter()
        ActionChains(driver).move_to_element_with_offset(
            stage, round(dx), round(dy)
        ).click().perform()
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('results').dataset.state === 'ready'"))  # fmt: skip
        seconds = time.perf_counter() - start
        time.sleep(0.3)  # the progress bar's last poll
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Full colour (a 256-colour palette bands the heatmaps), without the alpha channel.
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        shot.save(args.out, optimize=True)
        cards = driver.find_elements(By.CSS_SELECTOR, "#matches .match")
        print(f"clicked ({x}, {y}) of {first.name} at {first.shape[1]} x {first.shape[0]} px; "
              f"results in {seconds:.1f} s")  # fmt: skip
        for card in cards:
            data = card.get_attribute("data-max"), card.get_attribute("data-best-x")
            name = card.find_element(By.CSS_SELECTOR, ".name").text
            print(f"  {card.get_attribute('data-rank'):>2} {name}: max {float(data[0]):.3f} at "
                  f"({data[1]}, {card.get_attribute('data-best-y')})")  # fmt: skip
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    size = Image.open(args.out).size
    print(f"screenshot: {args.out} ({size[0]} x {size[1]}, {args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
