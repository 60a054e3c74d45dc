"""Masks named as the public retinal vessel sets name them (``match_masks``' official names):
``--masks DRIVE/test/1st_manual`` matched none of DRIVE's ``01_manual1.gif`` to ``01_test.tif``,
so a researcher's ``predict --masks`` scored nothing."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import save, shared
from localdisc.data.datasets import image_stem, load_dataset, match_masks
from localdisc.tasks.predict import target_mask_files


def _mask(seed: int = 0) -> np.ndarray:
    """A tiny binary mask (0/255), a little different per seed."""
    out = np.zeros((8, 8), np.uint8)
    out[seed % 8, :] = 255
    return out


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)


def _save_gz(path: Path, array: np.ndarray) -> Path:
    """``array`` as a gzipped PPM, as STARE ships its images and tracings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    rgb = array if array.ndim == 3 else np.stack([array] * 3, axis=-1)
    Image.fromarray(rgb).save(buffer, format="PPM")
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def _pairs(matches) -> list[tuple[str, str | None]]:
    return [(m.image.name, m.mask.name if m.mask is not None else None) for m in matches]


def test_drive_names_match_each_observers_folder(tmp_path: Path) -> None:
    # DRIVE's layout: images/, 1st_manual/, 2nd_manual/ and mask/ (fields of view) side by side.
    root = tmp_path / "DRIVE" / "test"
    names = ["01_test.tif", "02_test.tif", "21_training.tif"]
    images = [save(root / "images" / name, _image(i)) for i, name in enumerate(names)]
    for n in ("01", "02", "21"):
        save(root / "1st_manual" / f"{n}_manual1.gif", _mask(1))
        save(root / "2nd_manual" / f"{n}_manual2.gif", _mask(2))
        save(root / "mask" / f"{n}_test_mask.gif", np.full((8, 8), 255, np.uint8))
    # A mask named as the image still wins (the existing rule): never the official one beside it.
    own = save(root / "1st_manual" / "02_test.gif", _mask(3))
    first = match_masks(images, root / "1st_manual", image_dirs=[root / "images"])
    assert _pairs(first) == [
        ("01_test.tif", "01_manual1.gif"),
        ("02_test.tif", own.name),
        ("21_training.tif", "21_manual1.gif"),
    ]
    second = match_masks(images, root / "2nd_manual", image_dirs=[root / "images"])
    assert [m.mask.name for m in second] == ["01_manual2.gif", "02_manual2.gif", "21_manual2.gif"]
    # What predict --images DRIVE/test/images --masks DRIVE/test/1st_manual scores against.
    files = [(image_stem(p), p) for p in images]
    matched = target_mask_files(files, [root / "images"], root / "1st_manual")
    assert matched["01_test"].mask == root / "1st_manual" / "01_manual1.gif"


def test_stare_names_match_with_and_without_gzip(tmp_path: Path) -> None:
    images = [
        _save_gz(tmp_path / "stare-images" / "im0001.ppm.gz", _image(1)),
        save(tmp_path / "stare-images" / "im0002.ppm", _image(2)),
    ]
    _save_gz(tmp_path / "labels-ah" / "im0001.ah.ppm.gz", _mask(1))
    _save_gz(tmp_path / "labels-ah" / "im0002.ah.ppm.gz", _mask(2))
    save(tmp_path / "labels-vk" / "im0001.vk.ppm", _mask(3))
    save(tmp_path / "labels-vk" / "im0002.vk.ppm", _mask(4))
    dirs = [tmp_path / "stare-images"]
    ah = match_masks(images, tmp_path / "labels-ah", image_dirs=dirs)
    assert _pairs(ah) == [("im0001.ppm.gz", "im0001.ah.ppm.gz"), ("im0002.ppm", "im0002.ah.ppm.gz")]
    vk = match_masks(images, tmp_path / "labels-vk", image_dirs=dirs)
    assert _pairs(vk) == [("im0001.ppm.gz", "im0001.vk.ppm"), ("im0002.ppm", "im0002.vk.ppm")]


def test_chase_db1_names_match_each_eye(tmp_path: Path) -> None:
    images = [
        save(tmp_path / "images" / f"Image_01{eye}.jpg", _image(i)) for i, eye in enumerate("LR")
    ]
    for eye in "LR":
        save(tmp_path / "first" / f"Image_01{eye}_1stHO.png", _mask(1))
        save(tmp_path / "second" / f"Image_01{eye}_2ndHO.png", _mask(2))
    first = match_masks(images, tmp_path / "first", image_dirs=[tmp_path / "images"])
    assert _pairs(first) == [
        ("Image_01L.jpg", "Image_01L_1stHO.png"),
        ("Image_01R.jpg", "Image_01R_1stHO.png"),
    ]
    second = match_masks(images, tmp_path / "second", image_dirs=[tmp_path / "images"])
    assert [m.mask.name for m in second] == ["Image_01L_2ndHO.png", "Image_01R_2ndHO.png"]
    # A folder data set (images/ beside masks/) matches them as well.
    for eye in "LR":
        save(tmp_path / "masks" / f"Image_01{eye}_1stHO.png", _mask(1))
    dataset = load_dataset("folder", tmp_path)
    assert [item.masks["mask"][0].name for item in dataset.items] == [
        "Image_01L_1stHO.png",
        "Image_01R_1stHO.png",
    ]


def test_two_observers_in_one_folder_give_no_mask_and_say_so(tmp_path: Path) -> None:
    # labels/ with both STARE observers (a merged download): neither is picked unsaid.
    images = [save(tmp_path / "images" / f"im000{n}.ppm", _image(n)) for n in (1, 2)]
    _save_gz(tmp_path / "labels" / "im0001.ah.ppm.gz", _mask(1))
    _save_gz(tmp_path / "labels" / "im0001.vk.ppm.gz", _mask(2))
    _save_gz(tmp_path / "labels" / "im0002.ah.ppm.gz", _mask(3))  # one observer: taken
    both, one = match_masks(images, tmp_path / "labels", image_dirs=[tmp_path / "images"])
    assert both.mask is None and not both.absent  # a naming problem, not an unlabelled image
    assert "im0001.ah.ppm.gz, im0001.vk.ppm.gz" in both.reason
    assert "two observers" in both.reason and "labels-ah" in both.reason
    assert one.mask == tmp_path / "labels" / "im0002.ah.ppm.gz"
    # DRIVE's and CHASE_DB1's two observers in one folder alike.
    drive = save(tmp_path / "d" / "01_test.tif", _image(5))
    save(tmp_path / "dm" / "01_manual1.gif", _mask(1))
    save(tmp_path / "dm" / "01_manual2.gif", _mask(2))
    (match,) = match_masks([drive], tmp_path / "dm")
    assert match.mask is None and "01_manual1.gif, 01_manual2.gif" in match.reason
    chase = save(tmp_path / "c" / "Image_03R.jpg", _image(6))
    save(tmp_path / "cm" / "Image_03R_1stHO.png", _mask(1))
    save(tmp_path / "cm" / "Image_03R_2ndHO.png", _mask(2))
    (match,) = match_masks([chase], tmp_path / "cm")
    assert match.mask is None and "two observers" in match.reason


def test_official_names_never_pair_another_number(tmp_path: Path) -> None:
    images = [
        save(tmp_path / "images" / "01_test.tif", _image(1)),
        save(tmp_path / "images" / "011_test.tif", _image(2)),
        save(tmp_path / "images" / "im0001.ppm", _image(3)),
        save(tmp_path / "images" / "Image_01L.jpg", _image(4)),
    ]
    save(tmp_path / "masks" / "011_manual1.gif", _mask(1))
    save(tmp_path / "masks" / "1_manual1.gif", _mask(2))
    _save_gz(tmp_path / "masks" / "im00010.ah.ppm.gz", _mask(3))
    save(tmp_path / "masks" / "Image_01R_1stHO.png", _mask(4))  # the other eye
    save(tmp_path / "masks" / "Image_011L_1stHO.png", _mask(5))
    matches = match_masks(images, tmp_path / "masks", image_dirs=[tmp_path / "images"])
    assert _pairs(matches) == [
        ("01_test.tif", None),
        ("011_test.tif", "011_manual1.gif"),
        ("im0001.ppm", None),
        ("Image_01L.jpg", None),
    ]
    # The reason of an unmatched image names the official names it was tried with.
    assert all(m.absent and "01_manual1" in m.reason for m in matches if m.mask is None)
    assert "im0001.ah" in matches[2].reason and "Image_01L_1stHO" in matches[3].reason
    # Two images of one number (01_test and 01_training): whose 01_manual1 is it?
    both = [*images[:1], save(tmp_path / "images" / "01_training.tif", _image(6))]
    save(tmp_path / "masks" / "01_manual1.gif", _mask(6))
    matches = match_masks(both, tmp_path / "masks", image_dirs=[tmp_path / "images"])
    assert [m.mask for m in matches] == [None, None]
    assert "2 images have that number" in matches[0].reason and not matches[0].absent


def test_shared_drive_and_stare_match_every_image_to_its_number() -> None:
    drive = shared("DRIVE")
    for split, folder, observer in [
        ("test", "1st_manual", "manual1"),
        ("test", "2nd_manual", "manual2"),
        ("training", "1st_manual", "manual1"),
    ]:
        images_dir, masks = drive / split / "images", drive / split / folder
        if not masks.is_dir():
            continue
        images = sorted(p for p in images_dir.iterdir() if not p.name.startswith("."))
        matches = match_masks(images, masks, image_dirs=[images_dir])
        assert images and all(m.mask is not None for m in matches), matches[0].reason
        for m in matches:
            number = image_stem(m.image).split("_")[0]
            assert image_stem(m.mask) == f"{number}_{observer}"
    stare = shared("STARE")
    images_dir = stare / "stare-images"
    images = sorted(p for p in images_dir.iterdir() if not p.name.startswith("."))
    matches = match_masks(images, stare / "labels-ah", image_dirs=[images_dir])
    assert images and all(m.mask is not None for m in matches), matches[0].reason
    assert all(image_stem(m.mask) == f"{image_stem(m.image)}.ah" for m in matches)
