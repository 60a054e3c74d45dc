"""Mask and MINISWHITE readings of :mod:`localdisc.data.io` that a reviewer's mutations of
c877cfa survived: a TIFF's associated alpha (ExtraSamples 1) dropped, keeping only unassociated
alpha (2); Pillow's 16-bit and float MINISWHITE no longer inverted by ``read_image``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from localdisc.data import io as lio
from localdisc.data.io import read_image, read_mask, set_max_pixels


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Each test starts from the default pixel limit, whatever the environment says.
    monkeypatch.delenv(lio.MAX_PIXELS_ENV, raising=False)
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def _truth() -> np.ndarray:
    truth = np.zeros((12, 10), bool)
    truth[3:9, 2:6] = True
    return truth


def _pillow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the TIFF decoder fall back to Pillow, as for a compression tifffile has no codec
    for here (LZW, fax without imagecodecs)."""

    def refuse(path: Path, limit: int) -> lio._Decoded:
        raise lio._TiffUnsupported("as if compressed without imagecodecs")

    monkeypatch.setattr(lio, "_decode_tifffile", refuse)


@pytest.mark.parametrize("photometric", ["rgb", "minisblack"])
def test_a_mask_held_in_the_associated_alpha_of_a_tiff_is_read_from_the_alpha(
    tmp_path: Path, photometric: str
) -> None:
    # Guards reading a TIFF's associated (premultiplied, ExtraSamples 1) alpha as well as its
    # unassociated one (2): with only 2 kept, an overlay of one colour whose alpha is the label
    # read as nothing. Black, the one colour whose premultiplied samples are the same at every
    # alpha, so that the stored colour is constant, as read_mask asks before using the alpha.
    truth = _truth()
    alpha = truth.astype(np.uint8) * 255
    colour = np.zeros(truth.shape + ((3,) if photometric == "rgb" else (1,)), np.uint8)
    data = np.concatenate([colour, alpha[..., None]], axis=-1)
    path = tmp_path / f"assoc_{photometric}.tif"
    tifffile.imwrite(path, data, photometric=photometric, extrasamples=["assocalpha"])
    with tifffile.TiffFile(path) as tf:
        assert tuple(int(e) for e in tf.pages[0].extrasamples) == (1,)  # associated alpha
    np.testing.assert_array_equal(read_mask(path), truth)
    # Images drop the alpha: black everywhere, one channel per colour channel stored.
    img, meta = read_image(path)
    np.testing.assert_array_equal(img, np.zeros(truth.shape + (colour.shape[2],), np.float32))
    assert meta.channels == colour.shape[2] + 1


def test_an_rgb_tiff_with_associated_alpha_read_by_pillow_gives_the_same_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the Pillow fallback's reading of the same file (a compression tifffile cannot
    # decode here): Pillow's RGBA keeps the alpha, so the mask is the same as tifffile's.
    truth = _truth()
    data = np.zeros(truth.shape + (4,), np.uint8)
    data[..., 3] = truth * 255
    path = tmp_path / "assoc.tif"
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=["assocalpha"])
    _pillow_only(monkeypatch)
    np.testing.assert_array_equal(read_mask(path), truth)


@pytest.mark.parametrize(
    ("dtype", "full", "pil_mode"),
    [(np.uint16, 65535, "I;16"), (np.float32, 1.0, "F")],
    ids=["uint16", "float32"],
)
def test_a_16_bit_or_float_miniswhite_tiff_read_by_pillow_reads_as_through_tifffile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: type, full: float, pil_mode: str
) -> None:
    # Guards read_image's inversion of MINISWHITE TIFFs that Pillow decodes as stored (16-bit
    # and float; it inverts 1- and 8-bit ones itself): without it, a file tifffile cannot
    # decode here (LZW without imagecodecs) read as the negative of the same file tifffile
    # reads. read_mask reads the stored values on both routes (255 / full scale = foreground).
    ramp = (np.linspace(0.0, 1.0, 10)[None, :].repeat(12, 0) * full).astype(dtype)
    truth = _truth()
    stored = (truth * full).astype(dtype)
    image_path, mask_path = tmp_path / "ramp.tif", tmp_path / "mask.tif"
    tifffile.imwrite(image_path, ramp, photometric="miniswhite")
    tifffile.imwrite(mask_path, stored, photometric="miniswhite")
    expected = 1.0 - ramp.astype(np.float64) / full  # displayed: white where 0 is stored
    via_tifffile = read_image(image_path)[0][..., 0]
    np.testing.assert_allclose(via_tifffile, expected, atol=1e-6)
    np.testing.assert_array_equal(read_mask(mask_path), truth)

    _pillow_only(monkeypatch)
    with Image.open(image_path) as im:  # the mode Pillow decodes as stored, not inverted
        assert im.mode == pil_mode and im.tag_v2.get(262) == 0
    via_pillow, meta = read_image(image_path)
    assert meta.format == "tiff"
    np.testing.assert_array_equal(via_pillow[..., 0], via_tifffile)
    np.testing.assert_array_equal(read_mask(mask_path), truth)


def test_a_grey_tiff_with_associated_alpha_read_by_pillow_gives_the_same_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards Pillow's mode for grey + associated alpha ("La"): it went to the RGB conversion,
    # which dropped the alpha, and the black overlay read as an empty mask.
    truth = _truth()
    data = np.zeros(truth.shape + (2,), np.uint8)
    data[..., 1] = truth * 255
    path = tmp_path / "assoc_grey.tif"
    tifffile.imwrite(path, data, photometric="minisblack", extrasamples=["assocalpha"])
    np.testing.assert_array_equal(read_mask(path), truth)  # through tifffile
    _pillow_only(monkeypatch)
    with Image.open(path) as im:
        assert im.mode == "La"
    np.testing.assert_array_equal(read_mask(path), truth)
    img, meta = read_image(path)  # the image drops the alpha, as tifffile's reading does
    np.testing.assert_array_equal(img, np.zeros(truth.shape + (1,), np.float32))
    assert meta.channels == 2


@pytest.mark.parametrize("label_index", [0, 1])
def test_a_palette_overlay_of_one_colour_is_read_from_its_transparency(
    tmp_path: Path, label_index: int
) -> None:
    # Guards a palette PNG's tRNS read as alpha: an RGBA overlay of one colour with the label
    # in its alpha, as pngquant or Pillow's quantize save it, is two entries of the same
    # colour, one transparent. The entries' order is the encoder's: with the label at index 0
    # the mask read the background.
    truth = _truth()
    index = np.where(truth, label_index, 1 - label_index).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([255, 0, 0, 255, 0, 0])
    transparency = bytes([255, 0]) if label_index == 0 else bytes([0, 255])
    im.save(tmp_path / "overlay.png", transparency=transparency)
    np.testing.assert_array_equal(read_mask(tmp_path / "overlay.png"), truth)
    # A GIF has one transparent index.
    im.save(tmp_path / "overlay.gif", transparency=1 - label_index)
    np.testing.assert_array_equal(read_mask(tmp_path / "overlay.gif"), truth)
    # Palettes of two colours are read by their colours whatever the transparency says.
    two = Image.fromarray(index, "P")
    two.putpalette([0, 0, 0, 255, 255, 255] if label_index == 1 else [255, 255, 255, 0, 0, 0])
    two.save(tmp_path / "two.png", transparency=0)
    np.testing.assert_array_equal(read_mask(tmp_path / "two.png"), truth)


def test_mask_labels_names_a_label_map_read_as_one_foreground(tmp_path: Path) -> None:
    # Lungs 1 and heart 2 in one map were trained as their union, unsaid: mask_labels names the
    # labels read_mask joins, and nothing for a mask of one label or an anti-aliased one.
    from localdisc.data.io import mask_labels

    grey = np.zeros((12, 10), np.uint8)
    grey[2:5, 2:5], grey[7:10, 2:5] = 1, 2

    def labels(name: str, image: Image.Image) -> list[str]:
        image.save(tmp_path / name)
        joined, background = mask_labels(tmp_path / name)
        assert background == [], name
        return joined

    assert labels("map.png", Image.fromarray(grey)) == ["1", "2"]
    assert labels("one.png", Image.fromarray((grey > 0).astype(np.uint8) * 255)) == []
    assert labels("zero_one.png", Image.fromarray((grey > 0).astype(np.uint8))) == []
    wide = (grey.astype(np.uint16) * 300).astype(np.uint16)
    assert labels("wide.png", Image.fromarray(wide)) == ["300", "600"]
    smooth = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (12, 1))  # anti-aliased edges
    assert labels("smooth.png", Image.fromarray(smooth)) == []
    palette = Image.fromarray(grey, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    assert labels("palette.png", palette) == ["index 1", "index 2"]
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[grey == 1], rgb[grey == 2] = (255, 0, 0), (0, 255, 0)
    assert labels("colours.png", Image.fromarray(rgb)) == ["(0, 255, 0)", "(255, 0, 0)"]
    rgb[grey == 2] = (255, 0, 0)
    assert labels("red.png", Image.fromarray(rgb)) == []
    # A dim rim a pixel wide (as anti-aliasing leaves) is no label, read as background or not:
    # red and green are still the labels joined.
    rgb[0, :] = (60, 0, 0)
    rgb[grey == 2] = (0, 255, 0)
    assert labels("rim.png", Image.fromarray(rgb)) == ["(0, 255, 0)", "(255, 0, 0)"]


def test_mask_labels_names_the_labels_a_map_loses_to_half_scale(tmp_path: Path) -> None:
    # A map scaled for display (0/85/170/255) keeps its labels above half scale, and class
    # indices 0/1/2/3 in a float TIFF those above half the maximum: the labels read as
    # background are named, so that a command says so; a soft float map has no labels.
    from localdisc.data.io import mask_labels

    grey = np.zeros((12, 10), np.uint8)  # each label fills a region: 3 x 3 pixels
    grey[1:4, 1:4], grey[5:8, 1:4], grey[9:12, 1:4] = 1, 2, 3
    Image.fromarray(grey * 85).save(tmp_path / "display.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "display.png"), grey >= 2)
    assert mask_labels(tmp_path / "display.png") == (["170", "255"], ["85"])
    tifffile.imwrite(tmp_path / "float.tif", grey.astype(np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "float.tif"), grey >= 2)
    assert mask_labels(tmp_path / "float.tif") == (["2", "3"], ["1"])
    soft = np.where(grey > 0, grey / 4, 0).astype(np.float32)  # 0.25 / 0.5 / 0.75
    tifffile.imwrite(tmp_path / "soft.tif", soft)
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.tif"), grey == 3)
    assert mask_labels(tmp_path / "soft.tif") == ([], [])
    ramp = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (12, 1))  # 9 levels: anti-aliased
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert mask_labels(tmp_path / "ramp.png") == ([], [])
