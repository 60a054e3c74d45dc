""":func:`localdisc.data.io.mask_labels`, the labels of a label map that ``read_mask`` joins or
reads as background (``finetune`` and ``datasets inspect`` say them in a note): the edges of an
anti-aliased or compressed binary mask are no labels, and a palette read by its colours has
none; a map scaled for display of 8 or more labels, or a colour map with a dark colour, names
the labels it loses (a reviewer's findings on c6b00b2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from localdisc.data.datasets import FolderDataset
from localdisc.data.io import mask_labels, read_mask


def _binary(size: int = 64) -> np.ndarray:
    """A 0/255 mask of a disc and a slanted band 6 pixels wide (a lung, a vessel)."""
    y, x = np.mgrid[:size, :size]
    disc = (y - size * 0.4) ** 2 + (x - size * 0.35) ** 2 < (size * 0.27) ** 2
    band = np.abs((y - 0.6 * x) - size * 0.55) < 3
    return (disc | band).astype(np.uint8) * 255


def _saved(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_anti_aliased_and_compressed_binary_masks_have_no_labels(tmp_path: Path) -> None:
    # A 0/255 mask halved by box averaging has the levels 0/64/128/191/255 (a real SCR lung mask
    # shrunk to JSRT's 512 px): it was taken for a label map, 64 named as a label read as
    # background and 128/191/255 as labels joined. Its edge levels fill no region.
    mask = Image.fromarray(_binary())
    variants = {
        "box2.png": mask.reduce(2),
        "box4.png": mask.reduce(4),
        "bilinear_down.png": mask.resize((40, 40), Image.BILINEAR),
        "bilinear_up.png": mask.resize((150, 150), Image.BILINEAR),
        "lanczos_down.png": mask.resize((40, 40), Image.LANCZOS),
        "lanczos_up.png": mask.resize((150, 150), Image.LANCZOS),
    }
    for name, image in variants.items():
        assert mask_labels(_saved(tmp_path / name, image)) == ([], []), name
    for quality in (75, 95):
        path = _saved(tmp_path / f"q{quality}.jpg", mask, quality=quality)
        assert mask_labels(path) == ([], []), quality
        halved = _saved(tmp_path / f"box2_q{quality}.jpg", mask.reduce(2), quality=quality)
        assert mask_labels(halved) == ([], []), f"halved, {quality}"
    assert np.unique(np.asarray(variants["box2.png"])).tolist() == [0, 64, 128, 191, 255]
    # A near-black background (3, as DRIVE's second observer in grey) that JPEG specks with 0-2
    # is the background still, no label under half scale.
    near_black = Image.fromarray(np.where(_binary() > 0, 253, 3).astype(np.uint8))
    assert mask_labels(_saved(tmp_path / "near_black.jpg", near_black, quality=95)) == ([], [])


def test_two_colour_palette_mask_has_no_labels_in_either_order(tmp_path: Path) -> None:
    # DRIVE's second observer: near-black (4, 2, 4) and near-white, at either index (GIF
    # encoders reorder palettes). read_mask decides by the colours, not the index, so a
    # near-black index 1 is no label read as background.
    truth = np.zeros((32, 32), bool)
    truth[8:24, 10:14] = True
    colours = {"bright": (250, 250, 250), "dark": (4, 2, 4)}
    for first, second in (("bright", "dark"), ("dark", "bright")):
        index = np.where(truth, 0 if first == "bright" else 1, 1 if first == "bright" else 0)
        image = Image.fromarray(index.astype(np.uint8), "P")
        image.putpalette([*colours[first], *colours[second]] + [0] * 762)
        for suffix in ("png", "gif"):
            path = _saved(tmp_path / f"{first}_first.{suffix}", image)
            np.testing.assert_array_equal(read_mask(path), truth, err_msg=str(path))
            assert mask_labels(path) == ([], []), path


def _stripes(count: int, height: int = 4) -> np.ndarray:
    """Labels 1..count as stripes ``height`` pixels high, 20 wide, on 0 (5 pixels each side)."""
    labels = np.zeros((count * height + 10, 30), np.uint8)
    for k in range(1, count + 1):
        labels[(k - 1) * height + 5 : k * height + 5, 5:25] = k
    return labels


def test_label_maps_name_their_labels_joined_or_read_as_background(tmp_path: Path) -> None:
    # A map of 9 labels saved for display as 0/28/.../252 keeps 140..252 and reads 28..112 as
    # background; with more than 7 non-zero levels it was taken for an anti-aliased mask and
    # said nothing. Maps of few labels keep their notes.
    nine = _stripes(9)
    path = _saved(tmp_path / "x28.png", Image.fromarray(nine * 28))
    np.testing.assert_array_equal(read_mask(path), nine >= 5)
    assert mask_labels(path) == (
        ["140", "168", "196", "224", "252"],
        ["28", "56", "84", "112"],
    )
    three = _stripes(3)
    assert mask_labels(_saved(tmp_path / "x85.png", Image.fromarray(three * 85))) == (
        ["170", "255"],
        ["85"],
    )
    two = _stripes(2)
    assert mask_labels(_saved(tmp_path / "012.png", Image.fromarray(two))) == (["1", "2"], [])
    # A palette label map, by index (0 background whatever its colour), dark colours too.
    palette = Image.fromarray(three, "P")
    palette.putpalette([255, 255, 255, 90, 0, 0, 0, 0, 90, 0, 200, 0] + [0] * 756)
    assert mask_labels(_saved(tmp_path / "palette.png", palette)) == (
        ["index 1", "index 2", "index 3"],
        [],
    )


def test_colour_map_names_a_dark_label_colour_read_as_background(tmp_path: Path) -> None:
    # Lungs bright red, heart dark green: read_mask (the brightest channel above half scale)
    # reads the heart as background, which was unsaid.
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[5:20, 5:20] = (255, 0, 0)
    rgb[25:35, 25:35] = (0, 100, 0)
    path = _saved(tmp_path / "dark.png", Image.fromarray(rgb))
    assert not read_mask(path)[25:35, 25:35].any()
    assert mask_labels(path) == ([], ["(0, 100, 0)"])
    rgb[25:35, 5:15] = (0, 0, 255)
    path = _saved(tmp_path / "two_bright.png", Image.fromarray(rgb))
    assert mask_labels(path) == (["(0, 0, 255)", "(255, 0, 0)"], ["(0, 100, 0)"])
    # A bright colour map anti-aliased by box averaging keeps its labels and no edge colours.
    halved = _saved(tmp_path / "halved.png", Image.fromarray(rgb).reduce(2))
    assert mask_labels(halved) == (["(0, 0, 255)", "(255, 0, 0)"], ["(0, 100, 0)"])


def test_folder_note_follows_mask_labels(tmp_path: Path) -> None:
    # What finetune and datasets inspect print: no note for a box-halved binary mask, one for
    # a map of 9 labels scaled for display.
    for name, mask in {
        "halved": Image.fromarray(_binary()).reduce(2),
        "x28": Image.fromarray(_stripes(9) * 28),
    }.items():
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        Image.fromarray(np.full(mask.size[::-1], 90, np.uint8)).save(root / "images" / "a.png")
        mask.save(root / "masks" / "a.png")
        note = FolderDataset(root).label_map_note
        if name == "halved":
            assert note is None
        else:
            assert note is not None and "labels 28, 56, 84, 112" in note


def test_thin_and_small_labels_below_half_scale_are_named(tmp_path: Path) -> None:
    # A display-scaled map (0/85/170/255) whose label 85 is a 2-pixel band, 2 x 2 spots or a
    # 1-pixel line: read_mask reads it as background, and only labels filling a region were
    # named (a reviewer's finding on f406120). An edge between two labels is not one.
    def labels(drawn: np.ndarray) -> list[str]:
        values = np.zeros((96, 96), np.uint8)
        values[8:44, 8:44], values[52:88, 8:44] = 255, 170
        values[drawn] = 85
        return mask_labels(_saved(tmp_path / "m.png", Image.fromarray(values))).background

    band, spots, line = (np.zeros((96, 96), bool) for _ in range(3))
    band[8:88, 60:62] = True
    for y in range(8, 88, 6):
        spots[y : y + 2, 60:62] = spots[y : y + 2, 76:78] = True
    line[8:88, 70] = True
    assert labels(band) == labels(spots) == labels(line) == ["85"]
    ring = np.zeros((96, 96), bool)
    ring[7, 7:45] = ring[44, 7:45] = ring[7:45, 7] = ring[7:45, 44] = True  # 255's 1-px rim
    assert labels(ring) == []  # an anti-aliased edge of 255 looks so: no label


def test_jpeg_ripples_of_real_clavicle_masks_are_no_thin_labels(tmp_path: Path) -> None:
    # SCR's clavicles saved as JPEGs of quality 75 ripple 252-254 beside 255 and 1 beside 0,
    # in lines: taken for thin labels (joined, or read as background) before the rule asked
    # for none higher around them and a step of some grey levels below.
    from helpers import shared

    masks = shared("SCR") / "masks"
    for name in ("left clavicle/JPCLN023.gif", "right clavicle/JPCLN027.gif",
                 "right clavicle/JPCLN029.gif", "left clavicle/JPCLN124.gif",
                 "right clavicle/JPCLN032.gif", "right clavicle/JPCNN033.gif"):  # fmt: skip
        with Image.open(masks / name) as image:
            path = _saved(tmp_path / "clavicle.jpg", image.convert("L"), quality=75)
        assert mask_labels(path) == ([], []), name


def test_resized_or_compressed_thin_binary_masks_have_no_labels(tmp_path: Path) -> None:
    # 1-pixel lines of 255 (centre lines, ROI outlines) resized or saved as JPEG: 191 beside
    # the 64 that resizing leaves, and 254 beside 255, were taken for thin labels drawn over
    # lower levels (a reviewer's finding on f028544: a false "label map of 2 labels").
    from PIL import ImageDraw

    tree = Image.new("L", (128, 128), 0)
    draw = ImageDraw.Draw(tree)
    rng, points = np.random.default_rng(0), [(64, 124)]
    for _ in range(15):
        x0, y0 = points[rng.integers(len(points))]
        x1, y1 = x0 + int(rng.integers(-30, 31)), y0 - int(rng.integers(5, 30))
        draw.line([x0, y0, x1, y1], fill=255, width=1)
        points.append((x1, y1))
    outlines = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(outlines).rectangle([10, 15, 60, 65], outline=255)
    ImageDraw.Draw(outlines).rectangle([70, 60, 120, 110], outline=255)
    for name, image in (("tree", tree), ("outlines", outlines)):
        for factor, kind in ((2.0, Image.BILINEAR), (0.6, Image.BOX), (0.75, Image.BICUBIC)):
            side = int(128 * factor)
            path = _saved(tmp_path / f"{name}.png", image.resize((side, side), kind))
            assert mask_labels(path) == ([], []), (name, factor, kind)
        for quality in (50, 75):
            path = _saved(tmp_path / f"{name}.jpg", image, quality=quality)
            assert mask_labels(path) == ([], []), (name, quality)
