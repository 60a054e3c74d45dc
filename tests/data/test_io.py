"""Tests for localdisc.data.io: every format round-trips, masks decode right, bad input fails
cleanly with ImageReadError naming the file. Fixtures are generated in tmp_path."""

from __future__ import annotations

import gzip
import io
import logging
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from localdisc.data import io as lio
from localdisc.data.io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageMeta,
    is_image_file,
    read_image,
    read_image_meta,
    read_mask,
    set_max_pixels,
)
from localdisc.errors import ImageReadError, ReaderSetupError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch):
    # Each test starts from the default pixel limit, whatever the environment says.
    monkeypatch.delenv(lio.MAX_PIXELS_ENV, raising=False)
    set_max_pixels(None)
    yield
    set_max_pixels(None)


@pytest.fixture(autouse=True)
def _header_agrees(monkeypatch: pytest.MonkeyPatch):
    """Every file a test here reads, read_image_meta reads alike: the meta read_image (or
    read_mask) finds, the array's height and width, or where it reads the header alone and
    refuses the file, the decoder's very error."""
    decode = lio._decode

    def checked(path: Path, max_pixels: int | None) -> lio._Decoded:
        try:
            decoded = decode(path, max_pixels)
        except ImageReadError as exc:
            try:
                read_image_meta(path, max_pixels=max_pixels)
            except ImageReadError as refused:  # else: the pixels are what is wrong
                assert (type(refused), str(refused)) == (type(exc), str(exc))
            raise
        meta = read_image_meta(path, max_pixels=max_pixels)
        assert meta == decoded.meta
        assert decoded.pixels.shape[:2] == (meta.height, meta.width)
        return decoded

    monkeypatch.setattr(lio, "_decode", checked)


def _save(arr: np.ndarray, path: Path, mode: str | None = None, **kwargs) -> Path:
    Image.fromarray(arr, mode=mode).save(path, **kwargs) if mode else Image.fromarray(arr).save(
        path, **kwargs
    )
    return path


def _check_image(img: np.ndarray, shape: tuple[int, ...]) -> None:
    assert img.dtype == np.float32
    assert img.shape == shape
    assert img.flags.c_contiguous
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


def _expect_error(path: Path, match: str | None = None, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    assert str(path) in str(info.value)
    if match is not None:
        assert match in str(info.value), str(info.value)
    return info.value


# ----------------------------------------------------------------------------- suffixes


def test_is_image_file_by_suffix_case_insensitive() -> None:
    for name in ["a.png", "B.PNG", "c.JpEg", "im0001.ah.ppm.gz", "X.PGM.GZ", "JPCLN001.IMG"]:
        assert is_image_file(name), name
    for name in ["a.txt", "b.gz", "c.png.gz", "d", "e.nii.gz", ".png"]:
        assert not is_image_file(name), name
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    for required in [".ppm.gz", ".pgm.gz", ".img", ".dcm", ".npy", ".tif", ".tiff", ".gif"]:
        assert required in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------- Pillow formats


def test_png_grey_rgb_rgba_la_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)

    img, meta = read_image(_save(grey, tmp_path / "g.png"))
    _check_image(img, (7, 9, 1))
    np.testing.assert_array_equal(img[..., 0], grey / np.float32(255))
    assert meta == ImageMeta(tmp_path / "g.png", "png", 8, 7, 9, 1)

    img, meta = read_image(str(_save(rgb, tmp_path / "c.png")))
    _check_image(img, (7, 9, 3))
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert isinstance(meta.path, Path) and meta.channels == 3

    img, meta = read_image(_save(rgba, tmp_path / "a.png"))
    _check_image(img, (7, 9, 3))
    np.testing.assert_array_equal(img, rgba[..., :3] / np.float32(255))
    assert meta.channels == 4

    la = np.stack([grey, 255 - grey], axis=-1)
    img, meta = read_image(_save(la, tmp_path / "la.png", mode="LA"))
    _check_image(img, (7, 9, 1))
    np.testing.assert_array_equal(img[..., 0], grey / np.float32(255))
    assert meta.channels == 2


def test_png_16bit_keeps_range(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 3], [1000, 40000, 65535]], dtype=np.uint16)
    img, meta = read_image(_save(arr, tmp_path / "w.png"))
    _check_image(img, (2, 3, 1))
    np.testing.assert_allclose(img[..., 0], arr / 65535.0, rtol=1e-6)
    assert meta.bit_depth == 16 and meta.format == "png"


def test_png_16bit_colour_is_read_at_8_bits_as_documented(tmp_path: Path) -> None:
    # Pillow, our only PNG decoder, reduces 16-bit RGB to 8 bits; the module doc says so. If
    # this fails, a decoder keeps 16 bits now: update the module doc and this test.
    arr = np.array([[[0, 257, 65535], [1000, 2000, 3000]]], dtype=np.uint16)
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path = tmp_path / "rgb16.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    img, meta = read_image(path)
    _check_image(img, (1, 2, 3))
    np.testing.assert_allclose(img, (arr >> 8) / 255.0, atol=1e-6)
    assert meta.bit_depth == 8 and meta.channels == 3
    assert "16-bit *colour* PNGs" in (lio.__doc__ or "")


def test_jpeg_round_trip_within_tolerance(tmp_path: Path) -> None:
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.stack([x * 5, y * 7, 255 - x * 5], axis=-1).astype(np.uint8)
    img, meta = read_image(_save(rgb, tmp_path / "c.jpg", quality=95))
    _check_image(img, (32, 48, 3))
    assert np.abs(img - rgb / 255.0).mean() < 0.02
    assert meta.format == "jpeg" and meta.channels == 3

    img, meta = read_image(_save(rgb[..., 0], tmp_path / "g.jpeg", quality=95))
    _check_image(img, (32, 48, 1))
    assert np.abs(img[..., 0] - rgb[..., 0] / 255.0).mean() < 0.02


def test_bmp_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    img, meta = read_image(_save(rgb, tmp_path / "c.bmp"))
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert meta.format == "bmp"


def test_gif_palette_colour_and_grey(tmp_path: Path, rng: np.random.Generator) -> None:
    palette = [0, 0, 0, 255, 0, 0, 0, 128, 255, 10, 200, 30]
    index = rng.integers(0, 4, (6, 8), dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "c.gif")
    img, meta = read_image(tmp_path / "c.gif")
    _check_image(img, (6, 8, 3))
    colours = np.array(palette, dtype=np.float32).reshape(-1, 3) / 255
    np.testing.assert_array_equal(img, colours[index])
    assert meta.format == "gif" and meta.channels == 3

    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    _save(grey, tmp_path / "g.gif")
    img, meta = read_image(tmp_path / "g.gif")
    _check_image(img, (6, 8, 1))
    np.testing.assert_array_equal(img[..., 0], grey / np.float32(255))


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 5), v, dtype=np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img, _ = read_image(tmp_path / "anim.gif")
    np.testing.assert_allclose(img, 10 / 255, atol=1e-6)


def test_ppm_and_pgm(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img, meta = read_image(_save(rgb, tmp_path / "c.ppm"))
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert (meta.format, meta.bit_depth, meta.channels) == ("ppm", 8, 3)

    grey16 = np.array([[0, 2, 65535], [300, 30000, 65534]], dtype=np.uint16)
    path = tmp_path / "g16.pgm"
    path.write_bytes(b"P5\n# a comment\n3 2\n65535\n" + grey16.astype(">u2").tobytes())
    img, meta = read_image(path)
    np.testing.assert_allclose(img[..., 0], grey16 / 65535.0, rtol=1e-6)
    assert (meta.format, meta.bit_depth, meta.channels) == ("pgm", 16, 1)

    # maxval 4095: the true bit depth is 12, full scale 4095.
    grey12 = np.array([[0, 1, 4095]], dtype=np.uint16)
    path = tmp_path / "g12.pgm"
    path.write_bytes(b"P5 3 1 4095\n" + grey12.astype(">u2").tobytes())
    img, meta = read_image(path)
    np.testing.assert_allclose(img[..., 0], grey12 / 4095.0, rtol=1e-6)
    assert meta.bit_depth == 12

    # 16-bit colour keeps its precision (Pillow alone would cut it to 8 bits).
    rgb16 = np.array([[[0, 1000, 65535], [7, 40000, 2]]], dtype=np.uint16)
    path = tmp_path / "c16.ppm"
    path.write_bytes(b"P6\n2 1\n65535\n" + rgb16.astype(">u2").tobytes())
    img, meta = read_image(path)
    np.testing.assert_allclose(img, rgb16 / 65535.0, rtol=1e-6)
    assert (meta.format, meta.bit_depth, meta.channels) == ("ppm", 16, 3)


def test_gzipped_ppm_and_pgm(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PPM")
    path = tmp_path / "im0001.PPM.GZ"
    path.write_bytes(gzip.compress(buf.getvalue()))
    img, meta = read_image(path)
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert meta.format == "ppm"

    grey16 = np.array([[0, 9, 65535]], dtype=np.uint16)
    path = tmp_path / "x.pgm.gz"
    path.write_bytes(gzip.compress(b"P5\n3 1\n65535\n" + grey16.astype(">u2").tobytes()))
    img, meta = read_image(path)
    np.testing.assert_allclose(img[..., 0], grey16 / 65535.0, rtol=1e-6)
    assert meta.bit_depth == 16


def test_content_decides_over_suffix(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path / "actually_jpeg.png"
    Image.fromarray(rgb).save(path, format="JPEG")
    img, meta = read_image(path)
    _check_image(img, (8, 8, 3))
    assert meta.format == "jpeg"

    path = tmp_path / "actually_tiff.png"
    tifffile.imwrite(path, rgb[..., 0])
    img, meta = read_image(path)
    np.testing.assert_array_equal(img[..., 0], rgb[..., 0] / np.float32(255))
    assert meta.format == "tiff"


def test_exif_orientation_ignored(tmp_path: Path) -> None:
    # Masks are aligned to the stored pixel grid, so images must not be rotated by EXIF.
    arr = np.zeros((4, 6), dtype=np.uint8)
    arr[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90"
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    img, _ = read_image(tmp_path / "r.png")
    assert img.shape == (4, 6, 1) and img[0, 0, 0] == 1.0


def test_read_image_meta_reads_headers_not_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking the size and pixel spacing of large images (`localize --truth`) decoded each
    one. read_image_meta gives read_image's meta from the header of PNG, JPEG (EXIF rotation
    ignored, as read_image does), BMP, TIFF, 16-bit PGM, DICOM and JSRT .IMG; palette images
    and gzipped netpbm, whose meta the pixels decide, are decoded."""
    pytest.importorskip("pydicom")
    import pydicom.pixels

    grey = np.arange(24, dtype=np.uint8).reshape(4, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90"
    pgm = tmp_path / "g16.pgm"
    pgm.write_bytes(b"P5\n6 4\n4095\n" + (grey.astype(np.uint16) * 100).astype(">u2").tobytes())
    headers = [
        _save(grey, tmp_path / "g.png"),
        _save(np.stack([grey] * 3, axis=-1), tmp_path / "r.jpg", exif=exif),
        _save(grey, tmp_path / "g.bmp"),
        _save(grey.astype(np.uint16) * 200, tmp_path / "g16.png"),
        tifffile.imwrite(tmp_path / "t.tif", grey) or tmp_path / "t.tif",
        pgm,
        _write_dicom(
            tmp_path / "d.dcm",
            grey.astype(np.uint16),
            bits_stored=12,
            ImagerPixelSpacing=[0.2, 0.1],
            EstimatedRadiographicMagnificationFactor=2,
        ),
        _write_jsrt(tmp_path / "j.IMG", np.zeros((2048, 2048), np.uint16)),
    ]
    palette = tmp_path / "p.png"
    Image.fromarray(grey).convert("P").save(palette)
    packed = tmp_path / "g.pgm.gz"
    packed.write_bytes(gzip.compress(b"P5\n6 4\n255\n" + grey.tobytes()))
    expected = {path: read_image(path)[1] for path in [*headers, palette, packed]}
    assert expected[headers[1]].height == 4 and expected[headers[-2]].spacing == (0.1, 0.05)

    decoded: list[str] = []

    def counted(real, name: str):
        def call(*args, **kwargs):
            decoded.append(name)
            return real(*args, **kwargs)

        return call

    for owner, name in (
        (lio, "_pil_load"),
        (lio, "_decode_netpbm16"),
        (lio.np, "fromfile"),  # JSRT
        (tifffile.TiffPage, "asarray"),
        (pydicom.pixels, "pixel_array"),
    ):
        monkeypatch.setattr(owner, name, counted(getattr(owner, name), name))
    for path in headers:
        assert read_image_meta(path) == expected[path], path
    assert decoded == []
    for path in (palette, packed):
        assert read_image_meta(path) == expected[path]
    assert decoded == ["_pil_load", "_pil_load"]
    # Refused from the header as read_image refuses it.
    with pytest.raises(ImageReadError, match="over the limit of 20 pixels"):
        read_image_meta(headers[0], max_pixels=20)


# ----------------------------------------------------------------------------- TIFF


def test_tiff_8_and_16_bit(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    img, meta = read_image(tmp_path / "g.tif")
    np.testing.assert_array_equal(img[..., 0], grey / np.float32(255))
    assert meta == ImageMeta(tmp_path / "g.tif", "tiff", 8, 5, 6, 1)

    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    img, _ = read_image(tmp_path / "c.tiff")
    np.testing.assert_array_equal(img, rgb / np.float32(255))

    # 16 bit: small values must stay small (no rescale to the data's own maximum).
    grey16 = np.array([[0, 3, 100], [1000, 20000, 65535]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", grey16)
    img, meta = read_image(tmp_path / "g16.tif")
    np.testing.assert_allclose(img[..., 0], grey16 / 65535.0, rtol=1e-6)
    assert meta.bit_depth == 16
    dark = np.array([[0, 3, 100]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "dark16.tif", dark)
    img, _ = read_image(tmp_path / "dark16.tif")
    assert img.max() == pytest.approx(100 / 65535)

    rgb16 = rng.integers(0, 65536, (4, 3, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    img, _ = read_image(tmp_path / "c16.tif")
    np.testing.assert_allclose(img, rgb16 / 65535.0, rtol=1e-6)

    # planar (separate) RGB and RGBA
    tifffile.imwrite(
        tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    img, _ = read_image(tmp_path / "planar.tif")
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=-1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    img, meta = read_image(tmp_path / "rgba.tif")
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert meta.channels == 4


def test_tiff_multipage_first_page_and_miniswhite(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.full((4, 4), 50, np.uint8))
    tifffile.imwrite(path, np.full((4, 4), 200, np.uint8), append=True)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 2
    img, _ = read_image(path)
    np.testing.assert_allclose(img, 50 / 255, atol=1e-6)

    arr = np.array([[0, 255, 55]], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", arr, photometric="miniswhite")
    img, _ = read_image(tmp_path / "mw.tif")
    np.testing.assert_allclose(img[..., 0], 1 - arr / 255.0, atol=1e-6)
    # A mask means its stored values (255 = foreground), as tifffile, scikit-image and ImageJ
    # read them; this once asserted the display inversion, [[True, False, True]].
    np.testing.assert_array_equal(read_mask(tmp_path / "mw.tif"), [[False, True, False]])


def test_tiff_lzw_and_palette(tmp_path: Path, rng: np.random.Generator) -> None:
    # DRIVE ships LZW TIFFs: tifffile needs imagecodecs for those, Pillow does not.
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    img, meta = read_image(tmp_path / "lzw.tif")
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert meta.format == "tiff"

    index = rng.integers(0, 3, (4, 5), dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255, 0, 255, 0])
    im.save(tmp_path / "pal.tif")
    img, _ = read_image(tmp_path / "pal.tif")
    colours = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(img, colours[index])


def test_tiff_float_min_max(tmp_path: Path) -> None:
    arr = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    img, meta = read_image(tmp_path / "f.tif")
    np.testing.assert_allclose(img[..., 0], [[0.0, 0.5, 1.0]])
    assert meta.bit_depth == 32


def test_a_float_tiff_that_overshoots_reads_as_the_same_array_in_memory(tmp_path: Path) -> None:
    # Stretched from a file (0.1-1.2 -> 0-1), kept as they were in memory: the network saw one
    # image two ways. Within 0.5 of [0, 1] both clip now.
    from localdisc.data.preprocess import as_raw_image

    arr = np.linspace(0.1, 1.2, 12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    from_file = read_image(tmp_path / "f.tif")[0]
    np.testing.assert_array_equal(from_file[..., 0], np.clip(arr, 0, 1))
    np.testing.assert_array_equal(as_raw_image(arr), from_file)


# ----------------------------------------------------------------------------- JSRT


def _write_jsrt(path: Path, raw: np.ndarray) -> Path:
    path.write_bytes(raw.astype(">u2").tobytes())
    return path


def test_jsrt_img(tmp_path: Path, rng: np.random.Generator) -> None:
    raw = rng.integers(0, 4096, (2048, 2048), dtype=np.uint16)
    raw[0, 0], raw[0, 1] = 0, 4095
    img, meta = read_image(_write_jsrt(tmp_path / "JPCLN001.IMG", raw))
    _check_image(img, (2048, 2048, 1))
    # High raw values are dark on film: flipped so that bones come out bright.
    np.testing.assert_allclose(img[..., 0], (4095 - raw) / 4095.0, rtol=1e-6)
    assert img[0, 0, 0] == 1.0 and img[0, 1, 0] == 0.0
    assert meta == ImageMeta(
        tmp_path / "JPCLN001.IMG", "jsrt_img", 12, 2048, 2048, 1, spacing=(0.175, 0.175),
        spacing_source="JSRT",
    )  # fmt: skip


def test_jsrt_bad_size_and_values(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(b"\x00\x01" * 1000)
    err = _expect_error(path, "8,388,608")
    assert "2,000" in str(err)

    raw = np.zeros((2048, 2048), dtype=np.uint16)
    raw[5, 5] = 5000
    _expect_error(_write_jsrt(tmp_path / "mislabeled.IMG", raw), "12 bits")
    _expect_error(_write_jsrt(tmp_path / "ok.img", raw * 0), "limit", max_pixels=1000)


# ----------------------------------------------------------------------------- npy


def test_npy_dtypes_and_shapes(tmp_path: Path, rng: np.random.Generator) -> None:
    def load(name: str, arr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        np.save(tmp_path / name, arr)
        return read_image(tmp_path / name)

    u8 = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    img, meta = load("u8.npy", u8)
    np.testing.assert_array_equal(img[..., 0], u8 / np.float32(255))
    assert meta == ImageMeta(tmp_path / "u8.npy", "npy", 8, 4, 5, 1)

    u16 = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    img, meta = load("u16.npy", u16)
    np.testing.assert_allclose(img, u16 / 65535.0, rtol=1e-6)
    assert meta.bit_depth == 16 and meta.channels == 3

    big_endian = u16.astype(">u2")
    img, _ = load("be.npy", big_endian)
    np.testing.assert_allclose(img, u16 / 65535.0, rtol=1e-6)

    unit = rng.random((4, 5, 1))
    img, _ = load("f.npy", unit)
    np.testing.assert_allclose(img, unit, rtol=1e-6)

    wide = np.array([[-10.0, 0.0, 30.0]])
    img, _ = load("wide.npy", wide)
    np.testing.assert_allclose(img[..., 0], [[0.0, 0.25, 1.0]])

    const = np.full((2, 2), 7.0, dtype=np.float32)
    img, _ = load("const.npy", const)
    np.testing.assert_array_equal(img, 0.0)

    img, meta = load("b.npy", np.array([[True, False]]))
    np.testing.assert_array_equal(img[..., 0], [[1.0, 0.0]])
    assert meta.bit_depth == 1

    signed = np.array([[-100, 0, 100]], dtype=np.int16)
    img, _ = load("s.npy", signed)
    np.testing.assert_allclose(img[..., 0], [[0.0, 0.5, 1.0]])

    rgba = rng.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    img, meta = load("rgba.npy", rgba)
    np.testing.assert_array_equal(img, rgba[..., :3] / np.float32(255))
    assert meta.channels == 4


def test_npy_bad(tmp_path: Path) -> None:
    cases = {
        "nan.npy": (np.array([[0.0, np.nan]]), "NaN"),
        "inf.npy": (np.array([[0.0, np.inf]]), "NaN or infinite"),
        "vec.npy": (np.zeros(5), "shape"),
        "chw.npy": (np.zeros((3, 8, 8)), "shape"),
        "complex.npy": (np.zeros((2, 2), dtype=complex), "dtype"),
        "obj.npy": (np.array([[None, 1]], dtype=object), "dtype"),
        "vol.npy": (np.zeros((2, 2, 2, 2)), "shape"),
    }
    for name, (arr, match) in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        _expect_error(tmp_path / name, match)

    np.save(tmp_path / "full.npy", np.zeros((40, 40), dtype=np.uint16))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 100])
    _expect_error(tmp_path / "cut.npy", "truncated")
    (tmp_path / "nomagic.npy").write_bytes(b"not numpy at all")
    _expect_error(tmp_path / "nomagic.npy")
    _expect_error(tmp_path / "full.npy", "limit", max_pixels=100)


# ----------------------------------------------------------------------------- DICOM


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int = 1,
    **attrs,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    shape = pixels.shape[1:] if frames > 1 else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_min_max_and_monochrome1(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    raw = np.array([[100, 600], [1100, 4095]], dtype=np.uint16)
    img, meta = read_image(_write_dicom(tmp_path / "a.dcm", raw, bits_stored=12))
    _check_image(img, (2, 2, 1))
    np.testing.assert_allclose(img[..., 0], (raw - 100) / 3995.0, rtol=1e-6)
    assert meta == ImageMeta(tmp_path / "a.dcm", "dicom", 12, 2, 2, 1)

    img, _ = read_image(_write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(img[..., 0], 1 - (raw - 100) / 3995.0, rtol=1e-6, atol=1e-7)


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    stored = np.array([[0, 400, 500], [512, 600, 2000]], dtype=np.int16)
    path = _write_dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=401,
    )
    img, _ = read_image(path)
    hu = stored * 2.0 - 1024.0
    expected = np.clip((hu + 0.5) / 400.0 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2, centre 0 width 401
    np.testing.assert_allclose(img[..., 0], expected, atol=1e-6)
    assert img[0, 0, 0] == 0.0 and img[1, 2, 0] == 1.0  # below / above the window
    assert 0.0 < img[1, 0, 0] < 1.0  # stored 512 = 0 HU: inside only after rescaling

    # Multi-valued window: the first one is used.
    path = _write_dicom(
        tmp_path / "mw.dcm", stored.astype(np.uint16), WindowCenter=[300, 0], WindowWidth=[201, 1]
    )
    img, _ = read_image(path)
    np.testing.assert_allclose(
        img[..., 0], np.clip((stored - 299.5) / 200.0 + 0.5, 0, 1), atol=1e-6
    )


def test_dicom_voi_lut_rgb_and_frames(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add(DataElement(0x00283006, "US", [0, 50, 200, 255]))
    raw = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "lut.dcm", raw, VOILUTSequence=[item])
    img, _ = read_image(path)
    np.testing.assert_allclose(img[..., 0], np.array([[0, 50], [200, 255]]) / 255.0, atol=1e-6)

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14
    img, meta = read_image(_write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)
    assert meta.channels == 3

    stack = np.stack([np.full((3, 3), v, np.uint16) for v in (10, 20, 30)])
    stack[0, 0, 0] = 0
    img, meta = read_image(_write_dicom(tmp_path / "mf.dcm", stack, frames=3))
    expected = np.full((3, 3), 1.0)
    expected[0, 0] = 0.0
    np.testing.assert_allclose(img[..., 0], expected)
    # It was read as its first frame without a word: the commands say it (header_notes).
    from localdisc.data.io import frames_note, header_notes
    from localdisc.tasks.predict import note_headers

    assert meta.frames == 3 and read_image_meta(tmp_path / "mf.dcm").frames == 3
    single = read_image_meta(_write_dicom(tmp_path / "one.dcm", stack[0]))
    assert single.frames == 1 and frames_note([single]) is None and header_notes([single]) == []
    lines: list[str] = []
    note_headers([("one", single.path), ("mf", meta.path)], lines.append)
    assert lines == [
        f"note: 1 file(s) hold several frames, and localdisc reads the first of each (first: "
        f"{meta.path}, 3 frames): a stack, series, cine or animation is not a single image; save "
        "the frame you mean as a file of its own"
    ]


def _label_map() -> np.ndarray:
    labels = np.zeros((6, 7), np.uint8)
    labels[1:3, 1:4] = 1
    labels[3:5, 2:5] = 2
    labels[5, :] = 3
    return labels


def test_dicom_label_map_mask_reads_stored_values(tmp_path: Path) -> None:
    # A segmentation tool's label map exported as a DICOM image: 0/1/2/3 stored. Windowed (or
    # min-maxed) for display it is 0/.33/.67/1, which at half scale lost label 1; a mask means
    # its stored values, after the rescale (the real labels), not flipped for MONOCHROME1.
    pytest.importorskip("pydicom")
    labels = _label_map()
    cases = {
        "u8.dcm": (labels, {}),
        "u16.dcm": (labels.astype(np.uint16), {}),
        "u12.dcm": (labels.astype(np.uint16), {"bits_stored": 12}),
        "m1.dcm": (labels, {"photometric": "MONOCHROME1"}),
        "identity.dcm": (labels.astype(np.uint16), {"RescaleSlope": 1, "RescaleIntercept": 0}),
        "slope.dcm": (labels.astype(np.uint16) * 2, {"RescaleSlope": 0.5, "RescaleIntercept": 0}),
        "ct_window.dcm": (labels.astype(np.int16), {"WindowCenter": 40, "WindowWidth": 400}),
    }
    for name, (stored, attrs) in cases.items():
        path = _write_dicom(tmp_path / name, stored, **attrs)
        np.testing.assert_array_equal(read_mask(path), labels != 0, err_msg=name)
        assert lio.mask_labels(path) == (["1", "2", "3"], []), name
    # Read as an image it is as before: min-maxed (or windowed), MONOCHROME1 flipped.
    img, _ = read_image(tmp_path / "u16.dcm")
    np.testing.assert_allclose(img[..., 0], labels / 3.0, atol=1e-6)
    img, _ = read_image(tmp_path / "m1.dcm")
    np.testing.assert_allclose(img[..., 0], 1 - labels / 3.0, atol=1e-6)
    img, _ = read_image(tmp_path / "ct_window.dcm")
    np.testing.assert_allclose(img[..., 0], (labels - 39.5) / 399.0 + 0.5, atol=1e-6)


def test_dicom_binary_mask_with_a_window_reads_its_ones(tmp_path: Path) -> None:
    # A 0/1 mask that carries its CT's window (centre 40, width 400: both values shown near 0.4,
    # under half) or a narrow one (both shown as 0) read empty before.
    pytest.importorskip("pydicom")
    truth = _label_map() != 0
    for centre, width in ((40, 400), (100, 50), (1000, 2000)):
        path = _write_dicom(
            tmp_path / f"w{centre}.dcm",
            truth.astype(np.uint16),
            WindowCenter=centre,
            WindowWidth=width,
        )
        np.testing.assert_array_equal(read_mask(path), truth, err_msg=f"{centre}/{width}")
    # Stored 0/255 with a VOI LUT that shows 255 dark: the stored values decide.
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add(DataElement(0x00283006, "US", [255] * 255 + [0]))
    path = _write_dicom(tmp_path / "lut.dcm", truth.astype(np.uint8) * 255, VOILUTSequence=[item])
    np.testing.assert_array_equal(read_mask(path), truth)
    np.testing.assert_allclose(read_image(path)[0][..., 0], 1.0 - truth)  # shown through it


def test_dicom_colour_label_map_names_its_colours(tmp_path: Path) -> None:
    # An RGB DICOM's labels are named by their stored colours, as a PNG's (not 0-1 floats).
    pytest.importorskip("pydicom")
    labels = _label_map()
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[labels == 1] = (255, 0, 0)
    rgb[labels >= 2] = (0, 255, 0)
    path = _write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(read_mask(path), labels != 0)
    assert lio.mask_labels(path) == (["(0, 255, 0)", "(255, 0, 0)"], [])
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert lio.mask_labels(tmp_path / "rgb.png") == lio.mask_labels(path)


def test_dicom_pixel_spacing(tmp_path: Path) -> None:
    # (row, column) mm per pixel from PixelSpacing, else ImagerPixelSpacing (radiographs).
    pytest.importorskip("pydicom")
    raw = np.zeros((4, 6), dtype=np.uint16)

    def spacing(name: str, **attrs) -> tuple[float, float] | None:
        return read_image(_write_dicom(tmp_path / name, raw, **attrs))[1].spacing

    assert spacing("ps.dcm", PixelSpacing=[0.2, 0.1]) == (0.2, 0.1)
    found = spacing("both.dcm", PixelSpacing=[0.14, 0.14], ImagerPixelSpacing=[0.16, 0.15])
    assert found == (0.14, 0.14) and all(type(v) is float for v in found)
    assert spacing("imager.dcm", ImagerPixelSpacing=[0.16, 0.15]) == (0.16, 0.15)
    assert spacing("none.dcm") is None
    # A zero PixelSpacing is no spacing: ImagerPixelSpacing is then taken.
    zero = spacing("zero.dcm", PixelSpacing=[0, 0.1], ImagerPixelSpacing=[0.16, 0.15])
    assert zero == (0.16, 0.15)


def test_dicom_pixel_spacing_source_magnification_and_functional_groups(tmp_path: Path) -> None:
    # ImagerPixelSpacing is the detector's: with EstimatedRadiographicMagnificationFactor
    # (SID / SOD) the spacing at the patient is it divided by the factor (PS3.3 C.8.11.7).
    # Enhanced multi-frame files hold PixelSpacing in a Pixel Measures functional group.
    # ImageMeta.spacing_source says which gave the spacing.
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    raw = np.zeros((4, 6), dtype=np.uint16)

    def read(name: str, **attrs) -> tuple[tuple[float, float] | None, str | None]:
        meta = read_image(_write_dicom(tmp_path / name, raw, **attrs))[1]
        assert meta.spacing_source is None or meta.spacing_source in lio.SPACING_SOURCES
        return meta.spacing, meta.spacing_source

    def groups(row: float, column: float) -> DicomSequence:
        measures = Dataset()
        measures.PixelSpacing = [row, column]
        item = Dataset()
        item.PixelMeasuresSequence = DicomSequence([measures])
        return DicomSequence([item])

    imager = dict(ImagerPixelSpacing=[0.16, 0.15])
    spacing, source = read("ermf.dcm", EstimatedRadiographicMagnificationFactor=1.25, **imager)
    assert spacing == pytest.approx((0.128, 0.12))
    assert source == "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
    for bad in ("0", "-1.1", "0.5"):  # none (SID / SOD is at least 1): the detector's, said so
        assert read(f"bad{bad}.dcm", EstimatedRadiographicMagnificationFactor=bad, **imager) == (
            (0.16, 0.15), "ImagerPixelSpacing"
        )  # fmt: skip
    # A calibrated PixelSpacing is already at the patient: the factor is not applied.
    assert read("ps.dcm", PixelSpacing=[0.2, 0.1], EstimatedRadiographicMagnificationFactor=2,
                **imager) == ((0.2, 0.1), "PixelSpacing")  # fmt: skip
    assert read("none.dcm", EstimatedRadiographicMagnificationFactor=1.25) == (None, None)

    shared = dict(SharedFunctionalGroupsSequence=groups(0.3, 0.25))
    assert read("shared.dcm", **shared, **imager) == (
        (0.3, 0.25), "SharedFunctionalGroupsSequence PixelSpacing"
    )  # fmt: skip
    assert read("frame.dcm", PerFrameFunctionalGroupsSequence=groups(0.5, 0.4)) == (
        (0.5, 0.4), "PerFrameFunctionalGroupsSequence PixelSpacing"
    )  # fmt: skip
    assert read("top.dcm", PixelSpacing=[0.2, 0.1], **shared)[1] == "PixelSpacing"
    # A malformed group is as if absent.
    assert read("bad_group.dcm", SharedFunctionalGroupsSequence=groups(0, 0.25), **imager) == (
        (0.16, 0.15), "ImagerPixelSpacing"
    )  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [b"abc\\def ", b"12      ", b"0.2     ", b"0\\0.1   ", b"-1\\1    ", b"2\\1\\0.3 ",
     b"nan\\1   ", b"1e400\\1 ", b"0.2\\    ", b"        "],
)  # fmt: skip
def test_dicom_malformed_pixel_spacing_is_ignored(tmp_path: Path, value: bytes) -> None:
    # Not two positive finite numbers: no spacing, and the image is still read. A lone "12"
    # must not become (1, 2), its characters.
    pytest.importorskip("pydicom")
    path = _write_dicom(tmp_path / "a.dcm", np.zeros((4, 6), np.uint16), PixelSpacing="1.0\\2.0")
    data = path.read_bytes()
    assert data.count(b"1.0\\2.0 ") == 1  # the value, padded to an even length
    path.write_bytes(data.replace(b"1.0\\2.0 ", value))
    img, meta = read_image(path)
    assert img.shape == (4, 6, 1) and meta.spacing is None


def test_print_resolution_is_no_pixel_spacing(tmp_path: Path) -> None:
    # PNG pHYs and TIFF resolution are DPI for printing, not the anatomy's mm per pixel.
    grey = np.zeros((4, 6), np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png", dpi=(300, 300))
    with Image.open(tmp_path / "a.png") as im:
        assert im.info.get("dpi")
    tifffile.imwrite(tmp_path / "a.tif", grey, resolution=(300, 300))
    assert read_image(tmp_path / "a.png")[1].spacing is None
    assert read_image(tmp_path / "a.tif")[1].spacing is None


def test_dicom_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydicom")
    raw = np.zeros((4, 4), dtype=np.uint16)
    path = _write_dicom(tmp_path / "x.dcm", raw)
    _expect_error(path, "limit", max_pixels=10)
    (tmp_path / "text.dcm").write_text("hello, not DICOM\n")
    _expect_error(tmp_path / "text.dcm")

    with monkeypatch.context() as patch:  # pydicom 2.x has no pydicom.pixels
        patch.setitem(sys.modules, "pydicom.pixels", None)
        error = _expect_error(path, "needs pydicom 3 or newer (found ")
        assert isinstance(error, ReaderSetupError)  # not skipped: every DICOM would be
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    _expect_error(path, "needs pydicom 3 or newer: pip install -U pydicom python-gdcm")


def test_dicom_without_suffix_as_pacs_exports_name_it(tmp_path: Path) -> None:
    # PACS exports name files by their UID (1.2.840....4711: ".4711" is no suffix) or IM0001,
    # without .dcm: found by their content (DICM at byte 128), whole names kept as stems.
    pytest.importorskip("pydicom")
    from localdisc.data.datasets import image_stem

    raw = np.array([[0, 4095], [1000, 2000]], dtype=np.uint16)
    uid = tmp_path / "1.2.840.113619.2.55.3.4711"
    for path in (_write_dicom(uid, raw, bits_stored=12), _write_dicom(tmp_path / "IM0001", raw)):
        assert is_image_file(path), path
        img, meta = read_image(path)
        assert meta.format == "dicom" and img.shape == (2, 2, 1)
    assert image_stem(uid) == uid.name and image_stem(tmp_path / "IM0001") == "IM0001"
    # Siemens scanners export DICOM as NAME.IMA: read by its suffix, named without it.
    ima = _write_dicom(tmp_path / "ser.0001.IMA", raw)
    assert is_image_file(ima) and read_image(ima)[1].format == "dicom"
    assert image_stem(ima) == "ser.0001"
    # Not DICOM, or the index of a DICOM medium: no image, and a message that says why.
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "notes.2024").write_bytes(b"\0" * 200)
    for name in ("README", "notes.2024"):
        assert not is_image_file(tmp_path / name)
        _expect_error(tmp_path / name, "only when they hold DICOM")
    _write_dicom(tmp_path / "DICOMDIR", raw)
    assert not is_image_file(tmp_path / "DICOMDIR")
    _expect_error(tmp_path / "DICOMDIR", "the index of a DICOM medium, not an image")
    assert not is_image_file(tmp_path / "a.txt") and not is_image_file(tmp_path / "missing")


def test_dicom_without_suffix_in_folders(tmp_path: Path) -> None:
    # A PACS export: patient/study folders of files named by their UID, with a DICOMDIR and
    # PNG masks named UID.png. Every image is found, each under its whole UID, with its mask.
    pytest.importorskip("pydicom")
    from localdisc.data.datasets import FolderDataset

    raw = np.zeros((4, 6), dtype=np.uint16)
    raw[1:3, 2:5] = 4095
    names = ["P1/s1/1.2.840.99.7", "P1/s1/1.2.840.99.8", "P2/s1/1.2.840.99.9.dcm"]
    for name in names:
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        _write_dicom(tmp_path / "images" / name, raw, bits_stored=12)
        mask = tmp_path / "masks" / f"{name.removesuffix('.dcm')}.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((raw > 0).astype(np.uint8) * 255).save(mask)
    _write_dicom(tmp_path / "images" / "DICOMDIR", raw)
    (tmp_path / "images" / "P1" / "s1" / "1.2.840.99.10").write_text("a text file, no DICOM")

    data = FolderDataset(tmp_path, skip_bad=True)
    assert [item.name for item in data.items] == [n.removesuffix(".dcm") for n in names]
    assert not data.skipped
    sample = data[0]
    assert sample.image.shape == (4, 6, 1) and (sample.masks["mask"] == (raw > 0)).all()
    assert len(FolderDataset.pool_paths(tmp_path / "images")) == 3


def test_dicom_without_pixel_data_or_decoder_says_what_it_is(tmp_path: Path) -> None:
    # A structured report or RT structure set beside the images, or a compressed transfer
    # syntax without its decoder: the message says which and what to install.
    pytest.importorskip("pydicom")
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLossless

    path = _write_dicom(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16))
    ds = dcmread(path)
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.Modality = "SR"
    ds.save_as(path)
    _expect_error(path, "no pixel data: a Basic Text SR Storage object (modality SR), not an image")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"  # a CT slice stripped of its pixels is no other kind of object
    ds.save_as(path)
    _expect_error(path, "no pixel data: a CT Image Storage object (modality CT) without its pixels "
                  "(stripped or cut short); fetch it again")  # fmt: skip

    ds = dcmread(_write_dicom(tmp_path / "jl.dcm", np.zeros((2, 2), np.uint16)))
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(16) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jl.dcm")
    from pydicom.pixels import get_decoder

    if not get_decoder(JPEGLossless).is_available:
        error = _expect_error(tmp_path / "jl.dcm", "compressed as JPEG Lossless")
        assert "pip install python-gdcm" in str(error)
        assert "\n" not in str(error)


def _write_jpeg_lossless_dicom(path: Path) -> Path:
    """A DICOM whose pixel data are compressed as JPEG Lossless (not decodable: only its
    transfer syntax matters)."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLossless

    ds = dcmread(_write_dicom(path, np.zeros((2, 2), np.uint16)))
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(16) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_errors_of_the_installation_are_reader_setup_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydicom or a decoder plugin missing, a bad pixel-limit setting: not the file's fault,
    # so --skip-bad must not skip them (a ReaderSetupError); still ImageReadErrors for callers.
    pytest.importorskip("pydicom")
    import pydicom.pixels

    class _Missing:
        is_available = False

    plain = _write_dicom(tmp_path / "plain.dcm", np.zeros((4, 4), np.uint16))
    compressed = _write_jpeg_lossless_dicom(tmp_path / "jl.dcm")
    with monkeypatch.context() as patch:
        patch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Missing())
        error = _expect_error(compressed, "no decoder for it is installed: pip install")
        assert isinstance(error, ReaderSetupError)
    with monkeypatch.context() as patch:
        patch.setenv(lio.MAX_PIXELS_ENV, "lots")
        assert isinstance(_expect_error(plain, lio.MAX_PIXELS_ENV), ReaderSetupError)
    assert isinstance(_expect_error(plain, "max_pixels", max_pixels=0), ReaderSetupError)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    assert isinstance(_expect_error(plain, "pip install -U pydicom"), ReaderSetupError)


def test_errors_of_the_file_are_no_reader_setup_errors(tmp_path: Path) -> None:
    # Truncated, over the pixel limit, not an image: the file's own, skippable.
    noise = np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)
    png = _save(noise, tmp_path / "a.png")
    assert not isinstance(_expect_error(png, "limit", max_pixels=10), ReaderSetupError)
    png.write_bytes(png.read_bytes()[:100])
    assert not isinstance(_expect_error(png), ReaderSetupError)
    (tmp_path / "notes.png").write_text("not an image")
    assert not isinstance(_expect_error(tmp_path / "notes.png"), ReaderSetupError)


# ----------------------------------------------------------------------------- masks


def test_masks_grey_and_rgb(tmp_path: Path) -> None:
    ref = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    for name, arr in {
        "m255.png": ref.astype(np.uint8) * 255,
        "m01.png": ref.astype(np.uint8),
        "m07.bmp": ref.astype(np.uint8) * 7,
        "m16.png": ref.astype(np.uint16) * 65535,
        "m01_16.tif": ref.astype(np.uint16),
    }.items():
        path = tmp_path / name
        tifffile.imwrite(path, arr) if name.endswith(".tif") else _save(arr, path)
        mask = read_mask(path)
        assert mask.dtype == bool and mask.shape == (2, 3), name
        np.testing.assert_array_equal(mask, ref, err_msg=name)

    # All-equal non-zero values: an all-foreground 0/1 or 0/255 mask.
    assert read_mask(_save(np.ones((3, 3), np.uint8), tmp_path / "ones.png")).all()
    assert read_mask(_save(np.full((3, 3), 255, np.uint8), tmp_path / "full.png")).all()
    assert not read_mask(_save(np.zeros((3, 3), np.uint8), tmp_path / "zeros.png")).any()

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[ref] = [255, 0, 0]  # red vessels on black
    np.testing.assert_array_equal(read_mask(_save(rgb, tmp_path / "red.png")), ref)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(read_mask(_save(rgba, tmp_path / "red_a.png")), ref)

    # Anti-aliased / lossy masks: threshold at half scale.
    soft = np.array([[0, 3, 130], [120, 250, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(
        read_mask(_save(soft, tmp_path / "soft.png")), [[0, 0, 1], [0, 1, 1]]
    )
    big = np.zeros((32, 32), np.uint8)
    big[8:24, 8:24] = 255
    _save(big, tmp_path / "m.jpg", quality=75)
    assert (read_mask(tmp_path / "m.jpg") == big.astype(bool)).mean() > 0.98


def test_masks_grey_label_maps_read_as_non_zero(tmp_path: Path) -> None:
    # Class indices 0/1/2 stored as grey: nothing reaches half scale, yet the mask is not empty.
    labels = np.array([[0, 1, 1, 0], [0, 2, 2, 2]], dtype=np.uint8)
    ref = labels != 0
    for name, arr in {
        "l8.png": labels,
        "l16.png": labels.astype(np.uint16),  # Pillow mode I;16
        "l16.tif": labels.astype(np.uint16),
        "rgb.png": np.stack([labels, np.zeros_like(labels), labels * 3], axis=-1),
        "many.png": np.where(ref, np.arange(8, dtype=np.uint8).reshape(2, 4) * 16, 0),
    }.items():
        path = tmp_path / name
        tifffile.imwrite(path, arr) if name.endswith(".tif") else _save(arr, path)
        np.testing.assert_array_equal(read_mask(path), ref, err_msg=name)
    # The same labels as a palette image agree.
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), ref)
    # Not label maps, so half scale decides as before: a value above it (soft masks), or no
    # background level.
    soft = np.array([[0, 1, 2, 200]], dtype=np.uint8)
    np.testing.assert_array_equal(read_mask(_save(soft, tmp_path / "soft.png")), [[0, 0, 0, 1]])
    no_zero = np.array([[1, 2, 3]], dtype=np.uint8)
    assert not read_mask(_save(no_zero, tmp_path / "nz.png")).any()
    # This once asserted that 20 levels 0..19, and 16-bit labels 0/300/600, read as empty:
    # they are label maps (test_a_label_map_the_half_scale_threshold_would_empty_...).
    ramp = np.arange(20, dtype=np.uint8)[None]
    np.testing.assert_array_equal(read_mask(_save(ramp, tmp_path / "ramp.png")), ramp != 0)


def test_a_label_map_the_half_scale_threshold_would_empty_reads_as_non_zero(
    tmp_path: Path,
) -> None:
    # Before, 16 or more labels (8-bit 0..20), 16-bit labels 0/300/600 and a 12-bit mask
    # 0/2000/4095 in a 16-bit PNG read as EMPTY masks, silently: no value reaches half scale.
    truth = np.zeros((24, 24), bool)
    truth[4:20, 4:20] = True
    ramp = np.arange(truth.sum())
    for count in (15, 16, 20, 40):
        labels = np.zeros(truth.shape, np.uint8)
        labels[truth] = 1 + ramp % count
        path = _save(labels, tmp_path / f"labels{count}.png")
        np.testing.assert_array_equal(read_mask(path), truth, err_msg=f"{count} labels")
    wide = np.zeros(truth.shape, np.uint16)
    wide[truth] = np.where(ramp % 2, 300, 600)
    for name in ("wide.png", "wide.tif"):
        path = tmp_path / name
        tifffile.imwrite(path, wide) if name.endswith(".tif") else _save(wide, path)
        np.testing.assert_array_equal(read_mask(path), truth, err_msg=name)
    twelve = np.zeros(truth.shape, np.uint16)
    twelve[truth] = np.where(ramp % 7 == 0, 2000, 4095)
    np.testing.assert_array_equal(read_mask(_save(twelve, tmp_path / "m12.png")), truth)
    # A few 16-bit labels up to 255, one above 127.5, are labels too (not an 8-bit soft mask).
    few = np.zeros(truth.shape, np.uint16)
    few[truth] = np.where(ramp % 3 == 0, 200, 1 + ramp % 2)
    np.testing.assert_array_equal(read_mask(_save(few, tmp_path / "few16.png")), truth)


def test_an_anti_aliased_8_bit_mask_in_16_bits_reads_as_in_8(tmp_path: Path) -> None:
    # Values 0-255 with soft edges stored as I;16: half of 65535 read it as empty, and the
    # prior was refused as "bright on a black background" though it was.
    soft = np.clip(np.arange(64, dtype=np.int32)[None, :].repeat(8, 0) * 6 - 60, 0, 255)
    eight, sixteen = soft.astype(np.uint8), soft.astype(np.uint16)
    expected = read_mask(_save(eight, tmp_path / "m8.png"))
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(read_mask(_save(sixteen, tmp_path / "m16.png")), expected)


def test_a_bool_mask_saved_by_tifffile_reads_back_as_the_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tifffile.imwrite stores a bool array as 1-bit MINISWHITE; read_mask applied the display
    # inversion and returned the complement, unlike tifffile, scikit-image and ImageJ.
    truth = np.zeros((40, 50), bool)
    truth[10:30, 5:20] = True
    tifffile.imwrite(tmp_path / "bool.tif", truth)
    with tifffile.TiffFile(tmp_path / "bool.tif") as tf:
        assert tf.pages[0].photometric == 0 and tf.pages[0].bitspersample == 1
    np.testing.assert_array_equal(read_mask(tmp_path / "bool.tif"), truth)
    # ImageJ's masks with an inverted LUT: 8-bit MINISWHITE, 255 stored = foreground.
    tifffile.imwrite(tmp_path / "ij.tif", truth.astype(np.uint8) * 255, photometric="miniswhite")
    np.testing.assert_array_equal(read_mask(tmp_path / "ij.tif"), truth)
    # Images keep the display inversion.
    np.testing.assert_array_equal(read_image(tmp_path / "bool.tif")[0][..., 0], ~truth)
    # Pillow, which reads what tifffile cannot (LZW, fax), inverts 1- and 8-bit MINISWHITE
    # as it decodes: read the same.
    images = {n: read_image(tmp_path / n)[0] for n in ("bool.tif", "ij.tif")}

    def refuse(path: Path, limit: int) -> lio._Decoded:
        raise lio._TiffUnsupported("as if compressed without imagecodecs")

    monkeypatch.setattr(lio, "_decode_tifffile", refuse)
    for name, image in images.items():
        np.testing.assert_array_equal(read_mask(tmp_path / name), truth, err_msg=name)
        np.testing.assert_array_equal(read_image(tmp_path / name)[0], image, err_msg=name)


def test_a_mask_held_in_the_alpha_of_one_colour_is_read_from_the_alpha(tmp_path: Path) -> None:
    # Alpha was dropped at decode, so an overlay of one colour with alpha = label (RGBA), or
    # black with alpha = label (LA), read as all (red) or nothing (black).
    truth = np.zeros((12, 10), bool)
    truth[3:9, 2:6] = True
    alpha = truth.astype(np.uint8) * 255
    rgba = np.zeros(truth.shape + (4,), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, alpha
    la = np.stack([np.zeros_like(alpha), alpha], axis=-1)
    paths = [_save(rgba, tmp_path / "rgba.png"), _save(la, tmp_path / "la.png", mode="LA")]
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)  # extra sample: unassociated alpha
    grey_alpha = np.stack([np.full_like(alpha, 7), alpha // 255], axis=-1)  # alpha 0/1
    tifffile.imwrite(
        tmp_path / "la.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"]
    )
    np.save(tmp_path / "rgba.npy", rgba)
    paths += [tmp_path / n for n in ("rgba.tif", "la.tif", "rgba.npy")]
    for path in paths:
        np.testing.assert_array_equal(read_mask(path), truth, err_msg=path.name)
    # Pillow's palette with alpha (no file format here writes it) keeps its alpha too.
    pa = Image.fromarray(np.zeros(truth.shape, np.uint8), mode="P").convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    np.testing.assert_array_equal(lio._from_pil(tmp_path / "pa", pa, None).alpha, alpha)
    # The alpha's levels follow the grey rules: anti-aliased alpha is cut at half scale.
    soft = rgba.copy()
    soft[..., 3] = np.where(truth, 200, 60)
    np.testing.assert_array_equal(read_mask(_save(soft, tmp_path / "soft.png")), truth)
    # Images drop alpha as before: the red overlay is red everywhere.
    image, meta = read_image(tmp_path / "rgba.png")
    assert meta.channels == 4 and image.shape == truth.shape + (3,)
    np.testing.assert_array_equal(image[..., 0], 1.0)
    # Where the colour varies, it decides, whatever the alpha (a red-on-black mask whose
    # alpha is a constant-but-for-one-pixel edit).
    varied = rgba.copy()
    varied[..., 0] = alpha
    varied[..., 3] = 255
    varied[0, 0, 3] = 0
    np.testing.assert_array_equal(read_mask(_save(varied, tmp_path / "varied.png")), truth)


def test_masks_palette(tmp_path: Path) -> None:
    ref = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)

    def palette_file(name: str, index: np.ndarray, palette: list[int]) -> Path:
        im = Image.fromarray(index.astype(np.uint8), mode="P")
        im.putpalette(palette)
        im.save(tmp_path / name)
        return tmp_path / name

    # DRIVE's second-observer GIFs: index 0 = (4, 2, 4), index 1 = (252, 254, 252).
    drive = [4, 2, 4, 252, 254, 252]
    np.testing.assert_array_equal(read_mask(palette_file("drive.gif", ref, drive)), ref)
    empty = np.zeros_like(ref)
    assert not read_mask(palette_file("empty.gif", empty, drive)).any()
    assert read_mask(palette_file("all.gif", ~empty, drive)).all()
    # Colour decides when one used colour is dark and the other bright, whatever the index.
    swapped = [255, 255, 255, 0, 0, 0]
    np.testing.assert_array_equal(read_mask(palette_file("sw.png", ~ref, swapped)), ref)
    # Label palettes: index 0 is background, every other label is foreground.
    labels = np.where(ref, np.array([[1, 1, 2, 2], [1, 2, 2, 2]]), 0)
    voc = [0, 0, 0, 128, 0, 0, 0, 128, 0]
    np.testing.assert_array_equal(read_mask(palette_file("voc.png", labels, voc)), ref)
    dark = [0, 0, 0, 64, 0, 0]  # two dark colours
    np.testing.assert_array_equal(read_mask(palette_file("dark.png", ref, dark)), ref)
    # Grey palette: read as grey levels (here 0/1).
    grey = [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(read_mask(palette_file("grey.png", ref, grey)), ref)


def test_masks_npy_and_gz(tmp_path: Path) -> None:
    prob = np.array([[0.1, 0.6], [0.5, 0.9]], dtype=np.float32)
    np.save(tmp_path / "p.npy", prob)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.npy"), prob > 0.5)
    np.save(tmp_path / "b.npy", prob > 0.5)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.npy"), prob > 0.5)

    ref = np.array([[0, 255, 0]], dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ref).save(buf, format="PPM")
    (tmp_path / "l.ah.ppm.gz").write_bytes(gzip.compress(buf.getvalue()))
    np.testing.assert_array_equal(read_mask(tmp_path / "l.ah.ppm.gz"), ref > 0)


# ----------------------------------------------------------------------------- bad input


def _png_bytes(shape: tuple[int, ...] = (16, 16, 3), fmt: str = "PNG", seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_truncated_files(tmp_path: Path) -> None:
    for name, data in {
        "t.png": _png_bytes((64, 64, 3)),
        "t.jpg": _png_bytes((64, 64, 3), "JPEG"),
        "t.gif": _png_bytes((64, 64), "GIF"),
        "t.bmp": _png_bytes((64, 64, 3), "BMP"),
        "t.ppm": _png_bytes((64, 64, 3), "PPM"),
    }.items():
        path = tmp_path / name
        path.write_bytes(data[: len(data) * 2 // 3])
        _expect_error(path)
        mask_path = tmp_path / ("mask_" + name)
        mask_path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match="mask_"):
            read_mask(mask_path)

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64), np.uint16))
    (tmp_path / "t.tif").write_bytes(buf.getvalue()[:-500])
    _expect_error(tmp_path / "t.tif")
    (tmp_path / "t16.pgm").write_bytes(b"P5\n4 4\n65535\n" + b"\x00" * 20)
    _expect_error(tmp_path / "t16.pgm", "truncated")
    good = gzip.compress(b"P5\n4 4\n255\n" + bytes(16))
    (tmp_path / "t.pgm.gz").write_bytes(good[:-6])
    _expect_error(tmp_path / "t.pgm.gz")


def test_a_git_lfs_pointer_is_named_as_one(tmp_path: Path) -> None:
    # A clone without git-lfs holds these in the images' places; they read as "content is not
    # a PNG, JPEG, ..." before, which sent users looking for damage.
    pointer = (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        b"size 12345\n"
    )
    for name in ("eye1.png", "scan.dcm", "stack.tif"):
        (tmp_path / name).write_bytes(pointer)
        for read in (read_image, read_mask, read_image_meta):
            with pytest.raises(ImageReadError, match="Git LFS pointer.*git lfs pull") as info:
                read(tmp_path / name)
            assert name in str(info.value)


def test_a_file_cut_short_says_so(tmp_path: Path) -> None:
    # A GIF cut in its palette read "content is not a PNG, JPEG, ... image", and a TIFF whose
    # directory (at its end, as DRIVE's) was cut "no pages": neither said truncated.
    gif = _png_bytes((64, 64), "GIF")
    (tmp_path / "head.gif").write_bytes(gif[:40])
    message = str(_expect_error(tmp_path / "head.gif", "starts as a GIF file"))
    assert "truncated, damaged or of a variant the decoders do not read (40 bytes)" in message
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = buf.getvalue()
    ifd = int.from_bytes(data[4:8], "little")
    moved = data[:4] + len(data).to_bytes(4, "little") + data[8:] + data[ifd:]  # IFD at the end
    (tmp_path / "end.tif").write_bytes(moved[: len(moved) // 2])
    _expect_error(tmp_path / "end.tif", "starts as a TIFF file but cannot be decoded: truncated")
    # A whole file of a codec not installed is not called truncated (reviewer).
    from localdisc.data.io import _with_damage

    codec = "cannot decode as TIFF: tifffile: ValueError: requires the 'imagecodecs' package"
    assert _with_damage(tmp_path / "end.tif", data[:8], codec) == codec
    # But damage Pillow meets is: an LZW TIFF (DRIVE's) with its strip overwritten, where
    # tifffile's "requires imagecodecs" read as a missing codec (reviewer).
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="TIFF", compression="tiff_lzw"
    )
    lzw = bytearray(buf.getvalue())
    lzw[8:408] = b"\xff" * 400  # the strip starts after the header
    (tmp_path / "lzw.tif").write_bytes(bytes(lzw))
    _expect_error(tmp_path / "lzw.tif", "starts as a TIFF file but cannot be decoded: truncated")
    for name in ("t.png", "t.jpg", "t.gif", "t.bmp"):  # the decoders' own words say it
        data = _png_bytes((64, 64, 3) if name != "t.gif" else (64, 64), name[2:].upper()
                          .replace("JPG", "JPEG"))  # fmt: skip
        (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
        assert "truncat" in str(_expect_error(tmp_path / name)).lower(), name


def test_truncated_even_if_pillow_told_to_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _png_bytes((64, 64, 3))
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "t.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_bad_paths_and_content(tmp_path: Path) -> None:
    _expect_error(tmp_path / "missing.png", "not found")
    (tmp_path / "dir.png").mkdir()
    _expect_error(tmp_path / "dir.png", "directory")
    (tmp_path / "empty.png").write_bytes(b"")
    _expect_error(tmp_path / "empty.png", "empty")
    (tmp_path / "text.png").write_text("just some text, not an image\n")
    _expect_error(tmp_path / "text.png", "not a PNG, JPEG")
    (tmp_path / "text.jpg").write_text("P5 is not enough\n")
    _expect_error(tmp_path / "text.jpg")
    (tmp_path / "notgz.ppm.gz").write_bytes(_png_bytes((4, 4, 3), "PPM"))
    _expect_error(tmp_path / "notgz.ppm.gz", "not gzip")
    (tmp_path / "gzpng.png").write_bytes(gzip.compress(_png_bytes()))
    _expect_error(tmp_path / "gzpng.png", "gzip")
    (tmp_path / "png.pgm.gz").write_bytes(gzip.compress(_png_bytes()))
    _expect_error(tmp_path / "png.pgm.gz", "not a PPM")
    (tmp_path / "bad.pgm").write_bytes(b"P5\n4 4\n70000\n" + bytes(32))
    _expect_error(tmp_path / "bad.pgm")
    (tmp_path / "over.pgm").write_bytes(b"P5\n1 1\n1000\n\x03\xe9")
    _expect_error(tmp_path / "over.pgm", "maxval")
    (tmp_path / "dicom.tif").write_bytes(b"II*\x00" + b"\xff" * 40)
    _expect_error(tmp_path / "dicom.tif")

    (tmp_path / "scan.nii.gz").write_bytes(b"x")
    err = _expect_error(tmp_path / "scan.nii.gz", "'.nii.gz'")
    assert ".png" in str(err) and ".ppm.gz" in str(err)
    (tmp_path / "notes.txt").write_text("x")
    _expect_error(tmp_path / "notes.txt", "'.txt'")
    with pytest.raises(ImageReadError, match="notes.txt"):
        read_mask(tmp_path / "notes.txt")


def test_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_PIXELS >= 2**26
    path = tmp_path / "p.png"
    path.write_bytes(_png_bytes((20, 30, 3)))
    err = _expect_error(path, "600 pixels", max_pixels=599)
    assert "max_pixels" in str(err) and lio.MAX_PIXELS_ENV in str(err)
    assert read_image(path, max_pixels=600)[0].shape == (20, 30, 3)

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((20, 30), np.uint8))
    _expect_error(tmp_path / "t.tif", "limit", max_pixels=100)
    (tmp_path / "g.pgm.gz").write_bytes(gzip.compress(b"P5\n30 20\n255\n" + bytes(600)))
    _expect_error(tmp_path / "g.pgm.gz", "limit", max_pixels=100)

    monkeypatch.setenv(lio.MAX_PIXELS_ENV, "100")
    _expect_error(path, "limit")
    set_max_pixels(10_000)  # the programmatic setting wins over the environment
    assert read_image(path)[0].shape == (20, 30, 3)
    set_max_pixels(None)
    monkeypatch.setenv(lio.MAX_PIXELS_ENV, "lots")
    _expect_error(path, lio.MAX_PIXELS_ENV)
    with pytest.raises(ValueError):
        set_max_pixels(0)


def test_decompression_bomb_header_checked_before_decoding(tmp_path: Path) -> None:
    # A PNG whose header claims 100000 x 100000 but holds almost no data.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(data + chunk(b"IEND", b""))
    _expect_error(path, "10,000,000,000 pixels")


def test_pillow_global_limit_restored_and_not_in_the_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "p.png"
    path.write_bytes(_png_bytes((40, 40, 3)))  # 1600 pixels: Pillow alone would refuse
    assert read_image(path)[0].shape == (40, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.sampled_from(["png", "jpeg"]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete", "truncate"]),
            st.floats(0.0, 1.0),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_files_decode_or_fail_cleanly(
    tmp_path: Path, base: str, edits: list[tuple[str, float, int]]
) -> None:
    data = bytearray(_BASES[base])
    for op, where, value in edits:
        pos = min(int(where * len(data)), max(len(data) - 1, 0))
        if op == "set" and data:
            data[pos] = value
        elif op == "insert":
            data.insert(pos, value)
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    path = tmp_path / f"mutated.{base}"
    path.write_bytes(bytes(data))
    try:
        img, meta = read_image(path, max_pixels=1 << 16)
    except ImageReadError as exc:
        assert str(path) in str(exc)
    else:
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] in (1, 3)
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.shape[:2] == (meta.height, meta.width)
    try:
        mask = read_mask(path, max_pixels=1 << 16)
    except ImageReadError:
        pass
    else:
        assert mask.dtype == bool and mask.ndim == 2


_BASES = {"png": _png_bytes((12, 10, 3)), "jpeg": _png_bytes((12, 10, 3), "JPEG")}


# ----------------------------------------------------------------------------- shared data


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"public data not available at {path} (expected ../shared/data beside the repo)"
        )
    return path


def test_shared_drive() -> None:
    img, meta = read_image(_shared("DRIVE", "training", "images", "21_training.tif"))
    _check_image(img, (584, 565, 3))
    assert meta.format == "tiff" and meta.bit_depth == 8
    assert 0.1 < img.mean() < 0.7
    manual = read_mask(_shared("DRIVE", "training", "1st_manual", "21_manual1.gif"))
    fov = read_mask(_shared("DRIVE", "training", "mask", "21_training_mask.gif"))
    assert manual.shape == fov.shape == (584, 565)
    assert 0.05 < manual.mean() < 0.2
    assert 0.6 < fov.mean() < 0.8
    assert manual[fov].mean() > manual[~fov].mean()  # vessels lie inside the field of view
    # The second observer's GIFs are palette images with a near-black background colour.
    second = read_mask(_shared("DRIVE", "test", "2nd_manual", "01_manual2.gif"))
    first = read_mask(_shared("DRIVE", "test", "1st_manual", "01_manual1.gif"))
    assert 0.05 < second.mean() < 0.2
    assert (first & second).sum() > 0.6 * second.sum()


def test_shared_stare_scr_jsrt() -> None:
    img, meta = read_image(_shared("STARE", "stare-images", "im0001.ppm.gz"))
    _check_image(img, (605, 700, 3))
    assert meta.format == "ppm"
    label = read_mask(_shared("STARE", "labels-ah", "im0001.ah.ppm.gz"))
    assert label.shape == (605, 700) and 0.03 < label.mean() < 0.2

    lung = read_mask(_shared("SCR", "masks", "left lung", "JPCLN001.gif"))
    assert lung.shape == (1024, 1024) and 0.05 < lung.mean() < 0.3

    xray, meta = read_image(_shared("JSRT", "images", "JPCLN001.png"))
    _check_image(xray, (512, 512, 1))
    assert meta.channels == 1 and xray.std() > 0.1


def test_an_exif_orientation_is_read_and_said_not_applied(tmp_path):
    """A phone photograph's Orientation tag: viewers turn it, localdisc reads the pixels as
    stored (its masks are drawn on those). ImageMeta says so, for a note, from the header too."""
    from localdisc.data.io import orientation_note, read_image_meta

    pixels = np.zeros((6, 10, 3), np.uint8)
    pixels[0] = 255  # the top row white, as stored
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[274] = 6
    im.save(tmp_path / "turned.jpg", exif=exif, quality=100)
    exif[274] = 3
    im.save(tmp_path / "turned.png", exif=exif)
    exif[274] = 1
    im.save(tmp_path / "upright.jpg", exif=exif)
    im.save(tmp_path / "plain.png")
    tifffile.imwrite(tmp_path / "turned.tif", pixels[..., 0], extratags=[(274, "H", 1, 8, True)])
    image, meta = read_image(tmp_path / "turned.jpg")
    assert image.shape[:2] == (6, 10) and image[0].mean() > 0.9  # not turned
    expected = {"turned.jpg": 6, "turned.png": 3, "turned.tif": 8, "upright.jpg": None,
                "plain.png": None}  # fmt: skip
    for name, orientation in expected.items():
        assert read_image(tmp_path / name)[1].orientation == orientation, name
        assert read_image_meta(tmp_path / name).orientation == orientation, name
    note = orientation_note([read_image_meta(tmp_path / n) for n in expected])
    assert note is not None and note.startswith("3 image(s) carry an EXIF orientation")
    assert f"{tmp_path / 'turned.jpg'}, 6: viewers show it turned 90 degrees clockwise" in note
    assert "10 wide and 6 high there" in note and note.endswith("are in another frame")
    masks = orientation_note([read_image_meta(tmp_path / "turned.jpg")], "masks")
    assert masks is not None and masks.startswith("1 image(s) carry an EXIF orientation")
    assert masks.endswith(
        "masks are written in the pixels as stored, 10 wide and 6 high there; "
        "a viewer that applies the tag shows the image turned against its mask"
    )
    with pytest.raises(ValueError, match="'points', 'masks', 'pool', 'dataset'"):
        orientation_note([], "labels")
    assert orientation_note([read_image_meta(tmp_path / "plain.png")]) is None
    assert type(read_image_meta(tmp_path / "turned.tif").orientation) is int  # not tifffile's enum


def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats of the images Pillow decodes from now on, in order."""
    loads: list[str] = []
    real = ImageFile.ImageFile.load

    def load(self):
        loads.append(self.format)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


def test_a_header_read_decodes_no_png_pixels_for_its_orientation(tmp_path, monkeypatch):
    # Pillow's PngImageFile.getexif() loads every pixel of a PNG without an EXIF block: the
    # header reads of localize's note (and read_truth's) decoded whole folders.

    from localdisc.data.io import read_image_meta

    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "a.png")
    loads = pixel_loads(monkeypatch)
    assert read_image_meta(tmp_path / "a.png").orientation is None and loads == []


def test_the_orientation_is_found_where_pillow_keeps_it_alike_in_header_and_full_reads(tmp_path):
    """An ImageMagick PNG's hex "Raw profile type exif", an XMP tiff:Orientation and a palette
    TIFF that Pillow decodes (its load drops the tag) were missed by one read or both; a
    malformed EXIF block warned on every read of a PNG (reviewer)."""
    import struct
    import warnings

    from PIL import PngImagePlugin

    from localdisc.data.io import read_image_meta

    rgb = Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[274] = 6
    block = exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(block)}\n" + block.hex(), zip=True)
    rgb.save(tmp_path / "profile.png", pnginfo=info)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF>'
           b"</x:xmpmeta>")  # fmt: skip
    rgb.save(tmp_path / "xmp.jpg", xmp=xmp)
    rgb.convert("P").save(tmp_path / "palette.tif", tiffinfo={274: 3})
    # An ASCII entry whose data lie past the block's end, after a sound Orientation entry.
    bad = (b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 2)
           + struct.pack(">HHII", 274, 3, 1, 6 << 16) + struct.pack(">HHII", 270, 2, 200, 1000)
           + b"\x00\x00\x00\x00")  # fmt: skip
    rgb.save(tmp_path / "malformed.png", exif=b"Exif\x00\x00" + bad)
    expected = {"profile.png": 6, "xmp.jpg": 8, "palette.tif": 3, "malformed.png": 6}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, orientation in expected.items():
            assert read_image_meta(tmp_path / name).orientation == orientation, name
            assert read_image(tmp_path / name)[1].orientation == orientation, name


def test_a_tiff_orientation_outside_1_to_8_reads_as_none_without_tifffile_logging_it(
    tmp_path, caplog
):
    """tifffile logged "<tifffile.TiffTag 274 @94> raised ValueError('12 is not a valid
    ORIENTATION')" on every read; the value asks for no turn. Its other lines still show."""
    from localdisc.data.io import read_image_meta

    tifffile.imwrite(
        tmp_path / "odd.tif", np.zeros((6, 10), np.uint8), extratags=[(274, "H", 1, 12, True)]
    )
    with caplog.at_level("WARNING", logger="tifffile"):
        assert read_image(tmp_path / "odd.tif")[1].orientation is None
        assert read_image_meta(tmp_path / "odd.tif").orientation is None
        logging.getLogger("tifffile").warning("<tifffile.TiffTag 270 @8> other")
    assert [r.getMessage() for r in caplog.records] == ["<tifffile.TiffTag 270 @8> other"]


def test_a_png_exif_chunk_after_the_pixels_is_found_by_both_reads(tmp_path, monkeypatch):
    """The PNG standard lets eXIf come after IDAT; Pillow reads it there only on decoding, so
    the header read (the commands' notes) and the full read both missed it."""
    import struct
    import zlib

    from localdisc.data.io import read_image_meta

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "plain.png")
    data = (tmp_path / "plain.png").read_bytes()
    exif = Image.Exif()
    exif[274] = 6
    late = chunk(b"eXIf", exif.tobytes()[6:])  # the chunk holds the block without "Exif\0\0"
    end = data.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:end] + late + data[end:])
    assert read_image(tmp_path / "late.png")[1].orientation == 6
    assert read_image_meta(tmp_path / "plain.png").orientation is None
    loads = pixel_loads(monkeypatch)
    assert read_image_meta(tmp_path / "late.png").orientation == 6 and loads == []


@pytest.mark.parametrize("mode", ["P", "CMYK"])
def test_a_tiff_pillow_decodes_is_read_as_stored_whatever_its_orientation(tmp_path, mode):
    """Pillow applies a TIFF's Orientation itself: 2-4 came out flipped or turned (as shown, not
    as stored: off their masks), 5-8 scrambled (decoded into a frame of swapped size). Palette
    and CMYK TIFFs are Pillow's (tifffile's reader leaves them to it)."""
    from localdisc.data.io import read_image_meta

    stored = np.zeros((30, 40), np.uint8)
    stored[0], stored[:, 0], stored[5, 7] = 200, 100, 255
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.tif"
        Image.fromarray(stored).convert(mode).save(path, tiffinfo={274: orientation})
        image, meta = read_image(path)
        assert np.array_equal(np.round(image[..., 0] * 255), stored), orientation
        header = read_image_meta(path)
        assert (header.height, header.width) == (meta.height, meta.width) == (30, 40)
        assert header.orientation == meta.orientation == (orientation if orientation > 1 else None)


def test_dim_note_states_the_cause_without_asking_of_an_8_bit_image():
    # A dark 8-bit image is dim too: the note used to ask "12-bit data in 16-bit files?" of it
    # (reviewer). It now says what follows and names 12-bit data as one cause, not the cause.
    note = lio.dim_note([("dark8", 20 / 255), ("bright", 0.9)], "image(s)", "seen near black")
    assert note == (
        "1 image(s) use under 1/8 of the intensity range (dark8): seen near black; rescale them "
        "to the full range (12-bit data in a 16-bit file reads so)"
    )
    assert lio.dim_note([("bright", 0.9)], "image(s)", "seen near black") is None


def test_a_soft_map_below_half_scale_everywhere_reads_empty_not_as_labels(tmp_path: Path) -> None:
    # Label maps under half scale read as non-zero (above); a probability map saved as a mask,
    # its peak 0.45, read as 89 % of the image (16 bits) or 47 % (8 bits) with that rule: its
    # many levels say it is a soft map, which is below 0.5 everywhere.
    yy, xx = np.mgrid[:64, :64]
    peak = 0.45 * np.exp(-((yy - 32.0) ** 2 + (xx - 32.0) ** 2) / 200.0)
    Image.fromarray((peak * 65535).astype(np.uint16)).save(tmp_path / "p16.png")
    Image.fromarray((peak * 255).astype(np.uint8)).save(tmp_path / "p8.png")
    for name in ("p16.png", "p8.png"):
        assert not read_mask(tmp_path / name).any(), name
    labels = np.minimum(xx // 3, 21).astype(np.uint8)  # 22 labels, 0..21, a third of a column each
    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.png"), labels != 0)
