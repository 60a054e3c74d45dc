"""The pool says, as predict and localize do, where its files hold several frames (of which it
holds the first) or carry an EXIF orientation it does not apply (header_notes)."""

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from localdisc.data.pool import resolve_pool


def test_the_pool_says_which_files_hold_several_frames_or_an_orientation(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    ramp = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    tifffile.imwrite(
        folder / "a_stack.tif", np.stack([ramp, ramp[::-1], ramp.T]), photometric="minisblack"
    )
    frames = [Image.fromarray(p) for p in (ramp, ramp[::-1])]
    frames[0].save(folder / "b_anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(ramp).save(folder / "c_turned.jpg", exif=exif)
    Image.fromarray(ramp).save(folder / "d_plain.png")
    lines: list[str] = []
    pool, _ = resolve_pool([str(folder)], "xray", 8, workers=1, log=lines.append)
    assert pool.shape[0] == 4
    turned = [line for line in lines if "EXIF orientation" in line]
    assert turned == [
        f"1 image(s) carry an EXIF orientation that localdisc does not apply (first: "
        f"{folder / 'c_turned.jpg'}, 6: viewers show it turned 90 degrees clockwise): "
        "pre-training takes the pixels as stored, 16 wide and 16 high there, not turned as a "
        "viewer that applies the tag shows them"
    ]
    stacked = [line for line in lines if "several frames" in line]
    assert stacked == [
        f"2 file(s) hold several frames, and localdisc reads the first of each (first: "
        f"{folder / 'a_stack.tif'}, 3 frames): a stack, series, cine or animation is not a "
        "single image; save the frame you mean as a file of its own"
    ]


def test_a_pool_of_single_upright_images_says_nothing_of_frames(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("a.png", "b.tif", "c.gif"):
        Image.fromarray(np.full((12, 12), 100, np.uint8)).save(folder / name)
    lines: list[str] = []
    resolve_pool([str(folder), "synthetic_xray:2"], "xray", 8, log=lines.append)
    assert not any("frames" in line or "orientation" in line for line in lines)


def test_a_skipped_file_and_a_planned_pool_say_nothing_of_it(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    tifffile.imwrite(folder / "stack.tif", np.zeros((2, 8, 8), np.uint8))
    (folder / "bad.png").write_bytes(b"not a png")
    lines: list[str] = []
    resolve_pool([str(folder)], "xray", 8, skip_bad=True, log=lines.append)
    assert sum("several frames" in line for line in lines) == 1
    lines.clear()
    resolve_pool([str(folder)], "xray", 8, log=lines.append, unreadable=[])
    assert lines == []  # planning decodes nothing and says nothing
