"""Tests for localdisc.data.datasets written against mutants the other tests let live: each
pins a behaviour a user relies on (a hint, a match, a refusal) that a one-token slip would
change without a failing test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save
from localdisc.data.datasets import Item, SegmentationDataset, load_dataset
from localdisc.errors import DatasetError


def grey(h: int = 12, w: int = 10, value: int = 90) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def rgb(h: int = 12, w: int = 10, value: int = 90) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


# -- listing messages ------------------------------------------------------------------------


def test_an_archive_named_in_capitals_is_named_as_not_extracted(tmp_path: Path) -> None:
    # Windows and some mirrors give DRIVE.ZIP: the hint to extract it first must not need
    # a lower-case ending.
    (tmp_path / "DRIVE.ZIP").write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"holds DRIVE\.ZIP: extract it there first"):
        load_dataset("drive", tmp_path, "train")


def test_a_partial_download_missing_three_images_lists_them_all(tmp_path: Path) -> None:
    # ", ..." says more are missing than shown: with exactly three, all are shown.
    for n in range(4, 21):
        save(tmp_path / "test" / "images" / f"{n:02d}_test.tif", rgb(4, 4))
    note = load_dataset("drive", tmp_path, "test").incomplete_note()
    assert "3 image(s) of the official split missing (01_test.tif, 02_test.tif, 03_test.tif)" in (
        note
    )


def test_the_default_target_is_the_first_where_the_preferred_one_is_absent() -> None:
    # A loader whose files lack its preferred target evaluates its first target, as listed.
    class TwoTargets(SegmentationDataset):
        name = "two_targets"
        requires_root = False
        all_targets = ("a", "b")

        def _list_items(self) -> list[Item]:
            self.targets = ("a", "b")
            return [Item("x", Path("x.png"))]

    assert TwoTargets().default_target == "a"


@pytest.mark.parametrize("orientation", [5, 7])
def test_a_transposed_exif_orientation_is_named_for_a_mask_of_the_turned_size(
    tmp_path: Path, orientation: int
) -> None:
    # Orientations 5 and 7 (mirrored turns) swap width and height as 6 and 8 do: the mask drawn
    # on the image as viewers show it has the turned size, and the error must say why.
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb(16, 12)).save(tmp_path / "images" / "c0.jpg", exif=exif.tobytes())
    save(tmp_path / "masks" / "c0.png", grey(12, 16))
    with pytest.raises(DatasetError, match="as stored; viewers show it"):
        load_dataset("folder", tmp_path).check_mask_sizes()


# -- DRIVE's and HRF's fields of view --------------------------------------------------------


def test_an_unreadable_file_named_as_a_field_of_view_is_left_to_its_own_read(
    tmp_path: Path,
) -> None:
    # The check is a guard, not the reader: a broken file is reported where it is read, with
    # the reader's message, not as a crash of the guard.
    from localdisc.data.datasets import official_fov, refuse_official_fov

    broken = tmp_path / "mask" / "01_test_mask.gif"
    broken.parent.mkdir()
    broken.write_bytes(b"not a gif")
    assert official_fov(broken) is None
    refuse_official_fov(broken)


# -- DRIVE -------------------------------------------------------------------------------------


def test_drive_all_splits_say_the_fov_is_derived_unless_every_split_has_mask_files(
    tmp_path: Path,
) -> None:
    # training/ without mask/, test/ with it: some fields of view are derived, so the set's
    # FOV is not "official mask files" (benchmarks print the source beside the scores).
    save(tmp_path / "training" / "images" / "21_training.png", rgb())
    save(tmp_path / "test" / "images" / "01_test.png", rgb())
    save(tmp_path / "test" / "mask" / "01_test_mask.png", grey(value=255))
    assert load_dataset("drive", tmp_path, "all").fov_source == "derived from the image"


def test_drive_numbers_without_a_leading_zero_find_their_tracing(tmp_path: Path) -> None:
    # DRIVE names are NN_test; a copy renamed without the zero (1_test) is still read by its
    # number, not by its first two characters.
    save(tmp_path / "test" / "images" / "1_test.png", rgb())
    label = save(tmp_path / "test" / "1st_manual" / "1_manual1.png", grey(value=255))
    ds = load_dataset("drive", tmp_path, "test")
    assert [item.masks["vessels"] for item in ds.items] == [(label,)]


def test_only_drive_s_test_split_says_the_download_withholds_its_tracings(tmp_path: Path) -> None:
    save(tmp_path / "training" / "images" / "21_training.png", rgb())
    save(tmp_path / "test" / "images" / "01_test.png", rgb())
    train = load_dataset("drive", tmp_path, "train").missing_labels["vessels"]
    test = load_dataset("drive", tmp_path, "test").missing_labels["vessels"]
    assert "withholds" not in train and "(the public DRIVE download withholds them)" in test


# -- skip_bad: an item missing a file is left out, never kept without it --------------------


def test_stare_skip_bad_leaves_out_an_image_missing_its_first_observer_s_label(
    tmp_path: Path,
) -> None:
    for stem in ("im0001", "im0002"):
        save(tmp_path / "stare-images" / f"{stem}.ppm", rgb())
        save(tmp_path / "labels-vk" / f"{stem}.vk.ppm", grey())
    save(tmp_path / "labels-ah" / "im0002.ah.ppm", grey())
    ds = load_dataset("stare", tmp_path, "train", skip_bad=True)
    assert [item.name for item in ds.items] == ["im0002"]
    assert [p.name for p, _ in ds.skipped].count("im0001.ppm") == 1


@pytest.mark.parametrize("missing", ["manual1/01_dr.tif", "mask/01_dr_mask.tif"])
def test_hrf_skip_bad_leaves_out_an_image_missing_its_label_or_fov(
    tmp_path: Path, missing: str
) -> None:
    # Kept, 01_dr would be trained on without its vessels or scored over the whole image.
    for stem in ("01_dr", "01_g"):
        save(tmp_path / "images" / f"{stem}.jpg", rgb())
        save(tmp_path / "manual1" / f"{stem}.tif", grey())
        save(tmp_path / "mask" / f"{stem}_mask.tif", grey(value=255))
    (tmp_path / missing).unlink()
    ds = load_dataset("hrf", tmp_path, "train", skip_bad=True)
    assert [item.name for item in ds.items] == ["01_g"]
    assert [p.name for p, _ in ds.skipped if p.name == "01_dr.jpg"] == ["01_dr.jpg"]


# -- JSRT / SCR --------------------------------------------------------------------------------


def test_jsrt_takes_the_first_of_two_files_of_one_name_in_sorted_path_order(
    tmp_path: Path,
) -> None:
    first = save(tmp_path / "a" / "JPCLN001.png", grey(8, 8))
    save(tmp_path / "b" / "JPCLN001.png", grey(8, 8, 30))
    ds = load_dataset("jsrt_scr", tmp_path, "train", skip_bad=True)
    assert ds.image_paths == [first]


def test_scr_masks_of_some_organs_only_are_no_unlabelled_set(tmp_path: Path) -> None:
    # A heart mask without the lungs' is a broken SCR download: its images are bad items, not
    # silently an unlabelled set that pre-trains and scores nothing.
    save(tmp_path / "JPCLN001.png", grey(8, 8))
    save(tmp_path / "masks" / "heart" / "JPCLN001.gif", grey(8, 8, 255))
    with pytest.raises(DatasetError, match=r"every jsrt_scr train item was skipped"):
        load_dataset("jsrt_scr", tmp_path, "train", skip_bad=True)


def test_jsrt_file_names_in_lower_case_are_found(tmp_path: Path) -> None:
    # Converted copies are often written in lower case (jpcln001.png).
    image = save(tmp_path / "jpcln001.png", grey(8, 8))
    ds = load_dataset("jsrt_scr", tmp_path, "train", skip_bad=True)
    assert ds.image_paths == [image] and ds.fov_source == "whole image"


def test_montgomery_reads_only_the_set_s_x_rays_from_cxr_png(tmp_path: Path) -> None:
    # A thumbnail or a note saved in CXR_png/ is no X-ray of the set (and no item to train on).
    xray = save(tmp_path / "MontgomerySet" / "CXR_png" / "MCUCXR_0001_0.png", grey())
    save(tmp_path / "MontgomerySet" / "CXR_png" / "thumbnail.png", grey())
    assert load_dataset("montgomery", tmp_path).image_paths == [xray]


# -- folder data sets and match_masks ----------------------------------------------------------


def test_a_mask_ending_counts_only_at_the_end_of_the_stem() -> None:
    from localdisc.data.datasets import mask_suffix_base

    assert mask_suffix_base("case01_Mask") == "case01"
    assert mask_suffix_base("case01_mask_v2") is None  # a version of a mask of case01_mask?
    assert mask_suffix_base("_mask") is None  # no image stem before the ending


def test_two_masks_with_the_stem_plus_an_ending_elsewhere_are_no_match(tmp_path: Path) -> None:
    # masks/x/a_mask.png and masks/y/a_mask.png for images/a.png: either may be its mask.
    from localdisc.data.datasets import match_masks

    image = save(tmp_path / "images" / "a.png", rgb())
    for sub in ("x", "y"):
        save(tmp_path / "masks" / sub / "a_mask.png", grey())
    (match,) = match_masks([image], tmp_path / "masks", image_dirs=[tmp_path / "images"])
    assert match.mask is None and "2 masks in" in match.reason and not match.absent


def test_a_folder_names_five_unlabelled_images_and_counts_the_rest(tmp_path: Path) -> None:
    save(tmp_path / "images" / "a0.png", rgb())
    save(tmp_path / "masks" / "a0.png", grey())
    for n in range(1, 7):
        save(tmp_path / "images" / f"b{n}.png", rgb())
    why = load_dataset("folder", tmp_path).missing_labels["mask"]
    assert why.startswith("6 of the 7 images have no mask") and "b5 and 1 more (" in why
