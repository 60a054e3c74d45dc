"""The pre-training pool: generated pools, ``max_images`` and the order of the images."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localdisc.data.pool import load_pool, resolve_pool, synthetic_pool
from localdisc.errors import DatasetError, ImageReadError


@pytest.mark.parametrize("spec", ["synthetic_fundus:0", "synthetic_fundus:00"])
def test_an_empty_generated_pool_is_a_clear_error(spec: str) -> None:
    with pytest.raises(DatasetError, match=f"{spec}: a generated pool needs N >= 1 images, not 0"):
        resolve_pool([spec], "fundus", 48, log=lambda m: None)


def test_synthetic_pool_of_no_images_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="synthetic_xray: a generated pool needs n >= 1"):
        synthetic_pool(0, "xray", 48)


def test_a_generated_pool_of_one_image_is_fine() -> None:
    pool, skipped = resolve_pool(["synthetic_fundus:1"], "fundus", 48, log=lambda m: None)
    assert tuple(pool.shape) == (1, 3, 48, 48) and skipped == []


def _grey_folder(root: Path, values: dict[str, int]) -> Path:
    """A folder of 12 x 12 grey PNGs, each of one value, named as given."""
    root.mkdir()
    for name, value in values.items():
        Image.fromarray(np.full((12, 12), value, np.uint8)).save(root / name)
    return root


def test_max_images_counts_generated_images_too() -> None:
    pool, _ = resolve_pool(["synthetic_xray:5"], "xray", 16, max_images=2, log=lambda m: None)
    assert torch.equal(pool, synthetic_pool(2, "xray", 16))
    pool, _ = resolve_pool(
        ["synthetic_xray:1", "synthetic_xray:1"], "xray", 16, max_images=1, log=lambda m: None
    )
    assert pool.shape[0] == 1


def test_max_images_keeps_the_first_images_in_the_order_of_the_specs(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"b.png": 200, "a.png": 100, "c.png": 50})
    specs = [str(folder), "synthetic_xray:2"]
    pool, _ = resolve_pool(specs, "xray", 8, max_images=4, log=lambda m: None)
    assert pool.shape[0] == 4
    assert [int(pool[i].float().mean()) for i in range(3)] == [100, 200, 50]  # by file name
    assert torch.equal(pool[3], synthetic_pool(1, "xray", 8)[0])
    pool, _ = resolve_pool(specs, "xray", 8, max_images=2, log=lambda m: None)
    assert [int(pool[i].float().mean()) for i in range(pool.shape[0])] == [100, 200]


def test_skipped_files_keep_the_order_of_the_others(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "c.png": 30})
    (folder / "b.png").write_bytes(b"not a png")
    pool, skipped = resolve_pool(
        [str(folder), "synthetic_xray:1"], "xray", 8, skip_bad=True, log=lambda m: None
    )
    assert pool.shape[0] == 3 and [int(pool[i].float().mean()) for i in (0, 1)] == [10, 30]
    assert torch.equal(pool[2], synthetic_pool(1, "xray", 8)[0])
    assert [p.name for p, _ in skipped] == ["b.png"]


def test_a_negative_seed_for_generated_images_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="synthetic_fundus: generated images need a seed >= 0"):
        resolve_pool(["synthetic_fundus:1"], "fundus", 16, seed=-1, log=lambda m: None)


# -- repeated sources: each image enters the pool once -------------------------------------------


def test_a_generated_spec_given_twice_adds_its_images_once() -> None:
    lines: list[str] = []
    pool, _ = resolve_pool(["synthetic_xray:3", "synthetic_xray:3"], "xray", 8, log=lines.append)
    assert torch.equal(pool, synthetic_pool(3, "xray", 8))
    assert lines == ["synthetic_xray:3: given more than once; its images are used once"]


def test_overlapping_generated_specs_add_the_seeds_not_yet_made() -> None:
    lines: list[str] = []
    specs = ["synthetic_xray:2", "synthetic_xray:4", "synthetic_xray:3"]
    pool, _ = resolve_pool(specs, "xray", 8, log=lines.append)
    assert torch.equal(pool, synthetic_pool(4, "xray", 8))  # seeds 0-3, each once
    assert lines == [
        "synthetic_xray:4: 2 of the 4 images are in the pool already, from synthetic_xray:2; "
        "each image is used once",
        "synthetic_xray:3: all 3 images are in the pool already, from synthetic_xray:2, "
        "synthetic_xray:4; each image is used once",
    ]
    # Another generator's images are other images.
    pool, _ = resolve_pool(
        ["synthetic_xray:2", "synthetic_xray_hard:2"], "xray", 8, log=lambda m: None
    )
    assert pool.shape[0] == 4


def test_a_folder_given_twice_or_with_a_sub_folder_adds_each_file_once(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "b.png": 20})
    sub = _grey_folder(folder / "sub", {"c.png": 30})
    for specs, order in [
        ([str(folder), str(folder)], [10, 20, 30]),
        ([str(folder), str(sub)], [10, 20, 30]),
        ([str(sub), str(folder)], [30, 10, 20]),  # first come, first placed
    ]:
        lines: list[str] = []
        pool, _ = resolve_pool(specs, "xray", 8, log=lines.append)
        assert [int(pool[i].float().mean()) for i in range(pool.shape[0])] == order
        repeated = [line for line in lines if "once" in line]
        assert len(repeated) == 1 and repeated[0].startswith(f"{specs[1]}: ")
    assert repeated == [
        f"{folder}: 1 of the 3 images is in the pool already, from {sub}; each image is used once"
    ]


def test_a_folder_linked_in_twice_adds_each_file_once(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "b.png": 20})
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    lines: list[str] = []
    pool, _ = resolve_pool([str(folder), str(link)], "xray", 8, log=lines.append)
    assert pool.shape[0] == 2
    assert f"{link}: all 2 images are in the pool already, from {folder}" in lines[0]


def test_max_images_counts_each_repeated_image_once(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "b.png": 20})
    specs = [str(folder), str(folder), "synthetic_xray:2"]
    pool, _ = resolve_pool(specs, "xray", 8, max_images=3, log=lambda m: None)
    assert [int(pool[i].float().mean()) for i in (0, 1)] == [10, 20]
    assert torch.equal(pool[2], synthetic_pool(1, "xray", 8)[0])


def test_a_pool_of_unreadable_files_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"not a png")
    with pytest.raises(ImageReadError) as caught:
        resolve_pool([str(folder)], "xray", 8, skip_bad=True, log=lambda m: None)
    assert str(caught.value) == (
        f"{folder / 'a.png'}: content is not a PNG, JPEG, BMP, GIF, PPM/PGM/PBM or TIFF image; "
        "no readable image in the pool (all 2 files skipped)"
    )


def test_generated_specs_are_named_in_any_letter_case() -> None:
    # As data set names everywhere: Synthetic_Fundus:2 is no folder of files.
    pool, _ = resolve_pool(["Synthetic_Fundus:2"], "fundus", 16, log=lambda m: None)
    assert torch.equal(pool, synthetic_pool(2, "fundus", 16))


def test_decoding_a_pool_shows_its_progress(tmp_path: Path, capsys) -> None:
    # A pool of thousands of files took minutes with nothing shown but "decoding N ...".
    folder = _grey_folder(tmp_path / "pool", {f"{i}.png": 10 * i for i in range(3)})
    resolve_pool([str(folder)], "xray", 8, log=lambda m: None, progress=True)
    assert "decoding: image 3/3 (100%)" in capsys.readouterr().out  # not a terminal: lines
    resolve_pool([str(folder)], "xray", 8, log=lambda m: None)
    assert capsys.readouterr().out == ""


def test_the_pool_names_each_image_by_its_source(tmp_path: Path, monkeypatch) -> None:
    # Figures of a pre-training titled "validation image 1 of 3": the tensor carried no paths.
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10})
    (folder / "sub").mkdir()
    Image.fromarray(np.full((12, 12), 20, np.uint8)).save(folder / "sub" / "b.png")
    (folder / "bad.png").write_bytes(b"not a png")  # skipped: no name either
    monkeypatch.chdir(tmp_path)  # a folder given relatively is named relative to it too
    names: list[str] = []
    specs = ["pool", "synthetic_xray:2", str(folder / "sub"), "synthetic_xray:3"]
    pool, skipped = resolve_pool(specs, "xray", 8, skip_bad=True, names=names, log=lambda m: None)
    assert [p.name for p, _ in skipped] == ["bad.png"]
    # pool/sub is in the pool already; synthetic_xray:3 adds its image of seed 2 only
    generated = [f"synthetic_xray {i}" for i in range(3)]
    assert names == ["a.png", "sub/b.png", *generated]
    assert len(names) == pool.shape[0]
    assert torch.equal(pool[4], synthetic_pool(3, "xray", 8)[2])
    names.clear()
    resolve_pool(specs, "xray", 8, max_images=1, skip_bad=True, names=names, log=lambda m: None)
    assert names == ["a.png"]


def test_skip_bad_stops_at_an_error_of_the_installation(tmp_path: Path, monkeypatch) -> None:
    """A missing DICOM decoder fails every file of its kind: skipped, it would empty the pool of
    them one by one; it stops the pre-training with what to install instead."""
    import localdisc.data.pool as pool_module
    from localdisc.errors import ReaderSetupError

    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)

    def no_decoder(path, **kwargs):
        raise ReaderSetupError(path, "no decoder installed: pip install python-gdcm")

    monkeypatch.setattr(pool_module, "read_image", no_decoder)
    with pytest.raises(ReaderSetupError, match="pip install python-gdcm"):
        resolve_pool([str(folder)], "xray", 8, skip_bad=True, log=lambda m: None)


def test_images_that_use_a_small_part_of_the_range_are_named(tmp_path: Path) -> None:
    # A 12-bit radiograph in a 16-bit PNG reads as 0 to 1/16 (16-bit files are scaled by
    # 65535): its pool copy keeps 17 grey levels, and the pool was built without a word.
    folder = tmp_path / "pool"
    folder.mkdir()
    ramp = np.add.outer(np.arange(32), np.arange(32)) / 62
    Image.fromarray((ramp * 4095).astype(np.uint16)).save(folder / "xray12.png")
    Image.fromarray((ramp * 255).astype(np.uint8)).save(folder / "xray8.png")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(folder / "xray16.png")
    lines: list[str] = []
    pool, _ = resolve_pool([str(folder)], "xray", 32, workers=1, log=lines.append)
    said = [line for line in lines if "1/8 of the intensity range" in line]
    assert said == [
        "1 pool image(s) use under 1/8 of the intensity range (xray12.png): their pool "
        "copies keep 17 grey levels or fewer; rescale them to the full range (12-bit data in a "
        "16-bit file reads so)"
    ]
    assert int(pool[0].max()) == 16  # the intensities are kept (fine-tuning reads them so)


def test_full_range_pools_say_nothing_of_the_range(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 200, "b.png": 32})
    lines: list[str] = []
    resolve_pool([str(folder), "synthetic_xray:2"], "xray", 8, log=lines.append)
    assert not any("intensity range" in line for line in lines)


def _means(pool: torch.Tensor) -> list[int]:
    """The mean grey value of each pool image (the images of ``_grey_folder`` are flat)."""
    return [int(image.float().mean()) for image in pool]


def test_skip_bad_keeps_generated_images_beside_a_folder_of_unreadable_files(
    tmp_path: Path,
) -> None:
    # The pool held 4 generated images, yet "no readable image in the pool" was raised.
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    pool, skipped = resolve_pool(
        ["synthetic_fundus:4", str(folder)], "fundus", 16, skip_bad=True, log=lambda m: None
    )
    assert torch.equal(pool, synthetic_pool(4, "fundus", 16))
    assert [p.name for p, _ in skipped] == ["a.png"]


def test_skip_bad_fills_max_images_from_the_files_left_out(tmp_path: Path) -> None:
    # Each skipped file cost a place: max_images=2 with 1 bad and 3 good files gave 1 image.
    folder = _grey_folder(tmp_path / "pool", {"b.png": 20, "c.png": 30, "d.png": 40})
    (folder / "a.png").write_bytes(b"not a png")
    names: list[str] = []
    pool, skipped = resolve_pool(
        [str(folder)], "xray", 8, max_images=2, skip_bad=True, names=names, log=lambda m: None
    )
    assert _means(pool) == [20, 30] and names == ["b.png", "c.png"]
    assert [p.name for p, _ in skipped] == ["a.png"]
    # In listing order across the specs, each file once, up to the files that run out.
    other = _grey_folder(tmp_path / "other", {"e.png": 50})
    (other / "f.png").write_bytes(b"not a png")
    specs = [str(other), str(folder), str(folder)]
    pool, skipped = resolve_pool(specs, "xray", 8, max_images=3, skip_bad=True, log=lambda m: None)
    assert _means(pool) == [50, 20, 30]
    assert [p.name for p, _ in skipped] == ["f.png", "a.png"]
    pool, _ = resolve_pool(specs, "xray", 8, max_images=9, skip_bad=True, log=lambda m: None)
    assert _means(pool) == [50, 20, 30, 40]


def test_skip_bad_without_bad_files_keeps_the_first_max_images_files(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "b.png": 20, "c.png": 30})
    specs = [str(folder), "synthetic_xray:2"]
    for skip_bad in (False, True):
        pool, skipped = resolve_pool(
            specs, "xray", 8, max_images=2, skip_bad=skip_bad, log=lambda m: None
        )
        assert _means(pool) == [10, 20] and skipped == []


def test_max_images_of_unreadable_files_only_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"no readable image in the pool \(all 3 files"):
        resolve_pool([str(folder)], "xray", 8, max_images=2, skip_bad=True, log=lambda m: None)


def test_load_pool_of_no_paths_is_a_clear_error() -> None:
    # It named the path "." as unreadable.
    with pytest.raises(DatasetError, match="no image paths given"):
        load_pool([], "xray", 8)


def test_load_pool_of_unreadable_files_says_why(tmp_path: Path) -> None:
    # It named the first file but not why it was skipped.
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        path.write_bytes(b"not a png")
    with pytest.raises(ImageReadError) as caught:
        load_pool(paths, "xray", 8, skip_bad=True)
    assert str(caught.value) == (
        f"{paths[0]}: content is not a PNG, JPEG, BMP, GIF, PPM/PGM/PBM or TIFF image; "
        "no readable image in the pool (all 2 files skipped)"
    )


def test_a_name_two_folders_share_is_each_file_s_path(tmp_path: Path) -> None:
    # a/0.png and b/0.png were both "0.png" in a run's val_names and figure titles (reviewer).
    a = _grey_folder(tmp_path / "a", {"0.png": 10, "1.png": 20})
    b = _grey_folder(tmp_path / "b", {"0.png": 30, "2.png": 40})
    names: list[str] = []
    resolve_pool([str(a), str(b)], "xray", 8, names=names, log=lambda m: None)
    assert names == [str(a / "0.png"), "1.png", str(b / "0.png"), "2.png"]


def test_a_known_data_set_of_the_other_modality_is_refused_before_decoding(tmp_path: Path) -> None:
    # jsrt_scr with the default --modality fundus was pre-trained as fundus (RGB, ImageNet
    # normalisation, fundus ROI crop) without a word; generated sets were refused (reviewer).
    with pytest.raises(DatasetError, match=re.escape(
        f"jsrt_scr:{tmp_path}: jsrt_scr holds xray images, and this run is of fundus ones: "
        "pre-train on it as xray (--modality xray; xray=SPEC in a benchmark's --pool)"
    )):  # fmt: skip
        resolve_pool([f"jsrt_scr:{tmp_path}"], "fundus", 8, log=lambda m: None)
    with pytest.raises(DatasetError, match="drive holds fundus images, and this run is of xray"):
        resolve_pool([f"drive:{tmp_path}"], "xray", 8, log=lambda m: None)


def test_data_whose_first_images_tell_no_modality_are_refused_not_called_fundus(tmp_path: Path):
    # Blank or unreadable first images said "fundus" (reviewer): now the guess reads on (up to
    # 50 images) and, where none tells, asks for --modality.
    from localdisc.data.pool import guess_pool_modality

    folder = tmp_path / "scans"
    for i in range(6):
        save_rgb = np.zeros((16, 16, 3), np.uint8)
        Image.fromarray(save_rgb).save(_mkdir(folder) / f"{i:02d}_blank.png")
    with pytest.raises(DatasetError, match="blank, which tells no modality; give --modality"):
        guess_pool_modality([str(folder)])
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(folder / "07_grey.png")
    assert guess_pool_modality([str(folder)]) == "xray"  # found after six blank ones


def _lfs_pointer(path: Path) -> Path:
    """What a clone without git-lfs leaves in place of an image: a text file of three lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{path.stem:0>64}\nsize 123456\n"
    )
    return path


def test_data_whose_images_cannot_be_read_name_the_first_and_why(tmp_path: Path) -> None:
    # Three Git LFS pointers saved as .png said "blank or unreadable, which tells no modality;
    # give --modality", naming no file; with --modality the read error came only then (newcomer).
    from localdisc.data.pool import guess_pool_modality

    photos = tmp_path / "photos"
    first = [_lfs_pointer(photos / f"eye{i}.png") for i in (1, 2, 3)][0]
    with pytest.raises(DatasetError) as caught:
        guess_pool_modality([str(photos)])
    said = str(caught.value)
    assert said.startswith(f"{photos}: none of its 3 images can be read (first: {first}: a Git ")
    assert "git lfs pull" in said and "--modality" not in said  # no option reads them
    # Unreadable among blank ones: named, and --modality still advised (the blank ones read).
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photos / "eye4.png")
    with pytest.raises(DatasetError, match=re.escape(
        f"{photos}: its first images are blank or unreadable (first unreadable: {first}: a Git LFS"
    )) as caught:  # fmt: skip
        guess_pool_modality([str(photos)])
    assert str(caught.value).endswith("which tells no modality; give --modality")
    # An image that tells, after unreadable ones, is the guess (as --skip-bad reads the pool).
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(photos / "eye5.png")
    assert guess_pool_modality([str(photos)]) == "xray"


def test_a_folder_that_cannot_be_read_beside_others_says_to_leave_it_out(tmp_path: Path) -> None:
    # --data lfs --data good: the way on is to fetch the files or leave the folder out; an
    # advice of --modality with --skip-bad named an option demo and shape-guided train lack.
    from localdisc.data.pool import guess_pool_modality

    lfs = [_lfs_pointer(tmp_path / "lfs" / f"a{i}.png") for i in range(3)][0]
    good = _mkdir(tmp_path / "good")
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(good / "x.png")
    with pytest.raises(DatasetError) as caught:
        guess_pool_modality([str(tmp_path / "lfs"), str(good)])
    said = str(caught.value)
    assert said.startswith(f"{tmp_path / 'lfs'}: none of its 3 images can be read (first: {lfs}")
    assert said.endswith("): fetch them, or leave it out of --data")
    assert "--modality" not in said and "--skip-bad" not in said


def test_data_whose_first_fifty_images_cannot_be_read_still_advise_modality(tmp_path: Path):
    # Beyond the first 50 (GUESS_LOOKS_AT) there may be readable images: --skip-bad with
    # --modality would read them, so the advice stays.
    from localdisc.data.pool import guess_pool_modality

    for i in range(51):
        _lfs_pointer(tmp_path / "scans" / f"{i:02d}.png")
    with pytest.raises(DatasetError, match=re.escape(
        f"none of its first 50 images can be read (first: {tmp_path / 'scans' / '00.png'}: "
    )) as caught:  # fmt: skip
        guess_pool_modality([str(tmp_path / "scans")])
    assert str(caught.value).endswith("which tells no modality; give --modality")


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_name_two_folders_share_keeps_its_links(tmp_path: Path) -> None:
    # Resolved, a pool of links was named by the link targets: a run made before could not
    # resume (reviewer). The absolute path as listed is kept.
    store = _grey_folder(tmp_path / "store", {"x.png": 10, "y.png": 20})
    for folder, target in (("a", "x.png"), ("b", "y.png")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0.png").symlink_to(store / target)
    names: list[str] = []
    resolve_pool([str(tmp_path / "a"), str(tmp_path / "b")], "xray", 8, names=names,
                 log=lambda m: None)  # fmt: skip
    assert names == [(tmp_path / "a" / "0.png").as_posix(), (tmp_path / "b" / "0.png").as_posix()]


def test_the_modality_guess_stops_at_an_error_of_the_installation(tmp_path, monkeypatch):
    # A missing pydicom read as "blank or unreadable, which tells no modality" (reviewer).
    import localdisc.data.datasets as datasets
    from localdisc.errors import ReaderSetupError

    def no_decoder(path, **kwargs):
        raise ReaderSetupError(path, "reading DICOM needs pydicom")

    monkeypatch.setattr(datasets, "_read_image", no_decoder)
    with pytest.raises(ReaderSetupError, match="needs pydicom"):
        datasets.guess_modality([tmp_path / "IM0001"])


def test_a_fundus_enters_the_pool_cut_to_its_field_of_view(tmp_path: Path) -> None:
    # METHOD.md 2: pool images are 512 x 512 after the ROI crop. Without it (a reviewer's
    # mutation passed every test) the retina shrank inside its camera frame, and similarity,
    # localisation and the viewer, which crop as the pool does, met another scale.
    yy, xx = np.mgrid[:140, :240]
    disc = (yy - 70) ** 2 + (xx - 120) ** 2 < 50**2  # a 100-px field of view, black around it
    photo = np.zeros((140, 240, 3), dtype=np.uint8)
    photo[disc] = (200, 120, 60)
    Image.fromarray(photo).save(tmp_path / "eye.png")
    pool, _ = resolve_pool([str(tmp_path)], "fundus", 64, log=lambda m: None)
    assert pool.shape == (1, 3, 64, 64) and pool.dtype == torch.uint8
    inside = (pool[0, 0] > 100).numpy()
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    # The disc spans the pool image but the 16-px margins (100 / 132 of it) in both directions
    # (uncut: 100 / 240 of its width)
    assert np.ptp(rows) + 1 > 0.7 * 64 and np.ptp(cols) + 1 > 0.7 * 64
    assert abs(np.ptp(rows) - np.ptp(cols)) <= 2  # a disc, not an ellipse
    assert pool[0, :, 0, 0].tolist() == [0, 0, 0]  # the frame's corner stays black
    assert pool[0, :, 32, 32].tolist() == [200, 120, 60]


@pytest.mark.parametrize(
    ("specs", "max_images", "skip_bad"),
    [
        (["{a}"], None, False),
        (["{a}", "{b}", "{a}"], None, True),
        (["synthetic_xray:2", "{b}", "{a}"], 4, True),
        (["{b}", "skimage:retina", "{a}"], 3, True),
        (["{a}/sub", "{a}"], 2, True),
    ],
)
def test_a_planned_pool_reads_the_files_its_pool_reads(tmp_path, specs, max_images, skip_bad):
    # A finished run's pool is compared with what its data give now without decoding them
    # (pool_files): the plan must pick the very files the pool read, skips and --max-images
    # filling included.
    from localdisc.data.pool import pool_files

    a = _grey_folder(tmp_path / "a", {"a1.png": 10, "a3.png": 30})
    (a / "a2.png").write_bytes(b"not a png")
    _grey_folder(a / "sub", {"s1.png": 40})
    b = _grey_folder(tmp_path / "b", {"b2.png": 60, "b3.png": 70})
    (b / "b1.png").write_bytes(b"not a png")
    if not skip_bad:
        (a / "a2.png").unlink()
    specs = [s.format(a=a, b=b) for s in specs]
    read: list[Path] = []
    pool, skipped = resolve_pool(specs, "xray", 8, max_images=max_images, skip_bad=skip_bad,
                                 files=read, log=lambda m: None)  # fmt: skip
    unreadable = [p.resolve() for p, _ in skipped]
    planned = pool_files(specs, "xray", max_images=max_images, skip_bad=skip_bad,
                         unreadable=unreadable)  # fmt: skip
    assert planned == read and len(read) == len({*read})
    assert read and not set(read) & set(unreadable) and len(read) <= pool.shape[0]


def test_a_pool_image_stands_upright(tmp_path: Path) -> None:
    # A 24 x 40 radiograph whose top half is bright enters the pool as resize_image makes it,
    # channels first: its top rows bright, not its left columns (a transposed pool image).
    from localdisc.data.pool import prepare_pool_image
    from localdisc.data.preprocess import resize_image

    photo = np.zeros((24, 40), np.uint8)
    photo[:12] = 255
    Image.fromarray(photo).save(tmp_path / "top.png")
    pool, _ = resolve_pool([str(tmp_path)], "xray", 16, log=lambda m: None)
    assert pool.shape == (1, 1, 16, 16)
    assert pool[0, 0, :8].eq(255).all() and pool[0, 0, 8:].eq(0).all()
    ramp = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40, 1)
    expected = np.round(resize_image(ramp, (16, 16)) * 255).astype(np.uint8)
    assert np.array_equal(prepare_pool_image(ramp, "xray", 16), expected.transpose(2, 0, 1))


def test_max_images_counts_skimage_retina_too() -> None:
    names: list[str] = []
    specs = ["synthetic_fundus:2", "skimage:retina"]
    pool, _ = resolve_pool(specs, "fundus", 32, max_images=2, names=names, log=lambda m: None)
    assert pool.shape[0] == 2 and names == ["synthetic_fundus 0", "synthetic_fundus 1"]


def test_skip_bad_fills_a_folder_given_twice_with_each_spare_file_once(tmp_path: Path) -> None:
    # The spare files of a folder given twice were candidates twice: its one good file filled
    # two skipped places and entered the pool twice.
    folder = _grey_folder(tmp_path / "pool", {"g.png": 70})
    for name in ("a1.png", "a2.png", "a3.png"):
        (folder / name).write_bytes(b"not a png")
    names: list[str] = []
    pool, skipped = resolve_pool([str(folder)] * 2, "xray", 8, max_images=3, skip_bad=True,
                                 names=names, log=lambda m: None)  # fmt: skip
    assert _means(pool) == [70] and names == ["g.png"]
    assert [p.name for p, _ in skipped] == ["a1.png", "a2.png", "a3.png"]
