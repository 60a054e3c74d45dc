"""Check a data set download by reading every file, and draw a preview grid.

:func:`inspect_dataset` decodes every image and mask of every split (so a truncated or missing
file shows up now rather than mid-training) and reports counts, sizes and mask coverage.
:func:`write_preview` draws images with their masks and FOV outline to a PNG.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from localdisc.data.datasets import (
    Sample,
    SegmentationDataset,
    dataset_class,
    load_dataset,
)
from localdisc.data.io import DIM_BELOW, dim_note, header_metas, header_notes
from localdisc.data.preprocess import resize_image, resize_mask
from localdisc.engine.checkpoint import atomic_write_bytes
from localdisc.errors import DatasetError, LocaldiscError, ReaderSetupError


def report_splits(cls: type[SegmentationDataset]) -> tuple[str, ...]:
    """The splits an inspection reports: train and test where the set is split, else all."""
    return tuple(s for s in cls.splits if s != "all") or ("all",)


#: An image whose central 98 % of intensities (1st to 99th percentile, inside the FOV) span less
#: than this much of [0, 1] is reported as low-contrast: 7 of JSRT's 8-bit conversions here hold
#: 17-41 grey levels near white (spans of 0.06); the darkest DRIVE photograph spans 0.16.
LOW_CONTRAST_SPAN = 0.1


def intensity_span(image: np.ndarray, fov: np.ndarray | None = None) -> float:
    """The 1st-to-99th percentile span of an image's intensities (the mean of its channels),
    inside ``fov`` if any."""
    luma = image.mean(axis=-1) if image.ndim == 3 else image
    values = luma[fov] if fov is not None and fov.any() else luma
    lo, hi = np.percentile(values, [1, 99])
    return float(hi - lo)


class _SplitStats:
    """Running counts for one split."""

    def __init__(self) -> None:
        self.images = 0
        self.masks: Counter[str] = Counter()
        self.fov = 0
        self.sizes: Counter[str] = Counter()
        self.coverage: dict[str, list[float]] = {}
        self.fov_fraction: list[float] = []
        self.partial_fov = False
        self.low_contrast: list[str] = []
        self.peaks: list[tuple[str, float]] = []  # (name, brightest value) for dim_note

    def add(self, sample: Sample) -> None:
        h, w = sample.image.shape[:2]
        self.images += 1
        self.sizes[f"{h}x{w}"] += 1
        fov = sample.fov
        if fov.any():
            self.fov += 1
            self.fov_fraction.append(float(fov.mean()))
        self.partial_fov = self.partial_fov or not fov.all()
        inside = max(int(fov.sum()), 1)
        for target, mask in sample.masks.items():
            self.masks[target] += 1
            # Coverage inside the FOV: for fundus sets the black border would dilute it.
            self.coverage.setdefault(target, []).append(int((mask & fov).sum()) / inside)
        peak = float(sample.image.max())
        self.peaks.append((sample.name, peak))
        # A dim image (12-bit data in a 16-bit file: 0 to 1/16) spans little however much
        # contrast it has: dim_note names it and the cause, not "low contrast".
        if peak >= DIM_BELOW and intensity_span(sample.image, fov) < LOW_CONTRAST_SPAN:
            self.low_contrast.append(sample.name)

    def report(self, dataset: SegmentationDataset) -> dict[str, Any]:
        return {
            "images": self.images,
            "masks": {t: self.masks.get(t, 0) for t in dataset.targets},
            "fov": self.fov,
            "fov_source": dataset.fov_source,
            "fov_fraction": round(float(np.mean(self.fov_fraction)), 4)
            if self.fov_fraction
            else None,
            "sizes": dict(sorted(self.sizes.items())),
            "coverage": {t: round(float(np.mean(v)), 4) for t, v in self.coverage.items()},
            # Said, because beside "FOV ... % of image" a share of the FOV reads as one of the
            # image; where every FOV is the whole image (JSRT/SCR) the two are the same.
            "coverage_of": "FOV" if self.partial_fov else "image",
            "targets": list(dataset.targets),
            "default_target": dataset.default_target,
            # An unlabelled split (DRIVE's public test half) is reported, not an error.
            "labelled": bool(dataset.targets),
            "missing_labels": dict(dataset.missing_labels),
            # images of the official split not there (DRIVE: a partial download)
            "missing_images": [str(p) for p in dataset.missing_images],
            "low_contrast": self.low_contrast,
        }


def inspect_dataset(
    name: str,
    root: str | Path | None,
    *,
    skip_bad: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Read every file of data set ``name`` at ``root`` and report what is there.

    Returns ``{"name", "root", "modality", "splits": {split: {"images", "masks": {target: n},
    "fov", "fov_source", "fov_fraction", "sizes": {"HxW": n}, "coverage": {target: mean
    fraction of the FOV}, "coverage_of": "FOV", or "image" where every image's FOV is the whole
    image, "targets", "default_target", "labelled": whether the split has any
    target, "missing_labels": {target: why its label folder is absent}, "low_contrast": [names
    of images whose intensities span less than LOW_CONTRAST_SPAN, not dim]}}, "skipped": [{"path",
    "reason"}], "notes": [lines]}``; ``notes`` says what ``finetune`` will of the listing (image
    files under two names, used once; the grey images before a colour one in the modality
    guess; a folder's label map of several labels, trained as one; images using under 1/8 of
    the intensity range, 12-bit data in a 16-bit file, which are not also called low-contrast),
    and where images carry an EXIF orientation, which is not applied (a mask drawn in
    a viewer that applies it does not fit its image), or hold several frames, of which the
    first is read (:func:`~localdisc.data.io.header_notes`, as ``predict`` says them; from the
    headers of the images read). Split sets report ``train`` and ``test``, unsplit ones
    ``all``; a split without labels (DRIVE's ``test`` as publicly downloaded) reports
    ``"labelled": false`` and empty ``masks``. A bad file raises
    (:class:`~localdisc.errors.DatasetError` / :class:`~localdisc.errors.ImageReadError`), or
    with ``skip_bad`` is listed under ``skipped``. ``progress`` draws a bar on stderr.
    """
    cls = dataset_class(name)
    datasets = [
        load_dataset(cls.name, root, split, skip_bad=skip_bad, **options)
        for split in report_splits(cls)
    ]
    stats = [_SplitStats() for _ in datasets]
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    try:
        if bar is not None:
            bar.start()
        for dataset, stat in zip(datasets, stats, strict=True):
            advance = None
            if bar is not None:
                task = bar.add_task(f"{cls.name} {dataset.split}", total=len(dataset))

                def advance(task: Any = task) -> None:
                    bar.advance(task)

            dataset.verify(on_sample=stat.add, on_advance=advance)
    finally:
        if bar is not None:
            bar.stop()
    skipped = [(p, r) for d in datasets for p, r in d.skipped]
    # Headers only: a fraction of the decoding above. Generated items have no file.
    metas = header_metas(item.image for d in datasets for item in d.items if item.seed is None)
    labelled = any(d.targets for d in datasets)
    modality = datasets[0].modality  # a folder's guess, with its note where images disagree
    # What finetune will say of the listing: files under two names, the guess's grey images,
    # a label map's labels trained as one,
    listing = [d.repeated_note() for d in datasets] + [
        getattr(datasets[0], note, None) for note in ("modality_note", "label_map_note")
    ]
    # and of dim images: pretrain, finetune and predict say it too.
    peaks = [peak for stat in stats for peak in stat.peaks]
    listing.append(dim_note(peaks, "image(s)", "the network sees them near black"))
    notes = [*dict.fromkeys(note for note in listing if note is not None)]
    return {
        "name": cls.name,
        "root": None if datasets[0].root is None else str(datasets[0].root),
        "modality": modality,
        "splits": {d.split: s.report(d) for d, s in zip(datasets, stats, strict=True)},
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
        "notes": notes + header_notes(metas, "dataset" if labelled else "pool"),
    }


def coverage_header(report: dict[str, Any]) -> str:
    """The heading of an :func:`inspect_dataset` report's coverage column: the share is of the
    FOV where some image's FOV is smaller than the image (DRIVE), else of the whole image."""
    of_fov = any(s.get("coverage_of") == "FOV" for s in report["splits"].values())
    return f"coverage (of {'FOV' if of_fov else 'image'})"


#: Overlay colours for the targets of a preview, in order: (name for the title, RGB).
_COLOURS = (
    ("green", (0.1, 0.9, 0.2)),
    ("red", (1.0, 0.25, 0.2)),
    ("blue", (0.2, 0.5, 1.0)),
    ("magenta", (1.0, 0.2, 1.0)),
)


def write_preview(
    source: SegmentationDataset | str,
    path: str | Path,
    n: int = 8,
    *,
    root: str | Path | None = None,
    split: str | None = None,
    targets: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    max_side: int = 384,
) -> Path:
    """Save a PNG grid of ``n`` samples (evenly spaced) with mask overlays and FOV outline.

    ``source`` is a data set or a data set name (with ``root`` and ``split``). Masks are drawn
    as semi-transparent colour (``targets``: the loader's preview targets by default), the FOV
    as a yellow contour; images are shrunk to ``max_side`` so that large sets stay quick. With
    ``skip_bad`` a sample that cannot be read is left out instead of raising.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from localdisc.eval.figures import plain

    dataset = (
        source
        if isinstance(source, SegmentationDataset)
        else load_dataset(source, root, split, skip_bad=skip_bad)
    )
    if targets is None:
        wanted = type(dataset).preview_targets or (
            (dataset.default_target,) if dataset.default_target else ()
        )
        targets = tuple(t for t in wanted if t in dataset.targets)
    targets = targets[: len(_COLOURS)]
    count = max(1, min(n, len(dataset)))
    samples: list[Sample] = []
    for index in np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)):
        try:
            samples.append(dataset[int(index)])
        except LocaldiscError as exc:
            if not skip_bad or isinstance(exc, ReaderSetupError):  # the installation's
                raise
    if not samples:
        raise DatasetError(f"{dataset.root}: no sample of {dataset.name} could be read")
    cols = min(4, len(samples))
    rows = -(-len(samples) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no pyplot, no global backend change
    for k, sample in enumerate(samples):
        image, masks, fov = _shrink(sample, max_side)
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3].copy()
        rgb = np.clip(rgb, 0, 1)
        for (_, colour), target in zip(_COLOURS, targets, strict=False):
            if target in masks:
                m = masks[target]
                rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(colour)
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(rgb, interpolation="nearest")
        if not fov.all():
            ax.contour(fov.astype(float), levels=[0.5], colors=["yellow"], linewidths=0.8)
        ax.set_title(plain(sample.name), fontsize=8)
        ax.set_axis_off()
    legend = ", ".join(f"{t} {c[0]}" for c, t in zip(_COLOURS, targets, strict=False))
    title = f"{dataset.name} {dataset.split}: {legend or 'no masks'}; FOV outline yellow"
    fig.suptitle(plain(title), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())  # a failed write leaves an earlier preview whole
    return Path(path)


def _shrink(sample: Sample, max_side: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Image, masks and FOV of ``sample`` with the longer side at most ``max_side``."""
    h, w = sample.image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return sample.image, sample.masks, sample.fov
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = resize_image(sample.image, size)
    masks = {t: resize_mask(m, size) for t, m in sample.masks.items()}
    return image, masks, resize_mask(sample.fov, size)
