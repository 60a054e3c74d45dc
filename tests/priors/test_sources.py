"""Tests for loading shape priors from folders, data sets and simulators."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SHARED, save
from localdisc.data.preprocess import resize_mask
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import DatasetError
from localdisc.priors import describe_prior, load_prior, prior_masks, simulate_masks
from localdisc.priors.sources import _parse


@pytest.fixture
def mask_folder(tmp_path: Path) -> Path:
    """Four masks in the usual encodings, one nested, one not square, plus files to ignore."""
    root = tmp_path / "masks"
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255  # 0/255 grey
    save(root / "a.png", left)
    corner = np.zeros((64, 64, 3), np.uint8)
    corner[32:, 32:, 0] = 200  # drawn in red on black: only one channel is set
    save(root / "c_rgb.png", corner)
    wide = np.ones((20, 40), np.uint8)  # 0/1 (here all 1), 2:1 wide
    save(root / "d_wide.bmp", wide)
    top = np.zeros((48, 48), np.uint8)
    top[:24] = 1  # 0/1 grey
    save(root / "sub" / "b.png", top)
    (root / "README.txt").write_text("not a mask")
    save(root / ".hidden.png", np.full((8, 8), 255, np.uint8))
    return root


def test_folder_prior_reads_every_encoding_recursively(mask_folder: Path) -> None:
    bank = load_prior(str(mask_folder), 32)
    assert bank.dtype == torch.bool and bank.shape == (4, 1, 32, 32)
    a, c, d, b = bank[:, 0].numpy()  # sorted by path: a, c_rgb, d_wide, sub/b
    expected = np.zeros((32, 32), bool)
    expected[:, :16] = True
    np.testing.assert_array_equal(a, expected)
    expected = np.zeros((32, 32), bool)
    expected[16:, 16:] = True
    np.testing.assert_array_equal(c, expected)
    expected = np.zeros((32, 32), bool)
    expected[:16] = True
    np.testing.assert_array_equal(b, expected)
    # A 40 x 20 mask is padded to a centred square, not stretched: rows 8-23 of 32.
    expected = np.zeros((32, 32), bool)
    expected[8:24] = True
    np.testing.assert_array_equal(d, expected)
    assert describe_prior(str(mask_folder)) == f"4 masks from {mask_folder}"


def test_gif_masks_are_read_and_hidden_folders_skipped(tmp_path: Path) -> None:
    # DRIVE's manual annotations are .gif files. A hidden folder (a notebook's
    # .ipynb_checkpoints, .git) is skipped as hidden files are: its stale copies would join the
    # prior as shapes of their own.
    yy, xx = np.mgrid[:64, :64]
    discs = [(yy - 32) ** 2 + (xx - 32) ** 2 < (15 + i) ** 2 for i in range(3)]
    for i, disc in enumerate(discs):
        save(tmp_path / "m" / f"{i + 21}_manual1.gif", disc.astype(np.uint8) * 255)
    square = np.zeros((64, 64), np.uint8)
    square[5:60, 5:60] = 255
    save(tmp_path / "m" / ".ipynb_checkpoints" / "21_manual1-checkpoint.gif", square)
    bank = load_prior(str(tmp_path / "m"), 32)
    assert bank.shape == (3, 1, 32, 32)
    for mask, disc in zip(bank[:, 0].numpy(), discs, strict=True):
        np.testing.assert_array_equal(mask, resize_mask(disc, 32))
    assert describe_prior(str(tmp_path / "m")) == f"3 masks from {tmp_path / 'm'}"


def test_a_mask_drawn_in_several_colours_is_a_mask(tmp_path: Path) -> None:
    # A colour mask's foreground is its brightest channel (read_mask), and so are its grey
    # levels (grey_share): a label map drawn in red and in white on black is a mask of both.
    # By the channel mean, red (1/3) was a grey level and the mask refused as a photograph.
    labels = np.zeros((64, 64, 3), np.uint8)
    labels[8:56, 4:30] = (255, 0, 0)
    labels[8:56, 34:60] = (255, 255, 255)
    save(tmp_path / "m" / "labels.png", labels)
    bank = load_prior(str(tmp_path / "m"), 32)
    np.testing.assert_array_equal(bank[0, 0].numpy(), resize_mask(labels.max(2) > 0, 32))


def test_folder_with_a_colon_in_its_name(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    save(tmp_path / "run:2" / "m.png", mask)
    bank = load_prior(str(tmp_path / "run:2"), 16)
    assert bank.shape == (1, 1, 16, 16) and bank.sum() == 64


def test_corrupt_mask_file_is_named(mask_folder: Path) -> None:
    (mask_folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_prior(str(mask_folder), 32)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no masks here")
    with pytest.raises(DatasetError, match="no mask images found"):
        load_prior(str(tmp_path / "empty"), 32)
    with pytest.raises(DatasetError, match="no such folder"):
        load_prior(str(tmp_path / "absent"), 32)
    with pytest.raises(DatasetError, match="no such folder"):
        describe_prior(str(tmp_path / "absent"))
    # An unknown data set name reads as a folder: the message says which names are known.
    with pytest.raises(DatasetError, match="'scr' is not a known data set.*jsrt_scr"):
        load_prior("scr:/no/such/SCR:lung", 32)


def test_a_kept_pose_stretches_masks_as_the_images_are(tmp_path: Path) -> None:
    """Radiographs that are not square are stretched to the square (pool, segment); their
    masks were padded, so a kept-pose prior had the organs inwards of where the images did."""
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 30:] = 255  # the right quarter, as in a 2:1 image
    save(tmp_path / "m" / "wide.png", wide)
    kept = load_prior(str(tmp_path / "m"), 16, pose="kept")[0, 0].numpy()
    expected = np.zeros((16, 16), bool)
    expected[:, 12:] = True
    np.testing.assert_array_equal(kept, expected)
    free = load_prior(str(tmp_path / "m"), 16)[0, 0].numpy()  # shapes keep their proportions
    assert free[:4].sum() == 0 and free[4:12, 12:].all()
    assert prior_masks(str(tmp_path / "m"), 16, pose="kept")[0].tolist() == kept.tolist()
    with pytest.raises(ValueError, match="pose"):
        load_prior(str(tmp_path / "m"), 16, pose="upright")


def test_a_folder_of_photographs_is_no_prior(tmp_path: Path) -> None:
    """The image folder given as --prior (or a photograph among the masks) was thresholded at
    half scale and trained against as reference shapes, without a word."""
    eye = (synthetic_fundus(64, seed=0).image * 255).astype(np.uint8)
    save(tmp_path / "photos" / "eye.png", eye)
    with pytest.raises(DatasetError, match=r"eye\.png: not a mask: \d+% of its pixels are grey"):
        load_prior(str(tmp_path / "photos"), 32)
    # Masks of any two levels, label maps and anti-aliased masks are masks.
    disc = np.zeros((64, 64), np.uint8)
    disc[16:48, 16:48] = 128
    save(tmp_path / "masks" / "half.png", disc)
    save(tmp_path / "masks" / "labels.png", (disc > 0).astype(np.uint8) * 2)
    soft = np.asarray(Image.fromarray(disc * 2 - (disc > 0)).resize((24, 24), Image.BILINEAR))
    save(tmp_path / "masks" / "soft.png", soft)
    assert load_prior(str(tmp_path / "masks"), 32).shape == (3, 1, 32, 32)


def test_all_empty_masks_raise(tmp_path: Path) -> None:
    for i in range(2):
        save(tmp_path / "blank" / f"{i}.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DatasetError, match="every mask is empty"):
        load_prior(str(tmp_path / "blank"), 16)


def test_empty_and_all_foreground_masks_are_left_out(tmp_path: Path) -> None:
    # A blank white image was taken for a mask of nothing but foreground.
    shape = np.zeros((16, 16), np.uint8)
    shape[4:12, 4:12] = 255
    save(tmp_path / "m" / "blank.png", np.zeros((16, 16), np.uint8))
    save(tmp_path / "m" / "full.png", np.full((16, 16), 255, np.uint8))
    save(tmp_path / "m" / "shape.png", shape)
    bank = load_prior(str(tmp_path / "m"), 8)
    assert bank.shape == (1, 1, 8, 8) and bank.float().mean() == 0.25
    assert "(1 used: the others are empty or all foreground at 8 x 8)" in describe_prior(
        str(tmp_path / "m"), used=bank
    )
    (tmp_path / "m" / "shape.png").unlink()
    with pytest.raises(DatasetError, match="every mask is empty or all foreground at 8 x 8"):
        load_prior(str(tmp_path / "m"), 8)


def test_a_vessel_prior_drawn_dark_on_white_is_refused(tmp_path: Path) -> None:
    # Inverted DSA masks: shape-guided vessels thresholded its filters at 95 % of the FOV.
    from localdisc.tasks.benchmark_shape_guided import expected_fraction

    for i in range(3):
        vessels = synthetic_fundus(64, seed=i).vessels
        save(tmp_path / "dark" / f"{i}.png", np.where(vessels, 0, 255).astype(np.uint8))
        save(tmp_path / "bright" / f"{i}.png", np.where(vessels, 255, 0).astype(np.uint8))
    assert 0 < expected_fraction(load_prior(str(tmp_path / "bright"), 64), tubular=True) < 0.3
    dark = str(tmp_path / "dark")
    with pytest.raises(DatasetError, match=r"foreground \(median\), no vessel tree: drawn dark"):
        expected_fraction(load_prior(dark, 64), tubular=True, spec=dark)
    # An organ may cover most of the image: no such rule.
    assert expected_fraction(load_prior(dark, 64), tubular=False) > 0.5


def test_simulated_prior() -> None:
    bank = load_prior("simulated:lungs", 32, count=3, seed=5)
    assert bank.dtype == torch.bool and bank.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(bank[:, 0].numpy(), simulate_masks("lungs", 32, 3, seed=5))
    assert "lungs" in describe_prior("simulated:lungs")
    with pytest.raises(DatasetError, match="unknown simulator 'kidney'.*vessels, lungs"):
        load_prior("simulated:kidney", 32)


def test_dataset_prior_uses_every_split_and_the_default_target() -> None:
    # synthetic_fundus:2 is 2 train + 1 test image; its only target is "vessels".
    bank = load_prior("synthetic_fundus:2", 64)
    assert bank.dtype == torch.bool and bank.shape == (3, 1, 64, 64)
    first = resize_mask(synthetic_fundus(256, 0).vessels, 64)
    np.testing.assert_array_equal(bank[0, 0].numpy(), first)
    assert torch.equal(load_prior("synthetic_fundus:2:vessels", 64), bank)
    assert describe_prior("synthetic_fundus:2") == "3 vessels masks of synthetic_fundus (generated)"


def test_dataset_prior_target_and_errors() -> None:
    heart = load_prior("synthetic_xray:1:heart", 32)
    assert heart.shape == (2, 1, 32, 32)
    assert 0.03 < heart.float().mean() < 0.15  # hearts, not lungs (~0.3)
    # A generated set needs no ROOT: "synthetic_xray:heart" is the default count's hearts.
    spec = _parse("synthetic_xray:heart")
    assert (spec.kind, spec.root, spec.target) == ("dataset", None, "heart")
    with pytest.raises(DatasetError, match="no target 'arteries'.*vessels"):
        load_prior("synthetic_fundus:2:arteries", 32)
    with pytest.raises(DatasetError, match="no such folder"):
        load_prior("drive:/no/such/DRIVE", 32)


def test_a_prior_data_set_whose_root_is_missing_is_named_the_shape_prior_s(tmp_path: Path):
    # Its DatasetError passed through unprefixed: it read as if --data were wrong (reviewer).
    for spec in (f"jsrt_scr:{tmp_path / 'no'}:heart", f"stare:{tmp_path / 'no'}"):
        with pytest.raises(DatasetError) as caught:
            load_prior(spec, 32)
        assert str(caught.value).startswith(f"shape prior {spec!r}: {tmp_path / 'no'}: no such")
        assert isinstance(caught.value.__cause__, DatasetError)
        with pytest.raises(DatasetError, match=f"^shape prior {re.escape(repr(spec))}: "):
            describe_prior(spec)


def test_spec_parsing_keeps_colons_in_the_root(tmp_path: Path) -> None:
    spec = _parse("jsrt_scr:/data/run:2:heart")
    assert (spec.kind, spec.name, spec.root, spec.target) == (
        "dataset",
        "jsrt_scr",
        Path("/data/run:2"),
        "heart",
    )
    spec = _parse("drive:/data/run:2")  # "2" is no DRIVE target: part of the root
    assert (spec.root, spec.target) == (Path("/data/run:2"), None)
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match="no target 'lungs'"):
        _parse(f"jsrt_scr:{tmp_path / 'x'}:lungs")
    assert _parse("simulated:fovea").name == "fovea"
    assert _parse("/data/octa").kind == "folder"


def test_real_octa_prior() -> None:
    folder = SHARED / "priors" / "octa_vessels"
    if not folder.is_dir():
        pytest.skip(f"OCTA vessel masks not available at {folder} (../shared/data is optional)")
    bank = load_prior(str(folder), 128)
    assert bank.shape == (10, 1, 128, 128)
    fractions = bank.float().mean(dim=(1, 2, 3))
    assert bool(((fractions > 0.03) & (fractions < 0.25)).all()), fractions  # ~9% vessels
    assert describe_prior(str(folder)) == f"10 masks from {folder}"


def test_prior_masks_are_cached_per_bank(tmp_path: Path) -> None:
    """A simulated prior's count and seed pick its masks: the cache used to key on the spec and
    size only, with load_prior's default bank for every run."""
    from localdisc.priors import prior_frequency, prior_masks

    small = prior_masks("simulated:heart", 32, count=3, seed=4)
    np.testing.assert_array_equal(small, load_prior("simulated:heart", 32, count=3, seed=4)[:, 0])
    assert small.shape == (3, 32, 32) and not small.flags.writeable
    assert prior_masks("simulated:heart", 32, count=3, seed=4) is small
    np.testing.assert_array_equal(prior_masks("simulated:heart", 32, count=3, seed=5)[0], small[1])
    assert len(prior_masks("simulated:heart", 32)) == 200  # load_prior's defaults
    np.testing.assert_allclose(prior_frequency("simulated:heart", 32, count=3, seed=4),
                               small.mean(0))  # fmt: skip
    # Other specs have no count or seed: any given share one bank.
    folder = tmp_path / "masks"
    for i in range(2):
        mask = np.zeros((16, 16), np.uint8)
        mask[4 + i : 10, 4:10] = 255
        save(folder / f"{i}.png", mask)
    bank = prior_masks(str(folder), 16, count=1, seed=7)
    assert bank.shape == (2, 16, 16) and prior_masks(str(folder), 16) is bank


def test_prior_frequency_of_a_kept_pose_stretches_masks_that_are_not_square(tmp_path: Path) -> None:
    # It padded them, while the run's masks (pose kept) are stretched as the images are.
    from localdisc.priors import prior_frequency

    mask = np.zeros((16, 32), np.uint8)
    mask[:, :8] = 255  # the left quarter, every row
    save(tmp_path / "wide" / "0.png", mask)
    kept = prior_frequency(str(tmp_path / "wide"), 16, pose="kept")
    np.testing.assert_array_equal(kept, prior_masks(str(tmp_path / "wide"), 16, pose="kept")[0])
    assert kept[:, 0].all() and not kept[:, -1].any()  # every row, as in the file


def test_a_bank_larger_than_the_machines_memory_is_refused_before_drawing(monkeypatch):
    # --prior-count 100000000 drew masks for hours without a word, to run out of memory.
    from localdisc.errors import LocaldiscError
    from localdisc.priors import sources

    with pytest.raises(LocaldiscError, match=r"100000000 masks at 448 x 448 need about 37\d\d\d"):
        sources.load_prior("simulated:vessels", 448, count=100_000_000)  # 37 TiB
    monkeypatch.setattr(sources, "_memory_bytes", lambda: 2**20)  # 1 MiB: 8 masks at 256 fit
    with pytest.raises(LocaldiscError, match="give a smaller --prior-count"):
        sources.load_prior("simulated:lungs", 256, count=9)
    assert sources.load_prior("simulated:lungs", 256, count=8).shape == (8, 1, 256, 256)
