"""Segment new images with a fine-tuned model (``localdisc predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localdisc.data.datasets import folder_image_files, image_stem
from localdisc.data.io import is_image_file, read_image, write_png
from localdisc.engine.distributed import resolve_device
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter


def collect_images(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """``(output name, file)`` for every image file given or found under a given folder.

    Names are file stems; files found in sub-folders are prefixed by their relative folder
    (``a/b/x.png`` -> ``a_b_x``) so that outputs never overwrite each other.
    """
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for file in folder_image_files(path):
                parts = [*file.relative_to(path).parent.parts, image_stem(file)]
                found.append(("_".join(parts), file))
        elif path.is_file():
            if not is_image_file(path):
                raise LocaldiscError(f"{path}: not an image file this reader takes")
            found.append((image_stem(path), path))
        else:
            raise LocaldiscError(f"{path}: no such file or folder")
    names = [name for name, _ in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LocaldiscError(f"several inputs would be written as {duplicates[0]}; rename one")
    if not found:
        raise LocaldiscError("no image files in " + ", ".join(str(p) for p in paths))
    return found


def prob_png(prob: np.ndarray) -> np.ndarray:
    """``uint8`` probability map (probability x 255, rounded)."""
    return np.round(prob * 255).astype(np.uint8)


def mask_png(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``uint8`` 0/255 mask of ``prob >= threshold``."""
    return ((prob >= threshold) * 255).astype(np.uint8)


def predict_images(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    device: str = "auto",
) -> list[Path]:
    """Write ``NAME_prob.png`` (probability x 255) and ``NAME_mask.png`` (0/255) per image."""
    model = Segmenter.from_pretrained(model_dir, device=str(resolve_device(device)))
    out_dir = Path(out_dir)
    written = []
    for name, path in collect_images(images):
        prob = model.predict(read_image(path)[0])
        write_png(out_dir / f"{name}_prob.png", prob_png(prob))
        written.append(write_png(out_dir / f"{name}_mask.png", mask_png(prob, threshold)))
    return written
