"""Figures of what an LD model learnt: cluster maps and pixel-similarity maps."""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (image index, row, column, label)
Query = tuple[int, int, int, str]


class _Figures:
    """What the figures take of pyplot, without pyplot: figures of their own with an Agg canvas.
    ``matplotlib.use("Agg")`` switched a notebook's backend, whose plots then showed nothing."""

    @staticmethod
    def figure(**kwargs: object) -> Figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(**kwargs)  # type: ignore[arg-type]
        FigureCanvasAgg(fig)
        return fig

    @classmethod
    def subplots(
        cls, nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
        **kwargs: object,
    ) -> tuple[Figure, object]:  # fmt: skip
        fig = cls.figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)  # type: ignore[arg-type]


def _plt() -> type[_Figures]:
    return _Figures


def _layout(fig) -> None:
    """Space the panels so that no title overlaps the panel above it.

    One pass of ``tight_layout`` sets the gaps between rows as fractions of the panels' height
    before a suptitle or colour bar shrinks the panels, leaving too little room for a row's
    titles; the second pass, on the shrunk panels, gets it right.
    """
    fig.tight_layout()
    fig.tight_layout()


def _save(fig, path: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` in the format of its suffix, atomically: a
    failed write (a full disk) leaves the figure of an earlier run whole."""
    from localdisc.engine.checkpoint import atomic_write_bytes

    _layout(fig)
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=80, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        fig.clear()  # no pyplot holds it: the memory goes with the last reference
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plain(text: object) -> str:
    """``text`` for a title, label or legend, drawn as it is: matplotlib would read the part
    between two ``$`` as mathtext, and fail on a file name such as ``scan_$a_b_c$``."""
    return str(text).replace("$", r"\$")


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` (H x W x 1 or 3, in [0, 1]) as the RGB every panel draws it, alone or under
    masks and clusters alike: a grey image stretched from its lowest to its highest value (a
    12-bit radiograph stored in 16 bits fills [0, 0.06] and would be drawn black), a colour
    image as it is (a constant grey image: black)."""
    if image.shape[-1] != 1:
        return np.clip(image[..., :3], 0, 1)
    grey = image[..., 0].astype(np.float32)
    lo, hi = float(grey.min()), float(grey.max())
    grey = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
    return np.repeat(grey[..., None], 3, -1)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(display_rgb(image))
    ax.set_axis_off()


def _colour_bar(fig, mappable, cax, label: str, **options) -> None:
    """A colour bar of ``mappable`` in the axes ``cax``, labelled in the figures' small type."""
    bar = fig.colorbar(mappable, cax=cax, **options)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _panel_names(names: Sequence[str] | None, n: int) -> list[str]:
    """Titles of ``n`` images: ``names`` as given (one per image), else ``image 0`` ..."""
    if names is None:
        return [f"image {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} images")
    return [plain(name) for name in names]


def _at_step(step: int | None) -> str:
    return "" if step is None else f", step {step}"


def cluster_colours(k: int) -> np.ndarray:
    """``k`` distinct RGB colours in [0, 1], one per cluster index.

    matplotlib's tab10, then colours picked as Glasbey et al. do ("Colour displays for
    categorical images", Color Research & Application 32(4), 2007): each the one of a grid of
    candidates farthest in CIELAB from all colours before it. So neighbouring indices, and the
    first and last, never look alike (a cyclic map such as hsv gave cluster 0 and K-1 nearly
    the same red), and cluster ``i`` has the same colour whatever ``k`` is.
    """
    return _glasbey_colours(k).copy()


@lru_cache(maxsize=8)
def _glasbey_colours(k: int) -> np.ndarray:
    import matplotlib
    from skimage.color import rgb2lab

    chosen = [np.array(c, dtype=np.float64) for c in matplotlib.colormaps["tab10"].colors]
    if k <= len(chosen):
        return np.array(chosen[:k]).reshape(k, 3)
    axis = np.linspace(0, 1, 16)
    candidates = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lab = rgb2lab(candidates[None])[0]
    # Neither near black nor near white: the colours must stand out on dark and bright tissue.
    keep = (lab[:, 0] > 35) & (lab[:, 0] < 90)
    candidates, lab = candidates[keep], lab[keep]
    # Distance of each candidate to its nearest chosen colour.
    chosen_lab = rgb2lab(np.array(chosen)[None])[0]
    nearest = np.linalg.norm(lab[:, None] - chosen_lab[None], axis=-1).min(1)
    while len(chosen) < k:
        best = int(np.argmax(nearest))
        chosen.append(candidates[best])
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[best], axis=1))
    return np.array(chosen)


def cluster_map_rgb(assignments: torch.Tensor) -> np.ndarray:
    """[K, H, W] soft assignments -> H x W x 3 colour image of the arg-max cluster."""
    labels = assignments.argmax(0).cpu().numpy()
    return cluster_colours(assignments.shape[0])[labels]


def cluster_plot(
    model,
    images: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    step: int | None = None,
) -> Figure:
    """The figure of :func:`cluster_figure`, unsaved (a matplotlib ``Figure``)."""
    plt = _plt()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    names = _panel_names(names, len(images))
    k = model.config.clusters
    fig = plt.figure(figsize=(9, 3 * len(images) + 0.9))
    # A last, thin row for the colour key (a cell of the grid, so that tight_layout places it).
    grid = fig.add_gridspec(len(images) + 1, 3, height_ratios=[1] * len(images) + [0.07])
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(len(images))])
    fig.add_subplot(grid[-1, 0]).set_axis_off()
    for row, image, name in zip(axes, images, names, strict=True):
        colours = cluster_map_rgb(model.cluster(image))
        rgb = display_rgb(image)
        _show(row[0], image)
        row[0].set_title(name, fontsize=9)
        row[1].imshow(colours)
        row[1].set_axis_off()
        row[2].imshow(0.5 * rgb + 0.5 * colours)
        row[2].set_axis_off()
    axes[0, 1].set_title("clusters", fontsize=9)
    axes[0, 2].set_title("clusters over the image", fontsize=9)
    fig.suptitle(f"Most likely cluster of each pixel (K={k}){_at_step(step)}", fontsize=10)
    # The colour of each cluster index; an index means the same cluster in every image.
    legend = ScalarMappable(
        BoundaryNorm(np.arange(k + 1) - 0.5, k), ListedColormap(cluster_colours(k))
    )
    _colour_bar(
        fig, legend, fig.add_subplot(grid[-1, 1:]),
        "cluster (the same colour is the same cluster in every image)",
        orientation="horizontal", ticks=range(0, k, max(1, -(-k // 16))),
    )  # fmt: skip
    return fig


def cluster_figure(
    model,
    images: Sequence[np.ndarray],
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    step: int | None = None,
) -> Path:
    """For each image: the image, its arg-max cluster map, and the two blended, with a colour
    key of the clusters. ``names`` title the images (default ``image 0`` ...); ``step`` is the
    training step, said in the title."""
    return _save(cluster_plot(model, images, names=names, step=step), path)


def similarity_plot(
    model,
    images: Sequence[np.ndarray],
    queries: Sequence[Query] | None = None,
    *,
    names: Sequence[str] | None = None,
    step: int | None = None,
) -> Figure:
    """The figure of :func:`similarity_figure`, unsaved (a matplotlib ``Figure``)."""
    embeddings = [model.embed(image) for image in images]
    if queries is None:
        h, w = images[0].shape[:2]
        queries = [
            (0, h // 2, w // 2, "centre"),
            (0, h // 3, w // 3, "upper left"),
            (0, 2 * h // 3, 2 * w // 3, "lower right"),
        ]
    maps = [
        [torch.einsum("d,dhw->hw", embeddings[i][:, y, x], v).cpu().numpy() for v in embeddings]
        for i, y, x, _ in queries
    ]
    return similarity_maps_plot(
        images,
        queries,
        maps,
        names=names,
        title=f"Cosine similarity of each pixel to the query pixel (white x){_at_step(step)}",
    )


def similarity_maps_plot(
    images: Sequence[np.ndarray],
    queries: Sequence[tuple[int, float, float, str]],
    maps: Sequence[Sequence[np.ndarray]],
    *,
    names: Sequence[str] | None = None,
    title: str,
) -> Figure:
    """One row per query ``(image index, row, column, label)``: its image with the query marked
    and labelled, then ``maps[row][j]``, its cosine-similarity map on image ``j`` (the image's
    shape), under one colour bar from -1 to 1; ``title`` heads the figure.

    The query's own map marks the query (white x), the others their most similar pixel (cyan
    circle). :func:`similarity_plot` and ``localdisc similarity`` draw their maps with it.
    """
    plt = _plt()
    import matplotlib.patheffects as effects

    names = _panel_names(names, len(images))
    n, rows = len(images), len(queries)
    fig = plt.figure(figsize=(2.6 * (n + 1) + 0.8, 2.6 * rows + 0.6))
    # A last, thin column for the colour bar (a cell of the grid, so that tight_layout places it).
    grid = fig.add_gridspec(rows, n + 2, width_ratios=[1] * (n + 1) + [0.07])
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(n + 1)] for r in range(rows)])
    # A dark outline keeps the white label readable on a bright image.
    outline = [effects.withStroke(linewidth=2, foreground="black")]
    shown = None
    for row, (i, y, x, label), sims in zip(axes, queries, maps, strict=True):
        _show(row[0], images[i])
        row[0].plot([x], [y], "wx", markersize=10, markeredgewidth=2)
        # The label on the side of the point with the more room, inside the image.
        left = x > images[i].shape[1] / 2
        row[0].annotate(plain(label), (x, y), xytext=(-6 if left else 6, 6),
                        textcoords="offset points", ha="right" if left else "left",
                        color="white", fontsize=8, path_effects=outline)  # fmt: skip
        row[0].set_title(f"{names[i]}\nquery: {plain(label)}", fontsize=9)
        for j, (ax, sim) in enumerate(zip(row[1:], sims, strict=True)):
            shown = ax.imshow(sim, cmap="magma", vmin=-1, vmax=1)
            if j == i:
                ax.plot([x], [y], "wx", markersize=8, markeredgewidth=2)
            else:
                by, bx = np.unravel_index(np.argmax(sim), sim.shape)
                ax.plot([bx], [by], "o", mfc="none", mec="cyan", markersize=10, mew=2)
            ax.set_axis_off()
            ax.set_title(names[j], fontsize=9)
    others = "\ncyan circle: the most similar pixel of another image" if n > 1 else ""
    fig.suptitle(title + others, fontsize=10)
    _colour_bar(fig, shown, fig.add_subplot(grid[:, -1]), "cosine similarity\n(1: same embedding)")
    return fig


def similarity_figure(
    model,
    images: Sequence[np.ndarray],
    path: str | Path,
    queries: Sequence[Query] | None = None,
    *,
    names: Sequence[str] | None = None,
    step: int | None = None,
) -> Path:
    """One row per query pixel: its cosine-similarity map on every image, best match marked,
    with a colour bar of the similarity (-1 to 1).

    The query's own image shows the query as a white cross; the other images show their most
    similar pixel as a cyan circle. ``names`` title the images (default ``image 0`` ...);
    ``step`` is the training step, said in the title.
    """
    return _save(similarity_plot(model, images, queries, names=names, step=step), path)


def overlay_figure(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], path: str | Path
) -> Path:
    """Segmentations over their images: true positives green, false positives red, misses blue.

    ``rows`` holds ``(name, image, predicted mask, reference mask or None)``; without a reference
    the prediction is drawn in green.
    """
    plt = _plt()
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 2, figsize=(7, 3.5 * n), squeeze=False)
    for row, (name, image, pred, ref) in zip(axes, rows, strict=False):
        rgb = display_rgb(image)
        _show(row[0], image)
        row[0].set_title(plain(name), fontsize=9)
        colours = np.zeros_like(rgb)
        alpha = pred.astype(np.float32)
        if ref is None:
            colours[pred] = (0, 1, 0)
        else:
            colours[pred & ref] = (0, 1, 0)
            colours[pred & ~ref] = (1, 0, 0)
            colours[~pred & ref] = (0, 0.4, 1)
            alpha = (pred | ref).astype(np.float32)
        blend = rgb * (1 - 0.7 * alpha[..., None]) + colours * 0.7 * alpha[..., None]
        row[1].imshow(np.clip(blend, 0, 1))
        row[1].set_axis_off()
        row[1].set_title(
            "green: hit, red: false positive, blue: missed" if ref is not None else "prediction",
            fontsize=8,
        )
    for row in axes[len(rows) :]:
        for ax in row:
            ax.set_axis_off()
    return _save(fig, path)


def mask_grid(
    rows: Sequence[tuple[str, np.ndarray, dict[str, np.ndarray]]], path: str | Path
) -> Path:
    """One row per image: the image, then each named map (probability or mask, in grey).

    ``rows`` holds ``(name, image, {column title: H x W map})``; a title may carry a score.
    """
    plt = _plt()
    n_cols = 1 + max((len(maps) for _, _, maps in rows), default=0)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.8 * n_cols, 2.9 * len(rows)),
                             squeeze=False)  # fmt: skip
    for row, (name, image, maps) in zip(axes, rows, strict=True):
        _show(row[0], image)
        row[0].set_title(plain(name), fontsize=8)
        for ax, (title, values) in zip(row[1:], maps.items(), strict=False):
            ax.imshow(values, cmap="gray", vmin=0, vmax=1)
            ax.set_title(plain(title), fontsize=8)
        for ax in row[1:]:
            ax.set_axis_off()
    return _save(fig, path)
