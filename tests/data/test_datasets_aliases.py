"""A folder's image files listed under two names (symbolic or hard links), two files of one
name (a converted copy, refused), and the modality guessed from a folder's first images: fundus
at a colour one (reviewers, sessions 57 and 58)."""

import re

import numpy as np
import pytest

import localdisc.data.datasets as datasets
from helpers import save
from localdisc.data.datasets import DatasetError, FolderDataset, guess_modality, load_data_spec


def _image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    return mask


def _link(link, target: str) -> None:
    try:
        link.symlink_to(target)
    except OSError:  # a file system (or platform) without symbolic links
        pytest.skip("symbolic links are not available here")


def test_an_image_linked_under_another_name_is_listed_once(tmp_path):
    """10 images and 10 symbolic links to them under other names (their masks linked alike):
    finetune held the same files out for testing under one name and trained on them under
    the other. Each file is listed once, and the set says how many were left out."""
    root = tmp_path / "data"
    for i in range(4):
        save(root / "images" / f"case{i}.png", _image(i))
        save(root / "masks" / f"case{i}.png", _mask())
        _link(root / "images" / f"alias{i}.png", f"case{i}.png")
        _link(root / "masks" / f"alias{i}.png", f"case{i}.png")
    dataset = load_data_spec(str(root))
    assert [item.name for item in dataset.items] == [f"case{i}" for i in range(4)]
    assert len({item.image.resolve() for item in dataset.items}) == 4
    assert dataset.repeated[0] == (root / "images" / "alias0.png", root / "images" / "case0.png")
    (note,) = dataset.notes()
    assert note == (
        f"{root}: 4 image file(s) have a second name here, a symbolic or hard link (first: "
        "images/alias0.png, the same file as images/case0.png); each file is used once, under "
        "the name kept, so that none is both trained and tested on"
    )


def test_an_image_hard_linked_under_another_name_is_listed_once(tmp_path):
    """A hard link (``ln``, ``cp -al``) is a second name of the file too: it was tested on under
    one name and trained on under the other (a reviewer's DRIVE copy with a linked test image)."""
    root = tmp_path / "data"
    for i in range(3):
        save(root / "images" / f"case{i}.png", _image(i))
        save(root / "masks" / f"case{i}.png", _mask())
    try:
        (root / "images" / "zcopy.png").hardlink_to(root / "images" / "case1.png")
    except OSError:
        pytest.skip("hard links are not available here")
    save(root / "masks" / "zcopy.png", _mask())
    dataset = FolderDataset(root)
    assert [item.name for item in dataset.items] == ["case0", "case1", "case2"]
    assert dataset.repeated == [(root / "images" / "zcopy.png", root / "images" / "case1.png")]


def test_of_two_names_of_one_file_the_labelled_one_is_kept(tmp_path):
    """The link alone has a mask: the file keeps that name, so its label is not lost."""
    root = tmp_path / "data"
    save(root / "images" / "a.png", _image(0))
    save(root / "images" / "b.png", _image(1))
    save(root / "masks" / "b.png", _mask())
    _link(root / "images" / "c.png", "a.png")
    save(root / "masks" / "c.png", _mask())
    dataset = FolderDataset(root)
    assert [(item.name, bool(item.masks)) for item in dataset.items] == [
        ("b", True), ("c", True)
    ]  # fmt: skip
    assert dataset.repeated == [(root / "images" / "a.png", root / "images" / "c.png")]


def test_a_folder_without_links_says_nothing(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        save(root / "images" / f"case{i}.png", _image(i))
        save(root / "masks" / f"case{i}.png", _mask())
    dataset = load_data_spec(str(root))
    assert len(dataset) == 3 and dataset.repeated == [] and dataset.notes() == []


def _fundus(path, i: int = 0):
    image = np.zeros((48, 48, 3), np.uint8)
    image[8:40, 8:40] = (200, 90 + i, 40)
    return save(path, image)


def _grey(path):
    image = np.zeros((48, 48), np.uint8)
    image[8:40, 8:40] = 120
    return save(path, image)


def test_the_modality_is_fundus_at_the_first_colour_image_and_x_ray_where_all_are_grey(tmp_path):
    """A fundus folder whose first file (by name) is a red-free, grey, photograph was taken for
    X-rays: the first image that told decided alone; and by a majority, a folder of colour and
    red-free photographs whose first five were red-free (a reviewer's DRIVE mix)."""
    paths = [_grey(tmp_path / f"a_redfree{i}.png") for i in range(5)]
    paths += [_fundus(tmp_path / f"fundus_{i:02d}.png", i) for i in range(4)]
    assert guess_modality(paths) == "fundus"  # without a log, as the pool calls it
    said: list[str] = []
    assert guess_modality(paths, log=said.append) == "fundus"
    assert said == [
        "fundus_00.png is a colour image, and 5 grey one(s) came before it (a_redfree0.png, "
        f"a_redfree1.png, a_redfree2.png and 2 more; first: {paths[0]}): all taken for fundus "
        "images, red-free photographs being grey and X-rays never in colour; give --modality "
        "where that is wrong"
    ]
    # All grey among the first nine that tell: X-rays, unsaid; blank images tell nothing.
    greys = [_grey(tmp_path / f"x{i}.png") for i in range(9)]
    assert guess_modality([*greys, paths[5]]) == "xray"
    said.clear()
    assert guess_modality(greys[:3], log=said.append) == "xray" and said == []
    assert guess_modality(paths[5:8], log=said.append) == "fundus" and said == []


def test_the_guess_decodes_no_more_than_it_counts(tmp_path, monkeypatch):
    paths = [_fundus(tmp_path / f"f{i:02d}.png", i) for i in range(20)]
    read = []
    real = datasets._read_image
    monkeypatch.setattr(datasets, "_read_image", lambda p: read.append(p) or real(p))
    assert guess_modality(paths) == "fundus"
    assert read == paths[:1]  # a colour image settles it
    greys = [_grey(tmp_path / f"g{i:02d}.png") for i in range(20)]
    read.clear()
    assert guess_modality(greys) == "xray"
    assert read == greys[: datasets.MODALITY_VOTES]


def test_a_folder_of_mixed_images_is_guessed_fundus_and_says_so(tmp_path):
    root = tmp_path / "mixed"
    _grey(root / "a_redfree.png")
    for i in range(5):
        _fundus(root / f"fundus_{i:02d}.png", i)
    dataset = FolderDataset(root)
    assert dataset.modality == "fundus"
    (note,) = dataset.notes()
    assert note.startswith("fundus_00.png is a colour image, and 1 grey one(s) came before it")
    assert "a_redfree.png" in note
    given = FolderDataset(root, modality="xray")  # given: no guess, nothing to say
    assert given.modality == "xray" and given.notes() == []


def test_a_pool_of_mixed_images_is_guessed_fundus_and_says_so(tmp_path):
    # Guards the pool's guess (pretrain --data without --modality): a fundus folder whose first
    # file was red-free was pre-trained as X-rays, without a word.
    from localdisc.data.pool import guess_pool_modality

    root = tmp_path / "mixed"
    _grey(root / "a_redfree.png")
    for i in range(3):
        _fundus(root / f"fundus_{i:02d}.png", i)
    said: list[str] = []
    assert guess_pool_modality([str(root)], said.append) == "fundus"
    (note,) = said
    assert note.startswith(f"note: {root}: fundus_00.png is a colour image, and 1 grey one(s)")
    assert "a_redfree.png" in note
    assert guess_pool_modality([str(root)]) == "fundus"  # no log: the same guess, unsaid


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize(
    ("copy", "named"),
    [
        ("case1.tif", "case1.png and case1.tif are two files of one image (case1); keep one there"),
        ("CASE1.tif", "CASE1.tif and case1.png have one name but for letter case, and masks"),
        ("Sub/case1.png", "Sub/case1.png and sub/case1.png have one name but for letter case"),
    ],
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
    if copy.startswith("Sub/"):  # two patients' folders, A/ and a/: not a copy, said so
        save(root / "images" / "sub" / "case1.png", _image(4))
        if labelled:
            save(root / "masks" / "sub" / "case1.png", _mask())
    save(root / "images" / copy, _image(1))
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'images'}: {named}")):
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
