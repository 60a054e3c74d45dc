"""Files of several frames (a TIFF stack, an animated GIF or PNG) are read as their first frame,
and ``ImageMeta.frames`` says how many they hold, from the header as from the decoding, so that
the commands say it (``frames_note``). Thumbnails and pyramid levels are no frames."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from localdisc.data.io import (
    frames_note,
    header_notes,
    orientation_note,
    read_image,
    read_image_meta,
)

PLANES = np.stack([np.full((12, 10), 40 * (k + 1), np.uint8) for k in range(5)])


def _frames(path: Path) -> int:
    """The frames read_image and read_image_meta give ``path``, which must agree."""
    image, meta = read_image(path)
    assert read_image_meta(path) == meta, path
    assert image.shape[:2] == (meta.height, meta.width)
    return meta.frames


def test_a_tiff_stack_counts_its_pages(tmp_path: Path) -> None:
    # A z-stack was read as its first page with frames 1, and no command said so.
    tifffile.imwrite(tmp_path / "stack.tif", PLANES)
    image, meta = read_image(tmp_path / "stack.tif")
    assert image[..., 0].mean() == pytest.approx(40 / 255)  # the first page
    assert _frames(tmp_path / "stack.tif") == 5
    note = frames_note([meta])
    assert note is not None and f"(first: {tmp_path / 'stack.tif'}, 5 frames)" in note
    assert header_notes([meta]) == [note]
    # ImageJ's and OME's stacks, and a colour time series
    tifffile.imwrite(tmp_path / "ij.tif", PLANES[:, None], imagej=True)
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((2, 3, 2, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "TZCYX"})  # fmt: skip
    tifffile.imwrite(tmp_path / "ome.tif", PLANES[:3], ome=True)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    assert [_frames(tmp_path / n) for n in ("ij.tif", "hyper.tif", "ome.tif", "rgb.tif")] == [
        5, 12, 3, 4
    ]  # fmt: skip


def test_a_tiff_through_pillow_counts_as_through_tifffile(tmp_path: Path) -> None:
    # Pages Pillow writes (LZW: decoded by Pillow where imagecodecs is absent) and a palette
    # stack (a layout tifffile leaves to Pillow).
    pages = [Image.fromarray(p) for p in PLANES]
    pages[0].save(tmp_path / "lzw.tif", save_all=True, append_images=pages[1:3],
                  compression="tiff_lzw")  # fmt: skip
    palette = [p.convert("P") for p in pages]
    palette[0].save(tmp_path / "palette.tif", save_all=True, append_images=palette[1:])
    assert _frames(tmp_path / "lzw.tif") == 3 and _frames(tmp_path / "palette.tif") == 5


def test_thumbnails_and_pyramid_levels_are_no_frames(tmp_path: Path) -> None:
    """A scanner's thumbnail page, flagged reduced-resolution or not, a pyramid in SubIFDs and
    a transparency mask page are parts of one image: no note for them."""
    first = PLANES[0]
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:
        tw.write(first)
        tw.write(first[::4, ::4], subfiletype=1)
    with tifffile.TiffWriter(tmp_path / "unflagged.tif") as tw:
        tw.write(first)
        tw.write(first[::2, ::2])
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tw:
        tw.write(first, subifds=1)
        tw.write(first[::2, ::2], subfiletype=1)
    with tifffile.TiffWriter(tmp_path / "masked.tif") as tw:
        tw.write(first)
        tw.write(first > 100, subfiletype=4)
    thumb = Image.fromarray(first[::4, ::4])
    Image.fromarray(first).save(tmp_path / "lzw_thumb.tif", save_all=True, append_images=[thumb],
                                compression="tiff_lzw")  # fmt: skip
    names = ("thumb.tif", "unflagged.tif", "pyramid.tif", "masked.tif", "lzw_thumb.tif")
    assert [_frames(tmp_path / n) for n in names] == [1] * 5
    tifffile.imwrite(tmp_path / "one.tif", first)
    assert _frames(tmp_path / "one.tif") == 1


def test_an_imagej_file_of_one_page_counts_the_images_it_describes(tmp_path: Path) -> None:
    # ImageJ writes a stack over 4 GB as one page and a description of its images.
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, PLANES[:, None], imagej=True)
    with tifffile.TiffFile(path) as tf:
        page, byteorder = tf.pages[0], tf.byteorder
        next_ifd = page.offset + 2 + 12 * len(page.tags)
    with open(path, "r+b") as f:  # the chain of pages ends after the first
        f.seek(next_ifd)
        f.write(struct.pack(byteorder + "I", 0))
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1
    assert _frames(path) == 5


def test_an_animated_gif_or_png_counts_its_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(p) for p in PLANES[:3]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "one.gif")
    colour = [f.convert("RGB") for f in frames]
    colour[0].save(tmp_path / "anim.png", save_all=True, append_images=colour[1:])
    colour[0].save(tmp_path / "one.png")
    image, _ = read_image(tmp_path / "anim.gif")
    assert image[..., 0].mean() == pytest.approx(40 / 255)  # the first frame
    names = ("anim.gif", "one.gif", "anim.png", "one.png")
    assert [_frames(tmp_path / n) for n in names] == [3, 1, 3, 1]
    # A JPEG with an embedded second picture (MPO: a phone's preview or depth map) is one.
    colour[0].save(tmp_path / "mpo.jpg", save_all=True, append_images=colour[1:2], format="MPO")
    assert _frames(tmp_path / "mpo.jpg") == 1


def test_counting_frames_reads_no_pixels_of_a_tiff_stack(tmp_path, monkeypatch) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", PLANES)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded"))
    assert read_image_meta(tmp_path / "stack.tif").frames == 5


def test_a_stack_whose_later_pages_are_damaged_still_reads(tmp_path: Path, caplog) -> None:
    # The count is a note's: damage after the first page never stops the first being read,
    # nor makes tifffile log a line naming no file on every read.
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, PLANES[:2])
    with tifffile.TiffFile(path) as tf:
        page, byteorder = tf.pages[0], tf.byteorder
        next_ifd = page.offset + 2 + 12 * len(page.tags)
    with open(path, "r+b") as f:  # the second page's offset beyond the end of the file
        f.seek(next_ifd)
        f.write(struct.pack(byteorder + "I", 10**8))
    image, meta = read_image(path)
    assert image[..., 0].mean() == pytest.approx(40 / 255) and meta.frames >= 1
    assert read_image_meta(path) == meta
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_the_pool_and_dataset_wordings_of_the_orientation_note(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "turned.tif", PLANES[0], extratags=[(274, "H", 1, 6, True)])
    meta = read_image_meta(tmp_path / "turned.tif")
    pool = orientation_note([meta], "pool")
    assert pool is not None and pool.endswith(
        "pre-training takes the pixels as stored, 10 wide and 12 high there, not turned as a "
        "viewer that applies the tag shows them"
    )
    dataset = orientation_note([meta], "dataset")
    assert dataset is not None and dataset.endswith(
        "masks are read against the pixels as stored, 10 wide and 12 high there: a mask made "
        "by a program from them fits, and one drawn on the image as a viewer that applies the "
        "tag shows it lies turned against its image; save such images as viewers show them "
        "(without the tag), or turn their masks back"
    )
    with pytest.raises(ValueError, match="'points', 'masks', 'pool', 'dataset'"):
        orientation_note([meta], "labels")
