"""``datasets inspect`` reports, as predict does, images that hold several frames (the first
read) or carry an EXIF orientation that is not applied, against which masks are read."""

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from localdisc.data.inspect import inspect_dataset


def _folder_set(root: Path, images: dict[str, np.ndarray], masks: bool) -> Path:
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for name, array in images.items():
        path = root / "images" / name
        if name.endswith(".tif"):
            tifffile.imwrite(path, array, extratags=[(274, "H", 1, 3, True)] if "turned" in name
                             else ())  # fmt: skip
        else:
            Image.fromarray(array).save(path)
        if masks:
            mask = np.zeros(array.shape[-2:], np.uint8)
            mask[2:6, 2:6] = 255
            Image.fromarray(mask).save(root / "masks" / (Path(name).stem + ".png"))
    return root


def test_inspect_notes_stacks_and_orientations(tmp_path: Path) -> None:
    plane = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    root = _folder_set(
        tmp_path / "set",
        {"a.tif": np.stack([plane, plane.T]), "b_turned.tif": plane, "c.png": plane},
        masks=True,
    )
    report = inspect_dataset("folder", root, progress=False)
    images = root / "images"
    assert report["notes"] == [
        f"1 image(s) carry an EXIF orientation that localdisc does not apply (first: "
        f"{images / 'b_turned.tif'}, 3: viewers show it turned 180 degrees): masks are read "
        "against the pixels as stored, 16 wide and 16 high there: a mask made by a program from "
        "them fits, and one drawn on the image as a viewer that applies the tag shows it lies "
        "turned against its image; save such images as viewers show them (without the tag), or "
        "turn their masks back",
        f"1 file(s) hold several frames, and localdisc reads the first of each (first: "
        f"{images / 'a.tif'}, 2 frames): a stack, series, cine or animation is not a single "
        "image; save the frame you mean as a file of its own",
    ]


def test_inspect_of_plain_images_has_no_notes(tmp_path: Path) -> None:
    plane = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    root = _folder_set(tmp_path / "set", {"a.tif": plane, "b.png": plane}, masks=False)
    assert inspect_dataset("folder", root, progress=False)["notes"] == []
    assert inspect_dataset("synthetic_xray", None, progress=False)["notes"] == []


def test_an_unlabelled_set_s_orientation_note_speaks_of_its_images(tmp_path: Path) -> None:
    plane = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    root = _folder_set(tmp_path / "set", {"b_turned.tif": plane}, masks=False)
    (note,) = inspect_dataset("folder", root, progress=False)["notes"]
    assert "masks" not in note and note.endswith("not turned as a viewer that applies the tag "
                                                 "shows them")  # fmt: skip


def test_inspect_says_what_finetune_will_of_the_listing(tmp_path: Path) -> None:
    # A reviewer's folders: 41 files counted 40 unsaid (a link), and a mixed folder's guess
    # unsaid. inspect is how README says to check a folder before finetune, which says both.
    plane = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    colour = np.stack([plane, plane // 2, plane // 4], axis=-1)
    root = _folder_set(tmp_path / "set", {"a_grey.png": plane, "b.png": colour}, masks=False)
    try:
        (root / "images" / "c_link.png").symlink_to("b.png")
    except OSError:
        return  # no symbolic links here: the guess's note alone is checked below
    report = inspect_dataset("folder", root, progress=False)
    assert report["modality"] == "fundus"
    repeated, guess = report["notes"]
    assert repeated.startswith(f"{root}: 1 image file(s) have a second name here")
    assert guess.startswith("b.png is a colour image, and 1 grey one(s) came before it")
