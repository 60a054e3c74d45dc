"""The unlabelled pre-training pool, decoded once and held in memory as uint8.

The authors' pipeline decodes, crops and resizes every image at every step on the CPU, which
starves a GPU. Here each pool image is read once (threads: decoders release the GIL), cropped to
its fundus region of interest, resized to ``pool_size`` and stored as uint8 in one tensor
``[N, C, P, P]`` that can live on the GPU; the per-step augmentation then runs there too.
Memory: ``N * C * P * P`` bytes (1 000 fundus images at 512 take 0.8 GB).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from localdisc.data.io import read_image
from localdisc.data.preprocess import resize_image, roi_crop, to_modality_channels
from localdisc.errors import DatasetError, ImageReadError


def prepare_pool_image(image: np.ndarray, modality: str, pool_size: int) -> np.ndarray:
    """Float H x W x C image in [0, 1] -> uint8 C x P x P array as the pool stores it."""
    image = to_modality_channels(image, modality)
    if modality == "fundus":
        image = roi_crop(image)[0]
    image = resize_image(image, (pool_size, pool_size))
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8).transpose(2, 0, 1)


def load_pool(
    paths: Sequence[Path],
    modality: str,
    pool_size: int,
    *,
    workers: int = 4,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode ``paths`` into a uint8 tensor ``[N, C, P, P]``.

    Returns the tensor and the list of skipped ``(path, reason)`` (empty unless ``skip_bad``).
    An unreadable file raises :class:`ImageReadError` naming it, unless ``skip_bad``.
    """

    def one(path: Path) -> np.ndarray | str:
        try:
            return prepare_pool_image(read_image(path)[0], modality, pool_size)
        except ImageReadError as exc:
            if not skip_bad:
                raise
            return exc.reason

    arrays: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, result in zip(paths, pool.map(one, paths), strict=True):
            if isinstance(result, str):
                skipped.append((path, result))
            else:
                arrays.append(result)
            if progress is not None:
                progress(1)
    if not arrays:
        raise ImageReadError(paths[0] if paths else Path("."), "no readable image in the pool")
    return torch.from_numpy(np.stack(arrays)), skipped


def synthetic_pool(
    n: int, modality: str, pool_size: int, seed: int = 0, *, hard: bool = False
) -> torch.Tensor:
    """A pool of ``n`` generated images (the demo's data when no data set is present);
    ``hard``: the radiographs of ``synthetic_xray_hard``."""
    from functools import partial

    from localdisc.data import synthetic

    if n < 1:
        raise DatasetError(f"synthetic_{modality}: a generated pool needs n >= 1 images, not {n}")
    if modality == "fundus":
        make = synthetic.synthetic_fundus
    else:
        make = partial(synthetic.synthetic_xray, hard=hard)
    arrays = [
        prepare_pool_image(make(pool_size, seed + i).image, modality, pool_size) for i in range(n)
    ]
    return torch.from_numpy(np.stack(arrays))


def resolve_pool(
    specs: Sequence[str],
    modality: str,
    pool_size: int,
    *,
    seed: int = 0,
    workers: int = 4,
    max_images: int | None = None,
    skip_bad: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode every image named by ``specs`` into one uint8 pool tensor.

    A spec is a folder of images, ``NAME:ROOT`` for a known data set (labels unused),
    ``synthetic_fundus[:N]`` / ``synthetic_xray[:N]`` / ``synthetic_xray_hard[:N]`` for generated
    images, or ``skimage:retina`` for the fundus photograph that scikit-image ships.
    """
    from localdisc.data.datasets import pool_image_paths

    size = pool_size
    parts: list[torch.Tensor] = []
    skipped: list[tuple[Path, str]] = []
    paths: list[Path] = []
    if not specs:
        raise DatasetError("no pre-training data: give --data FOLDER or NAME:ROOT")
    retina: torch.Tensor | None = None
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name in ("synthetic_fundus", "synthetic_xray", "synthetic_xray_hard"):
            kind = name.split("_")[1]
            if kind != modality or not (arg or "32").isdigit():
                raise DatasetError(
                    f"{spec}: expected synthetic_{modality}[:N] for a {modality} run"
                )
            count = int(arg or 32)
            if count < 1:  # np.stack of no images would fail without naming the spec
                raise DatasetError(f"{spec}: a generated pool needs N >= 1 images, not {count}")
            hard = name.endswith("_hard")
            parts.append(synthetic_pool(count, modality, size, seed=seed, hard=hard))
        elif spec == "skimage:retina":
            if retina is None:  # decoded once however often the spec repeats
                import skimage.data

                image = skimage.data.retina().astype(np.float32) / 255.0
                retina = torch.from_numpy(prepare_pool_image(image, modality, size))[None]
            parts.append(retina)
        else:
            paths.extend(pool_image_paths(spec))
    if max_images is not None:
        paths = paths[:max_images]
    if paths:
        log(f"decoding {len(paths)} pool images at {size} x {size} ...")
        images, skipped = load_pool(paths, modality, size, workers=workers, skip_bad=skip_bad)
        parts.append(images)
    if not parts:
        raise DatasetError(f"no images found in {', '.join(specs)}")
    return torch.cat(parts), skipped
