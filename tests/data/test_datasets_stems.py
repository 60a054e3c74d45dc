"""A folder data set's image files of one name: a converted copy left beside its image is
refused, links of one file and one stem in two sub-folders are not (reviewer, session 58)."""

import re

import numpy as np
import pytest

from helpers import save
from localdisc.data.datasets import DatasetError, load_data_spec


def _image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    return mask


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize(
    ("copy", "named"),
    [("case1.tif", "case1.png and case1.tif"), ("CASE1.tif", "CASE1.tif and case1.png")],
)
def test_a_converted_copy_beside_its_image_is_refused_naming_both(tmp_path, copy, named, labelled):
    """``X.tif`` and a converted ``X.png`` in images/ were two items named X with one mask: the
    test split is drawn by name, so one copy was tested and the other trained on, and
    predictions/ kept one of each pair (reviewer's DRIVE folder). In another letter case too:
    masks are matched by :func:`name_key`. Named in sorted order."""
    root = tmp_path / "data"
    for i in range(3):
        save(root / "images" / f"case{i}.png", _image(i))
        if labelled:
            save(root / "masks" / f"case{i}.png", _mask())
    save(root / "images" / copy, _image(1))
    message = (
        f"{root / 'images'}: {named} are two files of one image (case1); keep one there "
        "(remove the copy or move it out of the folder)"
    )
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_data_spec(str(root))


def test_a_link_of_an_image_under_another_suffix_is_listed_once_not_refused(tmp_path):
    """A symbolic link ``case1.tif`` to ``case1.png`` has the same name but is the same file:
    :meth:`FolderDataset._once` lists it once, and nothing is refused."""
    root = tmp_path / "data"
    for i in range(3):
        save(root / "images" / f"case{i}.png", _image(i))
        save(root / "masks" / f"case{i}.png", _mask())
    try:
        (root / "images" / "case1.tif").symlink_to("case1.png")
    except OSError:
        pytest.skip("symbolic links are not available here")
    dataset = load_data_spec(str(root))
    assert [item.name for item in dataset.items] == ["case0", "case1", "case2"]
    assert dataset.repeated == [(root / "images" / "case1.tif", root / "images" / "case1.png")]


def test_one_stem_in_two_sub_folders_is_two_images(tmp_path):
    """``images/a/X.png`` and ``images/b/X.tif`` are named ``a/X`` and ``b/X``: two images, each
    with the mask at its own relative path."""
    root = tmp_path / "data"
    for i, (sub, suffix) in enumerate([("a", "png"), ("b", "tif"), ("b", "png")]):
        stem = "X" if i < 2 else "Y"
        save(root / "images" / sub / f"{stem}.{suffix}", _image(i))
        save(root / "masks" / sub / f"{stem}.png", _mask())
    dataset = load_data_spec(str(root))
    assert [item.name for item in dataset.items] == ["a/X", "b/X", "b/Y"]
    assert [item.masks["mask"][0].relative_to(root).as_posix() for item in dataset.items] == [
        "masks/a/X.png",
        "masks/b/X.png",
        "masks/b/Y.png",
    ]
