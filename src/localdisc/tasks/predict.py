"""Segment new images with a fine-tuned model (``localdisc predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localdisc.data.datasets import folder_image_files, image_stem, name_key
from localdisc.data.io import is_image_file, read_image, read_mask, write_png
from localdisc.engine.distributed import resolve_device
from localdisc.engine.monitor import ProgressBar
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter, read_config


def collect_images(
    paths: Sequence[str | Path],
    *,
    out_dir: str | Path | None = None,
    suffixes: Sequence[str] = ("_prob", "_mask"),
) -> list[tuple[str, Path]]:
    """``(output name, file)`` for every image file given or found under a given folder.

    Names are file stems; files found in sub-folders are prefixed by their relative folder
    (``a/b/x.png`` -> ``a_b_x``) so that outputs never overwrite each other.

    ``out_dir``: where the outputs go. Found in a given folder, it is skipped; when it is the
    given folder itself, what a command wrote there is (:func:`_without_outputs`: files named
    ``NAME`` + one of the command's ``suffixes``, and ``figures/``): else a second run would
    segment the first run's outputs (``x_prob_prob.png``, ...).
    """
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            here: list[tuple[str, Path]] = []
            for file in folder_image_files(path, exclude=_below(out, path)):
                parts = [*file.relative_to(path).parent.parts, image_stem(file)]
                here.append(("_".join(parts), file))
            if out is not None and path.resolve() == out:
                here = _without_outputs(here, path, suffixes)
            found.extend(here)
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


def _below(out: Path | None, folder: Path) -> Path | None:
    """``out`` spelt from ``folder`` as the folder walk spells its sub-folders, if it is one of
    them (strictly below ``folder``); else ``None``. Resolved first: ``--out`` may be given
    relative to the working directory and ``--images`` absolute, or through a link."""
    if out is None:
        return None
    try:
        relative = out.relative_to(folder.resolve())
    except ValueError:
        return None
    return folder / relative if relative.parts else None


def _without_outputs(
    found: list[tuple[str, Path]], folder: Path, suffixes: Sequence[str]
) -> list[tuple[str, Path]]:
    """``found`` (the images of ``folder``, also the output folder) less the outputs written
    there for them: files named ``NAME`` + one of ``suffixes`` (NAME one of them), in ``folder``
    or in a sub-folder a command writes (``group-K/``, ``run-K/``, ``unusual/``), and the
    figures in ``figures/``."""
    names = {name for name, _ in found}

    def output(file: Path) -> bool:
        relative = file.relative_to(folder).parts
        stem = image_stem(file)
        return (len(relative) > 1 and relative[0] == "figures") or any(
            stem.endswith(s) and stem[: -len(s)] in names for s in suffixes
        )

    return [(name, file) for name, file in found if not output(file)]


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
    fov_masks: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
) -> list[Path]:
    """Segment every image (:func:`collect_images`) into ``out_dir``, at its own size.

    Writes two files per image: ``NAME_prob.png``, the probability map (probability x 255),
    and ``NAME_mask.png``, the mask (0/255, ``prob >= threshold``). Returns the masks' paths
    only, in the order of the images; each probability map lies beside its mask
    (``NAME_prob.png`` for ``NAME_mask.png``).

    ``fov_masks``: a folder of FOV masks named as the images (:func:`fov_mask_files`); the
    probability is 0 outside them. A network of ``localdisc shape-guided vessels`` segments as
    that command did (:func:`~localdisc.tasks.vessels.predict_vessels`, which also writes
    ``vessels.csv``). ``progress`` shows a progress bar.
    """
    groups = sorted(Path(model_dir).glob("group-*/config.json"))
    if groups and not (Path(model_dir) / "config.json").is_file():
        raise LocaldiscError(f"{model_dir}: a network per group of images (`shape-guided "
                             f"vessels --teach-all`); give one as the model, e.g. "
                             f"{groups[0].parent}")  # fmt: skip
    if "self_trained_vessels" in read_config(model_dir):
        from localdisc.tasks.vessels import predict_vessels

        return predict_vessels(model_dir, images, out_dir, fov_masks=fov_masks,
                               threshold=threshold, device=device, progress=progress)  # fmt: skip
    model = Segmenter.from_pretrained(model_dir, device=str(resolve_device(device)))
    files = collect_images(images, out_dir=out_dir)
    masks = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
    out_dir = Path(out_dir)
    written = []
    with ProgressBar(len(files), 0, progress, "predict") as bar:
        for i, (name, path) in enumerate(files):
            image = read_image(path)[0]
            prob = model.predict(image)
            if masks is not None:
                prob *= read_fov_mask(masks[i], image.shape[:2], path)
            write_png(out_dir / f"{name}_prob.png", prob_png(prob))
            written.append(write_png(out_dir / f"{name}_mask.png", mask_png(prob, threshold)))
            bar.update(i + 1)
    return written


# What may follow an image's stem in its FOV mask's name: DRIVE's and HRF's ``01_test_mask.gif``.
FOV_MASK_ENDINGS = ("", "_mask", "-mask", "_fov", "-fov")


def fov_mask_files(images: Sequence[Path], folder: str | Path) -> list[Path]:
    """Each image's FOV mask in ``folder``: the image file there whose stem is the image's, or
    the image's followed by one of :data:`FOV_MASK_ENDINGS` (letter case and Unicode form aside:
    :func:`~localdisc.data.datasets.name_key`; the image itself never, so images and masks may
    share a folder).

    Raises:
        LocaldiscError: ``folder`` is missing, or an image has no mask there or several.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LocaldiscError(f"{folder}: no such folder of FOV masks")
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and is_image_file(path):
            by_stem.setdefault(name_key(image_stem(path)), []).append(path)
    found = []
    for image in images:
        stem = image_stem(image)
        matches = [m for end in FOV_MASK_ENDINGS for m in by_stem.get(name_key(stem + end), [])]
        matches = [m for m in matches if m.resolve() != Path(image).resolve()]
        if len(matches) != 1:
            problem = "no FOV mask" if not matches else f"{len(matches)} FOV masks"
            wanted = " or ".join(f"{stem}{end}.*" for end in FOV_MASK_ENDINGS)
            raise LocaldiscError(f"{image}: {problem} in {folder} (looked for {wanted})")
        found.append(matches[0])
    return found


def read_fov_mask(path: Path, shape: tuple[int, ...], image: Path) -> np.ndarray:
    """The FOV mask at ``path``, checked against the size (``shape``) of its ``image``.

    Raises:
        LocaldiscError: the mask is of another size, or empty.
    """
    fov = read_mask(path)
    if fov.shape != tuple(shape):
        size = "x".join(map(str, fov.shape[::-1]))
        raise LocaldiscError(f"{path}: FOV mask is {size}, its image {image} is "
                             f"{shape[1]}x{shape[0]}")  # fmt: skip
    if not fov.any():
        raise LocaldiscError(f"{path}: the FOV mask is empty")
    return fov
