"""The viewer's HTTP server: endpoints, values against ``similarity``, and its security limits."""

from __future__ import annotations

import http.client
import inspect
import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import resized, sphere_field
from localdisc.data.io import read_image
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import LocaldiscError
from localdisc.models import LDConfig, LDModel
from localdisc.tasks.predict import collect_images
from localdisc.tasks.similarity import (
    LoadedModel,
    PatchKernel,
    from_resized,
    load_model,
    similarity,
)
from localdisc.viewer.server import (
    BINS,
    MATCH_BYTES,
    TOKEN_COOKIE,
    ByteLRU,
    Viewer,
    add_to_histogram,
    create_server,
    histogram_median,
    serve,
)

SIZE = 64  # display size: the 96 x 80 image shrinks to 64 x 53, the others stay


def write_images(folder: Path) -> None:
    """Two 64 px photographs, one larger non-square one, and a corrupt file."""
    folder.mkdir(parents=True)
    for i, (size, width) in enumerate([(64, 64), (64, 64), (96, 80)]):
        image = synthetic_fundus(size, seed=i).image[:, :width]
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")


class FakeSegmenter:
    """Stands in for a fine-tuned Segmenter: foreground is the left half."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        prob = np.zeros(image.shape[:2], np.float32)
        prob[:, : image.shape[1] // 2] = 0.9
        return prob


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    LDModel(LDConfig(dim=8, clusters=4)).save(root / "run")
    write_images(root / "images")
    loaded = load_model(root / "run")
    viewer = Viewer(loaded, collect_images([root / "images"]), segmenter=FakeSegmenter(), size=SIZE)
    server = create_server(viewer, port=0, log=lambda _: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    viewer.warm_up()
    yield {"root": root, "loaded": loaded, "viewer": viewer, "server": server, **address(server)}
    server.shutdown()
    server.server_close()


def address(server) -> dict[str, str]:
    """Where a test reaches ``server``: its URL and the cookie that carries its token."""
    return {"url": server.url.rstrip("/"), "cookie": f"{server.cookie_name}={server.token}"}


def get(setup, path: str, cookie: bool = True) -> tuple[int, dict, bytes]:
    headers = {"Cookie": setup["cookie"]} if cookie else {}
    request = urllib.request.Request(setup["url"] + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(setup, path: str) -> tuple[int, dict]:
    status, headers, body = get(setup, path)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def raw(setup, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side normalisation of ``..``) and read the answer."""
    port = int(setup["url"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.sendall(request)
    response = http.client.HTTPResponse(conn.sock)
    response.begin()
    body = response.read()
    conn.close()
    return response.status, body


def png(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def display(setup, name: str) -> np.ndarray:
    """The image as the reference sees it: ``similarity``'s own resize to SIZE."""
    image = read_image(setup["root"] / "images" / f"{name}.png")[0]
    return resized(image, SIZE) if max(image.shape[:2]) > SIZE else image


def test_info_lists_the_images_and_reports_the_bad_one(setup):
    status, info = get_json(setup, "/api/info")
    assert status == 200
    assert [(i["id"], i["name"]) for i in info["images"]] == [(0, "eye0"), (1, "eye1"), (2, "eye2")]
    assert info["images"][2].items() >= {"width": 53, "height": 64, "original": [80, 96]}.items()
    assert len(info["errors"]) == 1
    error = info["errors"][0]
    assert error["file"] == "broken.png" and error["error"]
    assert "/" not in error["file"]  # the page gets names, never server paths
    assert len(info["clusters"]) == 4 and info["clusters"][0]["colour"].startswith("#")
    assert info["segmenter"] is True and info["size"] == SIZE


def test_page_and_static_files_are_served_with_a_strict_policy(setup):
    status, headers, body = get(setup, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/static/app.js" in body and b"http" not in body.lower().replace(b"http-equiv", b"")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, _ = get(setup, f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)


def test_image_thumbnail_and_cluster_pngs(setup):
    status, headers, body = get(setup, "/api/image/2.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    image = png(body)
    assert image.size == (53, 64) and image.mode == "RGB"
    expected = np.round(display(setup, "eye2") * 255)
    assert np.abs(np.asarray(image, float) - expected).max() <= 1

    assert png(get(setup, "/api/thumb/0.png")[2]).size == (64, 64)  # never enlarged

    clusters = png(get(setup, "/api/clusters/2.png")[2])
    assert clusters.size == (53, 64) and clusters.mode == "RGBA"
    viewer = setup["viewer"]
    labels = viewer.loaded.model.cluster(display(setup, "eye2")).argmax(0).numpy()
    np.testing.assert_array_equal(np.asarray(clusters)[..., :3], viewer.colours[labels])
    hidden = np.asarray(png(get(setup, "/api/clusters/2.png?hide=0,1,2,3")[2]))
    assert (hidden[..., 3] == 0).all()
    partly = np.asarray(png(get(setup, "/api/clusters/2.png?hide=1")[2]))
    np.testing.assert_array_equal(partly[..., 3] == 0, labels == 1)


@pytest.mark.parametrize("level", ["pixel", "patch"])
@pytest.mark.parametrize("image,x,y", [(0, 20, 41), (2, 45, 12)])
def test_similarity_values_equal_the_library_and_are_ranked(setup, level, image, x, y):
    names = ["eye0", "eye1", "eye2"]
    status, data = get_json(setup, f"/api/similarity?image={image}&x={x}&y={y}&level={level}")
    assert status == 200
    assert data["query"].items() >= {"image": image, "x": x, "y": y, "level": level}.items()
    ref = similarity(
        setup["loaded"], display(setup, names[image]), [(x, y)],
        [display(setup, n) for n in names], level=level, size=SIZE,
    )  # fmt: skip
    by_id = {m["id"]: m for m in [data["self"], *data["matches"]]}
    assert sorted(by_id) == [0, 1, 2] and data["self"]["id"] == image
    for i, target in enumerate(ref.targets):
        m = by_id[i]
        _, headers, body = get(setup, m["values"])
        values = np.load(io.BytesIO(body), allow_pickle=False)
        np.testing.assert_allclose(values, target[0], atol=1e-4)
        assert m["max"] == pytest.approx(float(target[0].max()), abs=1e-4)
        assert m["min"] == pytest.approx(float(target[0].min()), abs=1e-4)
        assert tuple(m["best"]) == ref.best[i][0]
        heat = png(get(setup, m["heatmap"])[2])
        assert heat.mode == "RGBA" and heat.size == target.shape[:0:-1]
    assert by_id[image]["max"] == pytest.approx(1.0, abs=1e-5)
    assert ref.query[0, y, x] == pytest.approx(1.0, abs=1e-5)
    # The other images, best match first.
    maxima = [m["max"] for m in data["matches"]]
    assert maxima == sorted(maxima, reverse=True)
    expected = sorted((i for i in range(3) if i != image), key=lambda i: -ref.targets[i][0].max())
    assert [m["id"] for m in data["matches"]] == expected
    assert data["scale"]["low"] < data["scale"]["high"] <= 1.0


def test_points_are_also_given_in_the_files_pixels_for_localize(setup):
    # eye2 is 80 x 96 in the file and 53 x 64 on the page: a point copied from the page into a
    # `localize --landmarks` file was off by the shrink factor (about 1.5).
    names = ["eye0", "eye1", "eye2"]
    status, data = get_json(setup, "/api/similarity?image=2&x=45&y=12&level=patch")
    assert status == 200
    query = data["query"]
    assert (query["x"], query["y"]) == (45, 12)  # display pixels, as before
    # The centre of display pixel (45, 12) in file pixels; each axis has its own scale.
    assert query["file"] == [round(45.5 * 80 / 53 - 0.5, 1), round(12.5 * 96 / 64 - 0.5, 1)]
    # The library, given the file and that point, queries the same pixel: the same maps.
    file = read_image(setup["root"] / "images" / "eye2.png")[0]
    ref = similarity(
        setup["loaded"], file, [tuple(query["file"])], [display(setup, n) for n in names],
        level="patch", size=SIZE,
    )  # fmt: skip
    sizes = {0: (64, 64, 64, 64), 1: (64, 64, 64, 64), 2: (80, 96, 53, 64)}  # file, display
    for m in [data["self"], *data["matches"]]:
        values = np.load(io.BytesIO(get(setup, m["values"])[2]), allow_pickle=False)
        np.testing.assert_allclose(values, ref.targets[m["id"]][0], atol=1e-4)
        (w, h, dw, dh), (bx, by) = sizes[m["id"]], m["best"]
        expected = [round((bx + 0.5) * w / dw - 0.5, 1), round((by + 0.5) * h / dh - 0.5, 1)]
        assert m["best_file"] == expected
    # Unshrunk images: file pixels are the display pixels.
    _, data = get_json(setup, "/api/similarity?image=0&x=20&y=41&level=pixel")
    assert data["query"]["file"] == [20, 41]
    assert all(m["best_file"] == m["best"] for m in data["matches"] if m["id"] != 2)


def test_progress_counts_the_cached_embeddings(setup):
    get_json(setup, "/api/similarity?image=0&x=1&y=1&level=patch")
    _, status = get_json(setup, "/api/status")
    assert status["total"] == 3
    assert status["embeddings"] == {"pixel": 3, "patch": 3}


def test_segmentation_overlay_and_download(setup):
    overlay = np.asarray(png(get(setup, "/api/segmentation/2.png")[2]))
    assert overlay.shape == (64, 53, 4)
    assert overlay[:, :26, 3].min() > 200 and overlay[:, 27:, 3].max() == 0
    status, headers, body = get(setup, "/api/segmentation/2/prob.png")
    assert status == 200 and 'filename="eye2_prob.png"' in headers["Content-Disposition"]
    prob = png(body)
    assert prob.size == (80, 96) and prob.mode == "I;16"  # the file's own size, predict's 16 bits


def test_segmentation_download_is_what_predict_writes(setup, tmp_path):
    # The viewer segmented its display image (shrunk to --size, the LD model's pool size, not
    # the segmenter's) and enlarged the map back: 0.4 from predict's, 495 pixels flipped at 0.5
    # on a 256 px radiograph. A segmenter of another size than the viewer's, a non-square file.
    from localdisc.data.preprocess import resize_image
    from localdisc.models.segmenter import Segmenter
    from localdisc.tasks.predict import predict_images

    torch.manual_seed(0)
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "model")
    image = setup["root"] / "images" / "eye2.png"  # 80 x 96, shown at 53 x 64 (SIZE)
    predict_images(tmp_path / "model", [image], tmp_path / "out", device="cpu", log=lambda _: None)
    written = np.asarray(Image.open(tmp_path / "out" / "eye2_prob.png")).astype(np.int64)
    segmenter = Segmenter.from_pretrained(tmp_path / "model")
    viewer = Viewer(setup["loaded"], [("eye2", image)], segmenter=segmenter, size=SIZE)
    downloaded = np.asarray(png(viewer.segmentation_download(0))).astype(np.int64)
    assert downloaded.shape == written.shape == (96, 80)
    np.testing.assert_array_equal(downloaded, written)
    # The overlay shows that map, shrunk as the image is (the area each display pixel covers).
    shown = resize_image(written / 65535, (64, 53))
    np.testing.assert_allclose(viewer.segmentation(0), shown, atol=1e-5)


def test_an_error_of_the_server_is_said_in_the_terminal_too(setup, monkeypatch):
    # `view --size 100000`: the page got HTTP 500 and the terminal said nothing.
    lines: list[str] = []
    monkeypatch.setattr(setup["server"], "log", lines.append)

    def out_of_memory(image_id: int) -> bytes:
        raise MemoryError

    monkeypatch.setattr(setup["viewer"], "image_png", out_of_memory)
    status, data = get_json(setup, "/api/image/0.png?token=secret")
    assert status == 500 and data["error"] == f"out of memory at the working size {SIZE} (--size)"
    assert lines == [f"error answering /api/image/0.png: {data['error']}"]  # not the token

    def torch_out_of_memory(image_id: int) -> bytes:  # torch's allocator says it so
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 40000000000 bytes")  # fmt: skip

    def cuda_out_of_memory(image_id: int) -> bytes:
        raise RuntimeError("CUDA out of memory. Tried to allocate 37.25 GiB")

    for failing in (torch_out_of_memory, cuda_out_of_memory):
        monkeypatch.setattr(setup["viewer"], "image_png", failing)
        status, data = get_json(setup, "/api/image/0.png")
        assert status == 500 and data["error"].startswith("out of memory at the working size")


def test_unknown_ids_are_404_and_bad_values_400(setup):
    for path in [
        "/api/image/3.png", "/api/thumb/99.png", "/api/clusters/7.png",
        "/api/similarity?image=5&x=1&y=1", "/api/heatmap/9.png?image=0&x=1&y=1",
        "/api/nothing", "/api/image/-1.png", "/static/secret.txt",
    ]:  # fmt: skip
        status, data = get_json(setup, path)
        assert status == 404, path
        assert data["error"]
    for query in [
        "image=0&x=64&y=1", "image=0&x=-1&y=1", "image=0&x=nan&y=1", "image=0&x=1&y=inf",
        "image=0&x=a&y=1", "image=zero&x=1&y=1", "image=0&x=1", "image=0&x=1&y=1&level=voxel",
        "image=0&image=1&x=1&y=1", "image=2&x=53&y=0",
    ]:  # fmt: skip
        status, data = get_json(setup, f"/api/similarity?{query}")
        assert status == 400, query
        assert data["error"]
    assert get_json(setup, "/api/clusters/0.png?hide=4")[0] == 400
    assert get_json(setup, "/api/clusters/0.png?hide=a")[0] == 400


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/static/..%2f..%2fpyproject.toml",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%5c..%5cserver.py",
        "/static/%252e%252e/%252e%252e/etc/passwd",
        "/api/image/..%2f0.png",
        "//etc/passwd",
        "/static/./app.js",
    ],
)
def test_no_path_traversal(setup, path):
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {setup['cookie']}\r\n\r\n"
    status, body = raw(setup, request.encode())
    assert status in (400, 404)
    assert b"root:" not in body and b"[project]" not in body and b"import" not in body


def test_oversized_requests_are_refused(setup):
    assert get_json(setup, "/api/info?" + "a" * 5000)[0] == 414
    status, _ = raw(setup, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 414  # the standard library's own line limit
    status, body = raw(
        setup, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n"
    )
    assert status == 413 and json.loads(body)["error"]
    assert (
        raw(setup, b"POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n")[0] == 413
    )
    status, _ = raw(
        setup, b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert status == 405
    chunked = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw(setup, chunked)[0] == 413


def test_foreign_host_header_is_refused_on_loopback(setup):
    # A DNS-rebinding page would reach 127.0.0.1 under its own host name.
    status, _ = raw(setup, b"GET /api/info HTTP/1.1\r\nHost: evil.example:8765\r\n\r\n")
    assert status == 400
    cookie = f"Cookie: {setup['cookie']}\r\n".encode()
    for host in (b"localhost:1", b"127.0.0.1", b"[::1]:8765", b"LOCALHOST", b"127.0.0.2"):
        request = b"GET /api/info HTTP/1.1\r\nHost: " + host + b"\r\n" + cookie + b"\r\n"
        assert raw(setup, request)[0] == 200, host


def test_every_answer_needs_the_token_of_the_printed_url(setup):
    # The other accounts of a shared machine reach 127.0.0.1 too, and read every image.
    for path in ("/", "/api/info", "/api/image/0.png", "/static/app.js"):
        status, _, body = get(setup, path, cookie=False)
        assert status == 403, path
        assert b"open the URL the viewer printed at start" in body
    name = setup["cookie"].split("=", 1)[0]
    assert name.startswith(f"{TOKEN_COOKIE}_")
    status, _, _ = get({**setup, "cookie": f"{name}=guess"}, "/api/info")
    assert status == 403
    token = setup["cookie"].split("=", 1)[1]
    status, headers, body = get(setup, f"/?token={token}", cookie=False)
    assert status == 200 and b"<html" in body.lower()
    assert headers["Set-Cookie"] == f"{setup['cookie']}; HttpOnly; SameSite=Strict; Path=/"
    status, headers, _ = get(setup, "/api/info")  # the cookie the page then sends
    assert status == 200 and "Set-Cookie" not in headers
    # Nor may a page elsewhere embed an image (it learnt their number and sizes).
    assert headers["Cross-Origin-Resource-Policy"] == "same-origin"


def test_two_viewers_on_one_host_keep_their_own_cookies(setup):
    # Browsers keep one cookie of a name per host, whatever the port: logging in to a second
    # viewer replaced the first one's cookie and its open page got 403 on every request.
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    second = create_server(setup["viewer"], port=0, log=lambda _: None)
    threading.Thread(target=second.serve_forever, daemon=True).start()
    try:
        first_url, token = setup["url"], setup["cookie"].split("=", 1)[1]
        browser.open(f"{first_url}/?token={token}", timeout=30).read()
        browser.open(second.login_url, timeout=30).read()
        for url in (first_url + "/api/info", second.url + "api/info"):
            with browser.open(url, timeout=30) as response:
                assert response.status == 200, url
    finally:
        second.shutdown()
        second.socket.close()  # not server_close: it stops the shared viewer


def test_unreadable_files_of_one_name_in_two_folders_are_told_apart(setup, tmp_path):
    # One folder per patient: the page and the terminal both said "scan.png" twice.
    for patient in ("p01", "p02"):
        (tmp_path / patient).mkdir()
        (tmp_path / patient / "scan.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "ok.png")
    viewer = Viewer(setup["loaded"], collect_images([tmp_path]))
    assert [e["name"] for e in viewer.errors] == ["p01_scan", "p02_scan"]
    assert all(e["file"] == "scan.png" for e in viewer.errors)  # the page: no server paths
    assert viewer.error_paths == {f"{p}_scan": tmp_path / p / "scan.png" for p in ("p01", "p02")}


def test_a_newer_similarity_query_stops_the_older_scan(setup, monkeypatch):
    # The page drops older answers, but the server finished every abandoned scan under the
    # model's lock: 4 quick clicks made the fifth wait 3.6 times as long on 24 images.
    from localdisc.viewer.server import Superseded

    viewer = setup["viewer"]
    inside, go = threading.Event(), threading.Event()
    real_map = viewer._map

    def slow_map(*args):
        inside.set()
        assert go.wait(30)
        return real_map(*args)

    monkeypatch.setattr(viewer, "_map", slow_map)
    older: list[object] = []

    def click() -> None:
        try:
            older.append(viewer.similarity_json(0, 3, 4, "pixel"))
        except Superseded as exc:
            older.append(exc)

    thread = threading.Thread(target=click)
    thread.start()
    assert inside.wait(30)  # the older scan is on its first image
    newer = threading.Thread(target=lambda: older.append(viewer.similarity_json(0, 5, 6, "pixel")))
    newer.start()
    while viewer._asked < 2:  # the newer click has been asked for (it waits for the lock)
        threading.Event().wait(0.01)
    go.set()
    thread.join(30)
    newer.join(30)
    assert isinstance(older[0], Superseded) and older[0].status == 409
    assert older[1]["query"]["x"] == 5  # the newer one answered
    assert ("result", (0, 3, 4, "pixel")) not in viewer._queries  # the older one not finished


def test_the_loopback_interface_in_any_spelling():
    from localdisc.viewer.server import host_warning, is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "0:0:0:0:0:0:0:1", "localhost", "LOCALHOST"):
        assert is_loopback(host) and host_warning(host) is None, host
    for host in ("0.0.0.0", "192.168.1.4", "::", "example.org"):
        assert not is_loopback(host) and host_warning(host) is not None, host


def test_serve_prints_the_url_with_its_token_and_notes_and_stops_cleanly(setup, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    import localdisc.viewer.server as server_module

    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[10:20, 10:50] = 200
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[274] = 6
    photo.save(tmp_path / "phone.jpg", exif=exif)
    dim = (np.add.outer(np.arange(40), np.arange(40)) * 50).astype(np.uint16)  # up to 3900
    Image.fromarray(dim).save(tmp_path / "dim.png")
    made, joined, viewers = [], [], []
    real_create, real_warm = server_module.create_server, Viewer.warm_up

    def create(viewer, host, port, **kwargs):
        viewers.append(viewer)
        server = real_create(viewer, host, 0, **kwargs)  # any free port
        server.serve_forever = lambda: (_ for _ in ()).throw(KeyboardInterrupt)
        made.append(server)
        return server

    def warm_up(self):
        thread = real_warm(self)
        real_join = thread.join
        thread.join = lambda *a: (joined.append(True), real_join(*a))[1]
        return thread

    monkeypatch.setattr(server_module, "create_server", create)
    monkeypatch.setattr(Viewer, "warm_up", warm_up)
    said: list[str] = []
    serve(setup["root"] / "run", [tmp_path], log=said.append, size=SIZE)
    assert any(line.startswith("note: 1 image(s) carry an EXIF orientation") for line in said)
    assert any(line.startswith("note: 1 image(s) use under 1/8 of the intensity range (dim)")
               for line in said)  # fmt: skip
    assert any(made[0].login_url in line and "?token=" in line for line in said)
    assert said[-1] == "stopped" and joined == [True]  # the warm-up joined before the exit
    assert not any("never trained" in line for line in said)
    # Stage 1's weights: their clusters are the head's random init, shown unsaid (reviewer).
    stage1 = tmp_path / "weights" / "stage1.safetensors"
    stage1.parent.mkdir()
    for name, to in (("config.json", "config.json"), ("model.safetensors", stage1.name)):
        (stage1.parent / to).write_bytes((setup["root"] / "run" / name).read_bytes())
    said.clear()
    serve(stage1, [tmp_path], log=said.append, size=SIZE)
    assert (
        f"warning: {stage1}: the weights at the end of stage 1, whose clustering head " in said[0]
    )
    # ... and shown, where LDModel refuses such weights' clusters from Python.
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    assert viewers[-1].loaded.model.embed_and_cluster(image)[1].shape[0] > 0


def test_binds_to_localhost_by_default_and_warns_otherwise(setup, monkeypatch):
    for function in (create_server, serve):
        assert inspect.signature(function).parameters["host"].default == "127.0.0.1"
    messages: list[str] = []
    server = create_server(setup["viewer"], port=0, log=messages.append)
    assert server.server_address[0] == "127.0.0.1" and messages == []
    server.server_close()
    server = create_server(setup["viewer"], host="0.0.0.0", port=0, log=messages.append)
    server.server_close()
    assert len(messages) == 1 and "warning" in messages[0] and "0.0.0.0" in messages[0]

    # The command line passes the same default on.
    from typer.testing import CliRunner

    import localdisc.viewer.server as server_module
    from localdisc.cli import app

    seen: dict = {}
    monkeypatch.setattr(server_module, "serve", lambda *a, **k: seen.update(k, args=a))
    root = setup["root"]
    args = ["view", "--model", str(root / "run"), "--images", str(root / "images")]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8765 and seen["size"] is None
    assert seen["cache_mb"] == server_module.DEFAULT_CACHE_MB
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--cache-mb", "64"])
    assert result.exit_code == 0 and seen["cache_mb"] == 64, result.output


def test_serve_refuses_when_no_image_is_readable(setup):
    with pytest.raises(LocaldiscError, match="none of the images"):
        serve(setup["root"] / "run", [setup["root"] / "images" / "broken.png"], port=0)


def test_a_vessels_network_is_refused_as_segmenter(tmp_path):
    # predict runs it over flips, at its own size, in the field of view; the viewer showed its
    # plain map, and downloaded it as if predict's.
    from localdisc.models.segmenter import Segmenter

    Segmenter(width=4, depth=2, size=32).save(
        tmp_path / "vessels", extra={"self_trained_vessels": {}}
    )
    from localdisc.viewer.server import load_segmenter

    with pytest.raises(LocaldiscError, match=r"vessels: a `shape-guided vessels` network; "):
        load_segmenter(tmp_path / "vessels")
    Segmenter(width=4, depth=2, size=32).save(tmp_path / "finetuned")
    assert isinstance(load_segmenter(tmp_path / "finetuned"), Segmenter)


def test_a_bad_port_or_size_is_a_clear_error(setup):
    # bind() raises OverflowError (a traceback) for such ports; serve refuses them before the
    # model and images load, which may take minutes.
    for port in (-1, 70000):
        with pytest.raises(LocaldiscError, match=f"--port must be 0 to 65535.*not {port}$"):
            create_server(setup["viewer"], port=port, log=lambda _: None)
    root = setup["root"]
    with pytest.raises(LocaldiscError, match="--port must be 0 to 65535"):
        serve(root / "no model here", [root / "images"], port=80800)
    # --size 0 was silently taken as "the model's size".
    files = collect_images([root / "images"])
    with pytest.raises(LocaldiscError, match="--size must be at least 16, not 0"):
        Viewer(setup["loaded"], files, size=0)


def test_download_keeps_a_non_latin_image_name(setup, tmp_path):
    # The ASCII-only filename made both of these "___01_prob.png".
    for name in ("肺部_01", "心脏_01"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / f"{name}.png")
    viewer = Viewer(setup["loaded"], collect_images([tmp_path]), segmenter=FakeSegmenter())
    server = create_server(viewer, port=0, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for entry in viewer.entries:
            url = f"{server.url}api/segmentation/{entry.id}/prob.png?token={server.token}"
            with urllib.request.urlopen(url, timeout=30) as response:
                disposition = response.headers["Content-Disposition"]
            encoded = urllib.parse.quote(f"{entry.name}_prob.png")
            assert disposition.endswith(f"; filename*=UTF-8''{encoded}"), disposition
            assert 'filename="___01_prob.png"' in disposition  # the ASCII fallback stays
    finally:
        server.shutdown()
        server.server_close()


def test_byte_lru_evicts_the_least_recently_used_but_never_the_newest():
    cache = ByteLRU(100)
    for key in "abc":
        cache.put(key, key.upper(), 40)
    assert cache.snapshot() == ["b", "c"] and cache.bytes == 80  # "a" went to make room
    assert cache.get("b") == "B"  # now the most recently used: "c" goes next
    cache.put("d", "D", 40)
    assert cache.snapshot() == ["b", "d"] and cache.get("c") is None
    assert "b" in cache and cache.snapshot() == ["b", "d"]  # a look is no use
    cache.put("big", "BIG", 500)  # over the limit alone: kept until the next, the rest goes
    assert cache.snapshot() == ["big"] and cache.bytes == 500
    cache.put("e", "E", 10)
    assert cache.snapshot() == ["e"] and cache.bytes == 10


class CountingModel:
    """Wraps a model and counts its embedding calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def embed(self, image):
        self.calls += 1
        return self.model.embed(image)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_embeddings_stay_within_the_cache_and_values_do_not_change(setup):
    # Every image's embeddings were kept for ever: 32 MiB per image and level at 512 px.
    from dataclasses import replace

    loaded = setup["loaded"]
    counting = CountingModel(loaded.model)
    files = collect_images([setup["root"] / "images"])
    one = 8 * 64 * 64 * 4  # an image's embeddings at one level (dim 8, 64 x 64)
    # Three quarters of the cache for embeddings: two 64 x 64 maps fit, not three.
    viewer = Viewer(replace(loaded, model=counting), files, size=SIZE, cache_mb=3 * one / 2**20)
    assert viewer.progress()["cache_mb"]["limit"] == pytest.approx(3 * one / 2**20, abs=1e-5)
    limit = viewer._embeddings.limit
    assert 2 * one <= limit < 3 * one
    reference = setup["viewer"]  # the default cache holds everything
    for image, x, y, level in [(0, 20, 41, "pixel"), (2, 45, 12, "patch"), (1, 3, 7, "pixel"),
                               (0, 5, 5, "patch"), (2, 1, 60, "pixel")]:  # fmt: skip
        result = viewer.query(image, x, y, level)
        expected = reference.query(image, x, y, level)
        for got, want in zip(result.matches, expected.matches, strict=True):
            np.testing.assert_allclose(
                viewer.similarity_map(result, got.id),
                reference.similarity_map(expected, want.id),
                atol=1e-6,
            )
            assert got.best == want.best
        assert viewer._embeddings.bytes <= limit
        assert (
            viewer._queries.bytes <= viewer._queries.limit or len(viewer._queries.snapshot()) == 1
        )
    # The image being looked at stays fast: another point of the last query's image and level
    # needs no model call (its embeddings and one other image's are cached).
    calls = counting.calls
    viewer.query(2, 30, 30, "pixel")
    assert counting.calls == calls + 1  # only the image that did not fit
    assert viewer.query(2, 30, 30, "pixel") is viewer.query(2, 30, 30, "pixel")  # heatmaps
    assert counting.calls == calls + 1


def test_warm_up_embeds_only_what_the_cache_holds_and_then_says_it_is_done(setup):
    # Beyond the cache the warm-up only evicted its own earlier work; and the page took "fewer
    # cached embeddings than images" for a warm-up still running, showing it for ever.
    files = collect_images([setup["root"] / "images"])
    one = 8 * 64 * 64 * 4
    viewer = Viewer(setup["loaded"], files, size=SIZE, cache_mb=3 * one / 2**20)
    assert viewer.progress()["warming"] is False and viewer.progress()["query"] is None
    thread = viewer.warm_up()
    assert viewer.progress()["warming"] is True
    thread.join(60)
    status = viewer.progress()
    assert status["warming"] is False and status["warmed"] == 3 and status["clusters"] == 3
    assert status["embeddings"] == {"pixel": 2, "patch": 0}
    assert viewer._embeddings.snapshot() == [("pixel", 0), ("pixel", 1)]
    assert viewer.labels(0).dtype == np.uint8  # a byte per pixel for 4 clusters


def test_a_bad_cache_size_is_a_clear_error(setup):
    files = collect_images([setup["root"] / "images"])
    for value in (-1, float("nan"), float("inf"), True):
        with pytest.raises(LocaldiscError, match="--cache-mb must be a number of MiB, at least 0"):
            Viewer(setup["loaded"], files, cache_mb=value)
    # Before the model and images load.
    with pytest.raises(LocaldiscError, match="--cache-mb"):
        serve(setup["root"] / "no model here", [setup["root"] / "images"], port=0, cache_mb=-5)


def write_noise_images(folder: Path, count: int, size: int = 48) -> list[tuple[str, Path]]:
    """``count`` RGB noise images (they compress badly, as photographs do)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(image).save(folder / f"noise{i:03d}.png")
    return collect_images([folder])


class QuickClusters:
    """Wraps a model: soft clusters from the image's brightness, without a forward pass."""

    def __init__(self, model):
        self.model = model

    def cluster(self, image):
        k = self.model.config.clusters
        grey = torch.from_numpy(np.ascontiguousarray(image.mean(-1)))
        return torch.nn.functional.one_hot((grey * (k - 1)).round().long(), k).permute(2, 0, 1)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_what_is_kept_per_image_stays_within_the_cache(setup, tmp_path):
    # The display image of every image (3 MiB at 512 px), its PNGs, clusters and segmentation
    # were kept for ever, whatever --cache-mb said: a folder of thousands grew without bound.
    import gc
    import tracemalloc
    from dataclasses import replace

    # Clusters of the right shape without the network: the model under tracemalloc is slow.
    loaded = replace(setup["loaded"], model=QuickClusters(setup["loaded"].model))

    def held(files) -> tuple[int, Viewer]:
        """Bytes the viewer holds once the page asked for everything each image shows."""
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        viewer = Viewer(loaded, files, segmenter=FakeSegmenter(), size=48, cache_mb=0.25)
        for entry in viewer.entries:
            viewer.thumb_png(entry.id)
            viewer.image_png(entry.id)
            viewer.clusters_png(entry.id)
            viewer.segmentation_png(entry.id)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start, viewer

    few, many = write_noise_images(tmp_path / "few", 10), write_noise_images(tmp_path / "many", 60)
    tracemalloc.start()
    try:
        held(few)  # imports and one-time allocations
        small, _ = held(few)
        large, viewer = held(many)
    finally:
        tracemalloc.stop()
    status = viewer.progress()["cache_mb"]
    assert status["limit"] == pytest.approx(0.25)
    # Each cache may go over its share by the one value just put, never by more.
    assert status["used"] <= 0.25 + 4 * 48 * 48 * 3 * 4 / 2**20
    # 50 more images: a name, a path and sizes each (about 1 KiB), not their pixels (27 KiB
    # as display image alone, over 50 KiB in all before).
    assert large - small < 2**20 / 2, f"{(large - small) / 50 / 1024:.1f} KiB per image"


def test_an_evicted_image_is_read_again_unchanged_and_a_changed_file_is_refused(setup, tmp_path):
    # With nothing but the newest value kept, every request reads its image again: the same
    # pixels, the same PNG; cache hits are the very bytes kept.
    import shutil

    shutil.copytree(setup["root"] / "images", tmp_path / "images")
    files = collect_images([tmp_path / "images"])
    viewer = Viewer(setup["loaded"], files, segmenter=FakeSegmenter(), size=SIZE, cache_mb=0)
    reference = setup["viewer"]
    first = viewer.image_png(2)
    assert viewer.image_png(2) is first  # a hit: no file read, no PNG encoding
    for image_id in (0, 1, 2, 0):
        assert viewer.image_png(image_id) == reference.image_png(image_id)
        assert viewer.thumb_png(image_id) == reference.thumb_png(image_id)
        np.testing.assert_array_equal(viewer.labels(image_id), reference.labels(image_id))
        np.testing.assert_array_equal(viewer.image(image_id), reference.image(image_id))
    assert viewer.image_png(2) == first
    result, expected = viewer.query(2, 45, 12, "patch"), reference.query(2, 45, 12, "patch")
    for image_id in (0, 1, 2):
        np.testing.assert_allclose(
            viewer.similarity_map(result, image_id),
            reference.similarity_map(expected, image_id),
            atol=1e-6,
        )

    # A file replaced or removed since the start: a clear error naming the file (not its path,
    # which the page never sees), not maps that no longer match the image shown.
    viewer.image(2)  # the one display image kept: 0 and 1 are read again when asked for
    server = create_server(viewer, port=0, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "eye1.png")
        (tmp_path / "images" / "eye0.png").unlink()
        setup = {**setup, **address(server)}
        for path, message in [
            ("/api/image/1.png", "eye1 (eye1.png) changed since the viewer started"),
            ("/api/clusters/1.png", "eye1 (eye1.png) changed since the viewer started"),
            ("/api/segmentation/0.png", "cannot read eye0 (eye0.png) again: file not found"),
            ("/api/similarity?image=2&x=1&y=1&level=pixel", "cannot read eye0 (eye0.png) again"),
        ]:
            status, data = get_json(setup, path)
            assert status == 422 and data["error"].startswith(message), (path, data)
            assert str(tmp_path) not in data["error"]
        assert get(setup, "/api/image/2.png")[0] == 200  # the others keep working
    finally:
        server.shutdown()
        server.server_close()


class QuickEmbed:
    """Wraps a model: unit vectors from a fixed projection of the pixels, without a forward
    pass (the network under tracemalloc is slow)."""

    def __init__(self, model):
        self.model = model
        self.weights = torch.randn(model.config.dim, 3, generator=torch.Generator().manual_seed(0))

    def embed(self, image):
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1) - 0.5
        v = torch.einsum("dc,chw->dhw", self.weights, x)
        return v / v.norm(dim=0, keepdim=True).clamp_min(1e-6)

    def __getattr__(self, name):
        return getattr(self.model, name)


def held_bytes(*roots: object) -> int:
    """Bytes of the arrays, tensors and byte strings reachable from ``roots``, each counted once
    (tracemalloc does not see torch's allocations, and similarity maps are torch's)."""
    import gc
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    seen: set[int] = set()
    storages: set[int] = set()
    total, stack = 0, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, np.ndarray):
            if obj.base is None:
                total += obj.nbytes
            else:
                stack.append(obj.base)  # a view, or a tensor's memory: counted once, there
        elif isinstance(obj, bytes):
            total += len(obj)
        else:
            stack.extend(gc.get_referents(obj))
    return total


def test_a_query_keeps_its_maps_within_the_cache(setup, tmp_path):
    # A query held a full-size float map of every image whatever --cache-mb said (1 MiB each at
    # 512 px: 5 GiB for 5000 images), and joined a quarter of each for the colour range's median.
    import gc
    import tracemalloc
    from dataclasses import replace

    loaded = replace(setup["loaded"], model=QuickEmbed(setup["loaded"].model))

    def query_peak(files) -> tuple[int, Viewer]:
        """Bytes (numpy's) that a query allocates at most on top of what was there."""
        viewer = Viewer(loaded, files, size=64, cache_mb=0.25)
        viewer.query(0, 1, 1, "pixel")  # one-time allocations; its summaries stay meanwhile
        gc.collect()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        viewer.query(1, 20, 30, "pixel")
        return tracemalloc.get_traced_memory()[1] - start, viewer

    few = write_noise_images(tmp_path / "few", 10, size=64)
    many = write_noise_images(tmp_path / "many", 90, size=64)
    tracemalloc.start()
    try:
        small, _ = query_peak(few)
        large, viewer = query_peak(many)
    finally:
        tracemalloc.stop()
    one = 64 * 64 * 4  # a similarity map
    # A few numbers per image (the ranking, the page's JSON), not a quarter of its map (twice).
    assert (large - small) / 80 < one / 8, f"{(large - small) / 80 / 1024:.1f} KiB per image"
    caches = (viewer._embeddings, viewer._queries, viewer._images, viewer._renders)
    # Over their shares by the one value each just put, never by more: here one display image.
    bound = sum(cache.limit for cache in caches) + 64 * 64 * 3 * 4
    assert viewer._queries.bytes <= viewer._queries.limit
    assert held_bytes(*caches, viewer._latest) <= bound, held_bytes(*caches, viewer._latest)
    # The page then asks for every heatmap: maps not kept are computed again, within the cache.
    result = viewer.query(1, 20, 30, "pixel")
    for entry in viewer.entries:
        assert viewer.heatmap_png(result, entry.id)
    assert viewer.query(1, 20, 30, "pixel") is result  # no second scan
    assert held_bytes(*caches, viewer._latest) <= bound + one


def test_an_evicted_similarity_map_is_computed_again_to_the_same_heatmap(setup):
    files = collect_images([setup["root"] / "images"])
    query = (2, 45, 12, "patch")
    # Every map fits: they are all kept. Dropped, each is computed again to the same bytes.
    viewer = Viewer(setup["loaded"], files, size=SIZE)
    result = viewer.query(*query)
    first = [viewer.heatmap_png(result, i) for i in range(3)]
    maps = [k for k in viewer._queries.snapshot() if k[0] == "map"]
    assert sorted(k[2] for k in maps) == [0, 1, 2]
    for key in maps:
        viewer._queries.discard(key)
    assert [viewer.heatmap_png(result, i) for i in range(3)] == first
    assert viewer.similarity_json(*query) == setup["viewer"].similarity_json(*query)

    # Room for the query's own map (64 x 53) and its best match's, not the third: the same
    # answers, the map not kept computed again when the page asks for it.
    small = Viewer(setup["loaded"], files, size=SIZE, cache_mb=0.28125)
    assert (
        64 * 53 * 4 + 64 * 64 * 4
        < small._queries.limit - 3 * MATCH_BYTES
        < 64 * 53 * 4 + 2 * 64 * 64 * 4
    )
    data = small.similarity_json(*query)
    assert data == viewer.similarity_json(*query)
    kept = {k[2] for k in small._queries.snapshot() if k[0] == "map"}
    assert kept == {2, data["matches"][0]["id"]}
    result_small = small.query(*query)
    own = small.heatmap_png(result_small, 2)
    worst = data["matches"][1]["id"]
    for i in (worst, data["matches"][0]["id"]):  # computed again, it evicts the least recent
        assert small.heatmap_png(result_small, i) == first[i]
        np.testing.assert_array_equal(
            small.similarity_map(result_small, i), viewer.similarity_map(result, i)
        )
    assert ("map", query, 2) not in small._queries
    assert small.heatmap_png(result_small, 2) == own == first[2]  # computed again: the same


def test_the_median_from_a_histogram_is_within_a_bin():
    rng = np.random.default_rng(0)
    maps = [np.clip(rng.normal(0.3, 0.4, (9, 7)), -1, 1).astype(np.float32) for _ in range(5)]
    maps[1][:] = 0.25  # ties
    maps[2][0, :3] = [-0.0, 0.0, -1.0]
    maps[3][0, :2] = [1.0, np.float32(1e-30)]
    for count in range(1, 6):  # odd and even numbers of values
        samples = [m[::2, ::2] for m in maps[:count]]  # strided views, as the viewer passes them
        for group in (samples, [s[:1, :1] for s in samples]):
            joined = np.concatenate([s.ravel() for s in group])
            counts = np.zeros(BINS, np.int64)
            for s in group:
                add_to_histogram(counts, s)
            assert counts.sum() == joined.size
            assert abs(histogram_median(counts) - float(np.median(joined))) <= 2 / BINS


class WhereInView(torch.nn.Module):
    """A stand-in fundus model that embeds each pixel as where it lies in the image it is shown
    (colours of ``sphere_field``): a match then tells what the model was shown."""

    config = LDConfig(width=4, dim=3, clusters=4, depth=2)

    def embed(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(sphere_field(*image.shape[:2])).permute(2, 0, 1)

    def cluster(self, image: np.ndarray) -> torch.Tensor:
        """One-hot clusters by which third of the image's width and height a pixel lies in
        (``(column + 2 * row) % 4``: neighbouring thirds differ)."""
        h, w = image.shape[:2]
        cols = np.arange(w) * 3 // w
        rows = np.arange(h) * 3 // h
        labels = torch.from_numpy((cols[None, :] + 2 * rows[:, None]) % 4)
        return F.one_hot(labels, 4).permute(2, 0, 1).float()


def framed_photographs(folder: Path) -> list[tuple[str, Path]]:
    """One fundus photograph on a narrow black frame (96 x 96) and on a wide 3:2 one (96 x
    144), as ``(name, file)``: the retina 24 file pixels further right on the wide one."""
    image = synthetic_fundus(64, seed=3).image
    files = []
    for name, border in (("plain", 16), ("wide", 40)):
        padded = np.pad(image, ((16, 16), (border, border), (0, 0)))
        files.append((name, folder / f"{name}.png"))
        Image.fromarray(np.round(padded * 255).astype(np.uint8)).save(files[-1][1])
    return files


def test_a_fundus_photograph_on_a_wide_black_frame_is_seen_as_its_field_of_view(tmp_path):
    # Pre-training crops fundus photographs to their FOV (data.pool); the viewer embedded the
    # display image whole, so a 3:2 camera frame showed the model the retina at another scale
    # and place than a photograph without the frame: points matched 6-9 pixels off here.
    from localdisc.tasks.similarity import LoadedModel, PatchKernel

    files = framed_photographs(tmp_path)
    viewer = Viewer(LoadedModel(WhereInView(), PatchKernel(8), 96), files, size=96)  # type: ignore[arg-type]
    assert viewer.entries[1].shape == (64, 96)  # shown at 2/3 of the file's size
    for level in ("pixel", "patch"):
        for x, y in ((30, 40), (60, 50), (48, 20), (70, 70)):
            wide = viewer.query(0, x, y, level).matches[1]  # its best match on the wide frame
            fx, fy = viewer.entries[1].file_point(*wide.best)
            # Within a display pixel (1.5 file pixels) of the same place of the photograph.
            assert abs(fx - 24 - x) <= 1.5 and abs(fy - y) <= 1.5, (level, (x, y), (fx, fy))


def test_a_fundus_photograph_on_a_wide_black_frame_is_clustered_as_its_field_of_view(tmp_path):
    # The cluster overlay ran the model on the whole display image: on a 3:2 camera frame the
    # retina was clustered at another scale than in pre-training and than the similarity maps
    # (here the clusters' borders lay 8 file pixels off those of the unframed photograph).
    from localdisc.tasks.similarity import LoadedModel, PatchKernel

    files = framed_photographs(tmp_path)
    loaded = LoadedModel(WhereInView(), PatchKernel(8), 96)  # type: ignore[arg-type]
    viewer = Viewer(loaded, files, size=96)
    plain, wide = viewer.labels(0), viewer.labels(1)
    assert plain.shape == (96, 96) and wide.shape == (64, 96)  # the wide one at 2/3
    for y in range(64):
        for x in range(96):
            fx, fy = viewer.entries[1].file_point(x, y)
            # The same place of the photograph (nearest-neighbour labels: within a file pixel);
            # beyond the crop, the nearest crop pixel's, as the similarity maps there.
            px = min(max(round(fx - 24), 0), 95)
            near = plain[max(round(fy) - 1, 0) : round(fy) + 2, max(px - 1, 0) : px + 2]
            assert wide[y, x] in near, ((x, y), wide[y, x], near)
    # A model that is not framed (a radiograph's) still clusters the display image whole.
    loaded.frame_fundus = False
    whole = Viewer(loaded, files[1:], size=96)
    expected = WhereInView().cluster(whole.image(0)).argmax(0).numpy()
    np.testing.assert_array_equal(whole.labels(0), expected)


def on_display(sim: np.ndarray, entry) -> np.ndarray:
    """A map on the file's pixels sampled bilinearly at the display pixels' centres (the
    nearest file pixel's beyond the file): one axis, then the other."""
    (w, h), (dh, dw) = entry.original, entry.shape
    cols, rows = from_resized((np.arange(dw), np.arange(dh)), (dw / w, dh / h))
    across = np.stack([np.interp(cols, np.arange(w), row) for row in sim.astype(np.float64)])
    return np.stack([np.interp(rows, np.arange(h), col) for col in across.T], axis=1)


@pytest.mark.parametrize("level", ["pixel", "patch"])
def test_a_framed_fundus_images_maps_are_the_librarys(tmp_path, level):
    # The viewer pooled a fundus model's patches on the display pixels with the kernel rescaled,
    # sampled its pixel embeddings there (normalised again) and took the query's vector there:
    # its cosines differed from `similarity`'s by up to 0.03 here, its best matches moved.
    from localdisc.tasks.similarity import LoadedModel, PatchKernel

    torch.manual_seed(0)
    model = LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)).eval()
    loaded = LoadedModel(model, PatchKernel(8), 96)
    files = framed_photographs(tmp_path)  # shown at 92/96 and 92/144 of the files' sizes
    viewer = Viewer(loaded, files, size=92)
    raws = [read_image(path)[0] for _, path in files]
    # Both fields of view are 92 px: `similarity` at 92 keeps them as they are, as the viewer.
    for image, x, y in [(0, 30, 40), (1, 60, 50), (1, 4, 60)]:
        entry = viewer.entries[image]
        (w, h), (dh, dw) = entry.original, entry.shape
        point = from_resized((x, y), (dw / w, dh / h))
        ref = similarity(loaded, raws[image], [point], raws, level=level, size=92)
        result = viewer.query(image, x, y, level)
        for target, maps in enumerate(ref.targets):
            expected = on_display(maps[0], viewer.entries[target])
            got = viewer.similarity_map(result, target)
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{(image, x, y)}")
            bx, by = result.matches[target].best
            assert expected[by, bx] >= expected.max() - 1e-5
    # At 96 both enlarge the fields of view (the viewer kept them at 92: 0.06 off). Where the
    # display image is the file (the plain one), the maps agree on the field of view; beyond
    # it each repeats its edge, sampled from the working pixels or the file's.
    viewer = Viewer(loaded, files, size=96)
    y0, y1, x0, x1 = viewer.framing(0).box
    for image, x, y in [(0, 30, 40), (1, 60, 50)]:
        entry = viewer.entries[image]
        (w, h), (dh, dw) = entry.original, entry.shape
        point = from_resized((x, y), (dw / w, dh / h))
        ref = similarity(loaded, raws[image], [point], raws[:1], level=level, size=96)
        got = viewer.similarity_map(viewer.query(image, x, y, level), 0)
        np.testing.assert_allclose(
            got[y0:y1, x0:x1], ref.targets[0][0][y0:y1, x0:x1], atol=1e-5, err_msg=f"{image}"
        )
    # A model that is not framed (a radiograph's) sees the display images, as before.
    loaded.frame_fundus = False
    whole = Viewer(loaded, files, size=96)
    displays = [whole.image(0), whole.image(1)]
    ref = similarity(loaded, displays[1], [(60, 50)], displays, level=level, size=96)
    result = whole.query(1, 60, 50, level)
    for target, maps in enumerate(ref.targets):
        np.testing.assert_allclose(whole.similarity_map(result, target), maps[0], atol=1e-6)


def load_model_in_memory(model: LDModel) -> LoadedModel:
    """``model`` as a run's (kernel 8, pool 96), without a run folder."""
    return LoadedModel(model.eval(), PatchKernel(8), 96)


def test_each_file_is_decoded_once_at_the_start_and_framed_then(tmp_path, monkeypatch):
    # A fundus image's framing was worked out when its embeddings were first made, by decoding
    # its file again (and once more for its clusters): until then embedding_bytes could only
    # guess the embeddings' size, and the warm-up decoded each file twice more.
    import localdisc.viewer.server as server

    decoded: list[str] = []

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return read_image(path, *args, **kwargs)

    monkeypatch.setattr(server, "read_image", counting)
    files = framed_photographs(tmp_path)
    torch.manual_seed(0)
    loaded = load_model_in_memory(LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)))
    viewer = Viewer(loaded, files, size=64)
    assert sorted(decoded) == ["plain.png", "wide.png"]
    for entry in viewer.entries:  # known from the start, with no file decoded again
        assert viewer.framing(entry.id) is not None and viewer.embedding_bytes(entry.id)
        assert viewer.working_pixel(entry.id, 30, 20, (8, *entry.grid))
    assert sorted(decoded) == ["plain.png", "wide.png"]
    # The working images are made when the model needs them: once for clusters and embeddings.
    viewer.warm_up().join(60)
    status = viewer.progress()
    assert status["embeddings"]["pixel"] == 2 and status["clusters"] == 2
    viewer.query(1, 10, 20, "patch")
    assert sorted(decoded) == ["plain.png", "plain.png", "wide.png", "wide.png"]


def test_the_framing_at_the_start_is_the_working_images(tmp_path):
    # The viewer frames each image at the start without resizing it (most images of a large
    # folder are embedded long after); the box and sizes must be those of the working image
    # the model is then shown, or the maps would be sampled at the wrong places.
    from localdisc.tasks.similarity import working_image

    rng = np.random.default_rng(0)
    files = []
    # Fields of view larger and smaller than the working size, odd sides, and one that fills
    # its file (framed only where its working image is not the display image: where it is
    # enlarged, at 64 and 200).
    for i, (h, w, top, left) in enumerate([(97, 203, 3, 40), (70, 50, 20, 18), (61, 61, 0, 0)]):
        image = rng.integers(60, 256, (h, w, 3), np.uint8)
        image[:top], image[h - top :], image[:, :left], image[:, w - left :] = 0, 0, 0, 0
        files.append((f"eye{i}", tmp_path / f"eye{i}.png"))
        Image.fromarray(image).save(files[-1][1])
    framed = 0
    for size in (64, 16, 200):
        loaded = load_model_in_memory(LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)))
        viewer = Viewer(loaded, files, size=size)
        for entry in viewer.entries:
            raw = read_image(entry.path)[0]
            small, framing = working_image(loaded, raw, size)
            assert entry.grid == small.shape[:2], (size, entry.name)
            if entry.framing is None:  # the model sees the display image
                assert framing.box == (0, raw.shape[0], 0, raw.shape[1])
                np.testing.assert_array_equal(small, viewer.image(entry.id))
            else:
                assert entry.framing == framing, (size, entry.name)
                framed += 1
    assert framed == 3 + 2 + 3  # at 16 the one that fills its file is the display image


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_embedding_bytes_are_those_of_the_embeddings_kept(tmp_path, modality):
    # A fundus image's working grid (its field of view at the working size) was unknown until
    # its embeddings were made: embedding_bytes guessed a square of the display image's longer
    # side (9 % over here), so the warm-up's cache budget was wrong.
    torch.manual_seed(0)
    config = LDConfig(width=4, dim=8, clusters=4, depth=2, modality=modality)
    viewer = Viewer(load_model_in_memory(LDModel(config)), framed_photographs(tmp_path), size=96)
    for entry in viewer.entries:
        expected = viewer.embedding_bytes(entry.id)
        for level in ("pixel", "patch"):
            assert viewer.embeddings(entry.id, level).nbytes == expected, (entry.name, level)
    if modality == "fundus":  # the 92 px field of view enlarged, not the 96 px display image
        assert viewer.embeddings(0, "pixel").shape[1:] == (96, 96)
        assert viewer.framing(0) is not None


@pytest.mark.parametrize("level", ["pixel", "patch"])
def test_an_image_smaller_than_the_working_size_is_embedded_at_it(tmp_path, level):
    # `similarity` and `localize` enlarge an image smaller than the working size to it (the
    # scale of pre-training's pool); the viewer embedded it at its own size, so its maps
    # differed from theirs by up to 0.1 here and its best matches moved.
    torch.manual_seed(0)
    loaded = load_model_in_memory(LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)))
    rng = np.random.default_rng(2)
    files = []
    for i, (h, w) in enumerate([(37, 48), (41, 29)]):  # both smaller than the pool's 96
        image = F.avg_pool2d(torch.from_numpy(rng.random((3, h + 4, w + 4))), 5, 1)
        image = (image - image.min()) / (image.max() - image.min())
        files.append((f"small{i}", tmp_path / f"small{i}.png"))
        Image.fromarray(np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            files[-1][1]
        )
    viewer = Viewer(loaded, files)  # the default working size: the pool's, as `similarity`'s
    raws = [read_image(path)[0] for _, path in files]
    for image, x, y in [(0, 20, 11), (1, 3, 38), (0, 47, 0)]:
        ref = similarity(loaded, raws[image], [(x, y)], raws, level=level)
        result = viewer.query(image, x, y, level)
        assert viewer.entries[image].file_point(x, y) == [x, y]
        for target, maps in enumerate(ref.targets):
            got = viewer.similarity_map(result, target)
            # A random model's cosines are all near 1: equal to float rounding, well within their
            # spread (1e-4 here), and the best match is the library's maximum (ties aside).
            np.testing.assert_allclose(got, maps[0], atol=1e-6, err_msg=f"{(image, x, y)}")
            bx, by = result.matches[target].best
            assert maps[0][by, bx] >= maps[0].max() - 1e-6, (image, x, y, target)
    for entry, raw in zip(viewer.entries, raws, strict=True):
        assert entry.shape == raw.shape[:2]  # shown at its own size, never enlarged
        assert max(entry.grid) == 96  # embedded at the working size
        assert viewer.embedding_bytes(entry.id) == viewer.embeddings(entry.id, level).nbytes


def test_a_coordinate_is_a_plain_decimal_number_never_cut_short(setup):
    # x was read from its first 32 characters: a longer spelling of 12 was queried as pixel 0,
    # answered 200; Python's float syntax also let 1_0 and exponents through.
    refused = ["0" * 32 + "12", "12." + "0" * 40, "1.0e1", "1e1", "1_0", "0x1", " 12", "12 ",
               "\u0661\u0662", "+", ".", "1.2.3", "--1", "inf", "nan"]  # fmt: skip
    for x in refused:
        status, data = get_json(setup, f"/api/similarity?image=0&x={urllib.parse.quote(x)}&y=5")
        assert status == 400 and "x must be" in data["error"], x
    # The longest accepted is 32 characters; fractions are floored, as before.
    for x, expected in [("12", 12), ("12." + "0" * 29, 12), ("+3.9", 3), ("7.", 7), (".5", 0),
                        ("-0", 0), ("0" * 30 + "12", 12)]:  # fmt: skip
        status, data = get_json(setup, f"/api/similarity?image=0&x={urllib.parse.quote(x)}&y=5")
        assert status == 200 and data["query"]["x"] == expected, x


def test_a_strip_thinner_than_a_working_pixel_is_still_shown_and_queried(tmp_path):
    # Shown 1 px high, as always; embedded at the working size (where `similarity` made it 0 px
    # high and failed), it must keep that one pixel rather than fail on every query.
    loaded = load_model_in_memory(LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)))
    files = [("strip", tmp_path / "strip.png")]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2, 300, 3), np.uint8)).save(
        files[0][1]
    )
    viewer = Viewer(loaded, files)
    assert viewer.entries[0].shape == viewer.entries[0].grid == (1, 96)
    result = viewer.query(0, 40, 0, "patch")
    assert viewer.similarity_map(result, 0).shape == (1, 96)
    assert viewer.labels(0).shape == (1, 96)
