"""The viewer's state (images, cached model outputs) and its small JSON/PNG HTTP server.

Security model: the server is meant for one user, who may share the machine (a workstation, a
cluster node) with other accounts. It binds to 127.0.0.1 by default and answers only requests
that carry the random token of the URL it prints (``/?token=...``, kept by the page as an
HttpOnly, SameSite=Strict cookie): the other accounts of the machine reach the loopback port
too, and a web page elsewhere could embed the images. It answers only GET/HEAD, serves only the
images it was started with (addressed by integer id, never by a path from the client) and three
static files from a fixed list, marks every answer ``Cross-Origin-Resource-Policy:
same-origin``, and refuses long URLs (414), request bodies (413) and foreign ``Host`` headers
when bound to the loopback interface (a DNS-rebinding web page could otherwise read the
images).

All coordinates are pixels of the *display* image: the input resized so that its longer side is
at most ``size`` (default: the model's pre-training pool size, the scale it knows). The model
sees every image at ``size`` (smaller ones enlarged, a fundus model's cut to their field of
view first), as ``localdisc similarity`` and ``localize`` do, and its maps are sampled at the
display pixels. The similarity answer also gives the query point and best matches in pixels of
the image *file* (``file``, ``best_file``: [x, y]), as ``localdisc localize --landmarks`` takes
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import io
import ipaddress
import json
import math
import re
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
import torch
from PIL import Image

from localdisc.data.io import ImageMeta, dim_note, header_notes, read_image
from localdisc.data.preprocess import resize_image
from localdisc.errors import LocaldiscError
from localdisc.tasks.predict import prob_png
from localdisc.tasks.similarity import (
    Framing,
    LoadedModel,
    dense_patch_embeddings,
    from_resized,
    nearest_pixel,
    resized_shape,
    working_framing,
)

LEVELS = ("pixel", "patch")
MAX_URL = 2048  # bytes of the request target; every real URL of the page is far shorter
MAX_BODY = 1024  # only GET is served: no request needs a body
MAX_NUMBER = 32  # characters of a coordinate: any pixel, with decimals to spare
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")  # ASCII digits, no exponent
THUMB = 160  # longer side of thumbnails
#: The cookie in which the page keeps the server's token (see the module docstring), followed
#: by the port: browsers keep one cookie of a name per host, whatever the port, so that a second
#: viewer's would log the first one's page out.
TOKEN_COOKIE = "localdisc_viewer_token"
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; inline scripts and foreign origins are refused.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
#: What the viewer keeps of each image (MiB): embeddings, similarity maps, display images, PNGs,
#: clusters and segmentations. One image's pixel embeddings are dim x H x W float32: 32 MiB at
#: 512 x 512 and the default 32 dimensions, as many again at patch level, so 2 GiB keeps about 48
#: images' pixel embeddings, the recent similarity maps and what the page shows of many images.
DEFAULT_CACHE_MB = 2048
#: Bins of the histogram of similarities in [-1, 1] that gives a query's median in constant memory
#: (the maps need not all be kept): within a bin (2 / BINS, 3e-5) of the exact one.
BINS = 2**16
#: What a query keeps per image besides its map (:class:`Match`), in bytes: an upper bound.
MATCH_BYTES = 320


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Superseded(HTTPError):
    """A similarity scan stopped because a newer one was asked for (the page drops the older
    answer anyway; scanning on would only delay the newer one)."""

    def __init__(self) -> None:
        super().__init__(409, "a newer similarity query replaced this one")


@dataclass
class Entry:
    """One readable image: where it is, its sizes and how the model sees it. Its pixels are not
    kept here (a folder of thousands would not fit in memory): :meth:`Viewer.image` reads them
    again when needed."""

    id: int
    name: str
    path: Path
    shape: tuple[int, int]  # (height, width) of the display image
    original: tuple[int, int]  # (width, height) of the file
    digest: bytes  # of the display image, to notice a file changed since the viewer started
    grid: tuple[int, int]  # (height, width) of the working image: that of its embeddings
    #: How the working image was cut and resized from the file, where it is not the display
    #: image (a fundus image's field of view, an image smaller than the working size), else
    #: ``None``.
    framing: Framing | None = None

    def file_point(self, x: int, y: int) -> list[float]:
        """Display pixel (x, y) -> the centre of the area it shows, as [x, y] in the file's
        pixels. Each axis has its own scale: both sides were rounded to whole pixels."""
        (w, h), (dh, dw) = self.original, self.shape
        fx, fy = from_resized((x, y), (dw / w, dh / h))
        return [round(fx, 1), round(fy, 1)]


@dataclass(slots=True)
class Match:
    """What the ranking and the page need of one query pixel's similarity map on one image (the
    map itself is in the viewer's cache, or computed again: :meth:`Viewer.similarity_map`)."""

    id: int
    best: tuple[int, int]  # (x, y) of the maximum
    max: float
    min: float
    mean: float


@dataclass
class QueryResult:
    """One query: its point, its embedding, a :class:`Match` per image (by id) and the shared
    heatmap colour range."""

    key: tuple[int, int, int, str]  # (image id, x, y, level)
    vector: torch.Tensor  # [1, D] the query pixel's embedding (a copy, not a view of its image's)
    matches: list[Match]
    low: float  # the median similarity over all images: below it the heatmap is transparent
    high: float


class ByteLRU:
    """A least-recently-used cache bounded by the bytes of its values (thread-safe).

    Putting a value evicts the least recently used ones until the total is within ``limit``,
    but never the value just put: one larger than the limit stays until the next comes, so
    the caller's latest result is always there to be asked for again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        """The value (now the most recently used), or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items  # a look, not a use: the order stays

    def put(self, key: Hashable, value: object, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.limit and len(self._items) > 1:
                _, (_, evicted) = self._items.popitem(last=False)
                self.bytes -= evicted

    def discard(self, key: Hashable) -> None:
        """Remove a value if it is there."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]

    def free(self) -> int:
        """Bytes that can still be put without evicting anything."""
        with self._lock:
            return self.limit - self.bytes

    def snapshot(self) -> list[Hashable]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)


def check_cache_mb(cache_mb: float) -> None:
    """Refuse a cache size that is not a number of MiB >= 0."""
    number = isinstance(cache_mb, int | float) and not isinstance(cache_mb, bool)
    if not (number and math.isfinite(cache_mb) and cache_mb >= 0):
        raise LocaldiscError(f"--cache-mb must be a number of MiB, at least 0, not {cache_mb}")


def png_bytes(array: np.ndarray) -> bytes:
    """``uint8`` H x W (x 3/4) or ``uint16`` H x W array -> PNG file content."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float H x W x C in [0, 1] -> uint8 H x W x 3 (grey repeated)."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def image_digest(image: np.ndarray) -> bytes:
    """A hash of an array's shape and values (to tell whether a file still holds the same image)."""
    h = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
    h.update(np.ascontiguousarray(image).data)
    return h.digest()


def display_image(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` with its longer side at most ``size``: large images shrink, small ones stay
    (the model sees them enlarged: :meth:`Viewer.model_image`). Shrunk, it is the working image
    of ``similarity`` at ``size`` (the same :func:`resized_shape`)."""
    h, w = image.shape[:2]
    if max(h, w) <= size:
        return np.asarray(image, dtype=np.float32)
    return resize_image(image, resized_shape((h, w), size)[0])


def _colormap(name: str) -> np.ndarray:
    import matplotlib

    return np.round(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(
        np.uint8
    )


def similarity_map(
    vector: torch.Tensor,
    embeddings: torch.Tensor,
    framing: Framing | None = None,
    entry: Entry | None = None,
) -> np.ndarray:
    """Cosine similarity in [-1, 1] of a ``[1, D]`` query vector with ``[D, h, w]`` unit vectors
    on the display pixels: computed on the working image, then, where ``framing`` says how that
    was made from ``entry``'s file (a fundus image's field of view, a small image enlarged),
    sampled at the display pixels, as :func:`localdisc.tasks.similarity.similarity`
    interpolates its maps to the file's. The same operations as ``similarity``, so values agree
    with it to rounding, and the same inputs give the same bits (a map the viewer evicted is
    computed again to the very same heatmap)."""
    sim = torch.einsum("pd,dhw->phw", vector, embeddings)
    if framing is not None and entry is not None:
        sim = framing.to_grid(sim, entry.original[::-1], entry.shape)
    return sim.clamp(-1, 1)[0].numpy()


def _middle_ranks(n: int) -> list[int]:
    """The 0-based ranks whose mean is the median of ``n`` sorted values (as ``np.median``)."""
    return [n // 2] if n % 2 else [n // 2 - 1, n // 2]


def add_to_histogram(counts: np.ndarray, values: np.ndarray) -> None:
    """Count ``values`` into ``counts``: :data:`BINS` equal bins of [-1, 1] (the last holds 1)."""
    bins = ((values.astype(np.float64) + 1) * (BINS / 2)).astype(np.int64)
    bins = np.clip(bins, 0, BINS - 1).ravel()
    if bins.size:
        first = int(bins.min())  # counts over the values' span only, not all the bins
        span = np.bincount(bins - first)
        counts[first : first + span.size] += span


def histogram_median(counts: np.ndarray) -> float:
    """The median of the values counted by :func:`add_to_histogram`: each middle value is
    placed in its bin as if the bin's values were spread evenly, so the estimate is within a
    bin width (2 / BINS) of ``np.median`` of the values."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    if n == 0:
        return math.nan
    width = 2 / BINS
    values = []
    for rank in _middle_ranks(n):
        b = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[b - 1]) if b else 0
        values.append(-1 + (b + (rank - before + 0.5) / int(counts[b])) * width)
    return float(np.mean(values))


class Viewer:
    """Images, model and in-memory caches behind the page.

    Everything kept per image is in least-recently-used caches of at most ``cache_mb`` MiB in
    all (a folder of hundreds of images would otherwise need tens of GiB; see
    :data:`DEFAULT_CACHE_MB`): three quarters for embeddings (computed per image and level;
    patch embeddings are pooled from the pixel ones), an eighth for recent queries (a few numbers
    per image, and as many similarity maps as fit, the query's own image and best matches
    first), a sixteenth for display images (read again from their files on a miss) and a
    sixteenth for what the page shows of each image (PNGs, thumbnails, clusters,
    segmentations; a working image that is not the display image shares the display images'
    sixteenth). Only names, paths and sizes (and a fundus image's field of view) are kept for
    every image. What was evicted costs a file read, a PNG encoding or a model call again
    when asked for (a similarity map: its image's embeddings and the query vector, which the
    query keeps). One lock serialises model calls so that concurrent requests neither duplicate
    work nor oversubscribe the CPU.

    The patch kernel is the model's (``loaded.kernel``) at any ``size``, as in
    :func:`~localdisc.tasks.similarity.similarity` and the localiser, so values agree with them.
    The model sees each file at the working size ``size`` on its longer side (smaller ones
    enlarged: embeddings are not scale-invariant), a fundus model its field of view, as in
    pre-training, ``similarity`` and ``localize``; the embeddings are kept on that working image
    and each similarity map is computed there, then sampled at the display pixels, so the maps
    are ``similarity``'s.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        files: Sequence[tuple[str, str | Path]],
        *,
        segmenter: object | None = None,
        size: int | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        check_cache_mb(cache_mb)
        self.loaded = loaded
        # The viewer shows the clusters of weights whose head never trained (stage 1's) all the
        # same, which serve() warns of; LDModel refuses them elsewhere.
        loaded.model.untrained_clusters = None
        self.segmenter = segmenter
        # Only None means the model's size: 0 must be refused below, not silently replaced.
        self.size = int(loaded.pool_size if size is None else size)
        if self.size < 16:
            raise LocaldiscError(f"--size must be at least 16, not {self.size}")
        limit = int(cache_mb * 2**20)
        quarter = limit // 4
        self._embeddings = ByteLRU(limit - quarter)  # ("pixel" | "patch", image id) keys
        # Display images by image id, working images that differ by ("working", image id).
        self._images = ByteLRU(quarter // 4)
        # ("image" | "thumb" | "clusters" | "segmentation" | "segmentation_download", image
        # id): a cache of its own, so that a query's scan, which reads many images, does not
        # push out what the page shows.
        self._renders = ByteLRU(quarter // 4)
        # ("result", query) -> QueryResult and ("map", query, image id) -> its similarity map.
        self._queries = ByteLRU(quarter - 2 * (quarter // 4))
        self._latest: QueryResult | None = None  # kept even when maps recomputed push it out
        self.entries: list[Entry] = []
        self.errors: list[dict[str, str]] = []  # for the page: names, never server paths
        self.error_paths: dict[str, Path] = {}  # for the terminal, by name
        # What `serve` says of the images read (orientation_note, dim_note).
        self.metas: list[ImageMeta] = []
        self.peaks: list[tuple[str, float]] = []
        for name, path in files:
            try:
                raw, meta = read_image(path)
                image = display_image(raw, self.size)
                # Framed now, from the pixels at hand: the embeddings' size is then known before
                # they are made (embedding_bytes), and no file is decoded again just to frame
                # it (a field of view found on a 3000 x 2000 photograph: about 0.1 s).
                framing, grid = self._framing(raw, image)
            except (LocaldiscError, OSError, ValueError, MemoryError) as exc:
                # A bad file is listed on the page; the others keep working.
                self.errors.append({"name": name, "file": Path(path).name, "error": _reason(exc)})
                self.error_paths[name] = Path(path)
                continue
            entry = Entry(len(self.entries), name, Path(path), image.shape[:2],
                          (raw.shape[1], raw.shape[0]), image_digest(image), grid,
                          framing)  # fmt: skip
            self.entries.append(entry)
            self.metas.append(meta)
            self.peaks.append((name, float(raw.max())))
            if self._images.free() >= image.nbytes:  # the first ones, which are shown first
                self._images.put(entry.id, image, image.nbytes)
        self.clusters = loaded.model.config.clusters
        colours = _cluster_colours(self.clusters)
        self.colours = np.round(colours * 255).astype(np.uint8)
        self._magma = _colormap("magma")
        self._lock = threading.RLock()
        self.working: str | None = None  # what the model computes now, for the progress bar
        self.scan: dict | None = None  # the running query's progress over the images
        self.warming = False
        self.warmed = 0  # images the warm-up has done
        self._stop = threading.Event()
        self._asked = 0  # similarity_json calls so far: a scan stops when a newer one comes
        self._asked_lock = threading.Lock()

    # --- model outputs, cached ---------------------------------------------------------------
    def entry(self, image_id: int) -> Entry:
        if not 0 <= image_id < len(self.entries):
            raise HTTPError(404, f"no image {image_id}")
        return self.entries[image_id]

    def image(self, image_id: int) -> np.ndarray:
        """The display image (float H x W x C in [0, 1]): cached, or read again from its file.

        Raises:
            LocaldiscError: the file can no longer be read, or holds another image than when
                the viewer started (its maps and sizes would no longer match).
        """
        cached = self._images.get(image_id)
        if cached is not None:
            return cached  # type: ignore[return-value]
        return self._read(image_id)[1]

    def _read(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The image as its file holds it and its display image (cached), read again.

        Raises:
            LocaldiscError: as :meth:`image`.
        """
        entry = self.entry(image_id)
        try:
            raw, _ = read_image(entry.path)
            image = display_image(raw, self.size)
        except (LocaldiscError, OSError, ValueError, MemoryError) as exc:
            # Name and file name only: messages go to the page, which never sees server paths
            # (the name tells p01/scan.png from p02/scan.png).
            raise LocaldiscError(
                f"cannot read {entry.name} ({entry.path.name}) again: {_reason(exc)}"
            ) from exc
        if image_digest(image) != entry.digest:
            raise LocaldiscError(
                f"{entry.name} ({entry.path.name}) changed since the viewer started: restart the "
                "viewer to show it"
            )
        self._images.put(image_id, image, image.nbytes)
        return raw, image

    def _framing(
        self, raw: np.ndarray, image: np.ndarray
    ) -> tuple[Framing | None, tuple[int, int]]:
        """How the model sees an image (its file's pixels ``raw``, its display image
        ``image``): the :class:`Framing` of its working image, the file (a fundus model: its
        field of view) resized to the working size, smaller ones enlarged
        (:func:`~localdisc.tasks.similarity.working_image`, as ``similarity`` and ``localize``),
        and that image's (height, width); ``None`` and the display image's size where the
        working image is the display image (a file at least ``size`` pixels long, whole).
        Only the box and sizes: the resize itself waits for the model (:meth:`model_image`),
        which gets to most images of a large folder long after the start (made now, most would
        be evicted before then)."""
        h, w = raw.shape[:2]
        framing, grid = working_framing(self.loaded, raw, self.size)
        if framing.box == (0, h, 0, w) and grid == image.shape[:2]:
            return None, grid  # the display image: the same resize of the same pixels
        return framing, grid

    def model_image(self, image_id: int) -> np.ndarray:
        """The image as the model sees it (:meth:`_framing`): the display image, or a working
        image that differs from it, cached or made again from its file.

        Raises:
            LocaldiscError: as :meth:`image`.
        """
        entry = self.entry(image_id)
        if entry.framing is None:
            return self.image(image_id)
        key = ("working", image_id)
        cached = self._images.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw, _ = self._read(image_id)
        small = entry.framing.apply(raw, entry.grid)  # the framing found at the start
        self._images.put(key, small, small.nbytes)
        return small

    def embeddings(self, image_id: int, level: str) -> torch.Tensor:
        """``[D, h, w]`` unit vectors of one image as the model sees it, computed as
        ``similarity.embedding_map``: on the file at the working size, for a fundus model its
        field of view (:func:`~localdisc.tasks.similarity.working_image`, as in pre-training and
        ``similarity``: a small image shown at its own size, or a camera's wide black frame,
        shows the model its content smaller than that); that is the display image where it is
        the same. Patches are pooled there with the model's kernel, as
        ``similarity`` pools them; :meth:`similarity_map` maps the cosines to the display
        pixels (:meth:`framing`)."""
        entry = self.entry(image_id)
        name = entry.name

        def make() -> torch.Tensor:
            if level == "pixel":
                return self.loaded.model.embed(self.model_image(image_id)).cpu()
            pixel = self.embeddings(image_id, "pixel")
            self.working = f"patch embeddings of {name}"
            return dense_patch_embeddings(pixel, self.loaded.kernel).cpu()

        return self._computed(self._embeddings, (level, image_id), f"{level} embeddings of {name}",
                              make, lambda v: v.element_size() * v.nelement())  # fmt: skip

    def embedding_bytes(self, image_id: int) -> int:
        """The bytes of one image's embeddings at one level: ``dim`` float32 values (the
        model's output, kept on the CPU) per pixel of its working image, known from the start
        (:class:`Entry`), so that the warm-up embeds only what the cache holds."""
        h, w = self.entry(image_id).grid
        return self.loaded.model.config.dim * h * w * 4

    def framing(self, image_id: int) -> Framing | None:
        """How the image's embeddings were made from its file, where they are not on its
        display pixels (a fundus image cut to its field of view, a small image enlarged), else
        ``None``."""
        return self.entry(image_id).framing

    def working_pixel(
        self, image_id: int, x: int, y: int, shape: tuple[int, ...]
    ) -> tuple[int, int]:
        """(column, row) of the image's embeddings (``shape``: theirs) for display pixel
        (x, y): the working pixel nearest the same place of the file, as ``similarity`` takes
        a query point's."""
        framing = self.framing(image_id)
        if framing is None:
            return x, y
        entry = self.entry(image_id)
        xs, ys = framing.grid_to_working(entry.original[::-1], entry.shape)
        return nearest_pixel(float(xs[x]), shape[-1]), nearest_pixel(float(ys[y]), shape[-2])

    def _map(self, vector: torch.Tensor, image_id: int, embeddings: torch.Tensor) -> np.ndarray:
        """:func:`similarity_map` of a query vector on one image's display pixels."""
        return similarity_map(vector, embeddings, self.framing(image_id), self.entry(image_id))

    def _computed(
        self,
        cache: ByteLRU,
        key: Hashable,
        what: str,
        make: Callable[[], Any],
        nbytes: Callable[[Any], int] = lambda value: value.nbytes,
    ) -> Any:
        """A model output kept in ``cache``, made under the model lock on a miss (``what`` it
        computes shows in the page's progress)."""
        cached = cache.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = cache.get(key)  # another request may have made it meanwhile
            if cached is not None:
                return cached
            self.working = what
            try:
                value = make()
            finally:
                self.working = None
            cache.put(key, value, nbytes(value))
            return value

    def _labels_dtype(self) -> type[np.integer]:
        """A byte per pixel, not the int64 of argmax, where the clusters allow it."""
        return np.uint8 if self.clusters <= 256 else np.int32

    def labels(self, image_id: int) -> np.ndarray:
        """H x W arg-max cluster of every display pixel. The model clusters the working image
        (for a fundus model the file's field of view at the working size), as its embeddings
        (:meth:`embeddings`) and as in pre-training; each display pixel takes the label of the
        nearest working pixel (labels are not interpolated), beyond the crop the nearest crop
        pixel's, as the similarity maps there
        (:meth:`~localdisc.tasks.similarity.Framing.to_image`)."""
        entry = self.entry(image_id)

        def make() -> np.ndarray:
            a = self.loaded.model.cluster(self.model_image(image_id)).argmax(0).cpu().numpy()
            if entry.framing is not None:
                xs, ys = entry.framing.grid_to_working(entry.original[::-1], entry.shape)
                cols = np.clip(np.round(xs), 0, a.shape[1] - 1).astype(np.intp)
                rows = np.clip(np.round(ys), 0, a.shape[0] - 1).astype(np.intp)
                a = a[np.ix_(rows, cols)]
            return a.astype(self._labels_dtype())

        name = entry.name
        return self._computed(self._renders, ("clusters", image_id), f"clusters of {name}", make)

    def _file_segmentation(self, image_id: int) -> np.ndarray:
        """The foreground probability at the file's own size, as ``localdisc predict`` computes
        it: the segmenter's :meth:`~localdisc.models.segmenter.Segmenter.predict` of the file's
        pixels (resized to its training size and back). Not of the display image: shrunk to
        ``--size`` (the LD model's pool size, not the segmenter's) and enlarged again, its map
        strayed up to 0.4 from predict's and lost Dice. Called under the model lock.

        Raises:
            HTTPError: no segmenter (404).
            LocaldiscError: as :meth:`image`.
        """
        if self.segmenter is None:
            raise HTTPError(404, "no segmentation model: start the viewer with --segmenter")
        raw, _ = self._read(image_id)
        prob = self.segmenter.predict(raw)  # type: ignore[attr-defined]
        return np.asarray(prob, dtype=np.float32)

    def _overlay(self, image_id: int, prob: np.ndarray) -> np.ndarray:
        """``prob`` (at the file's size) on the display pixels: each the mean over the area of
        the file it shows, as the display image is shrunk (:func:`display_image`)."""
        shape = self.entry(image_id).shape
        return prob if prob.shape == shape else resize_image(prob, shape)

    def segmentation(self, image_id: int) -> np.ndarray:
        """H x W foreground probability on the display pixels (needs a segmenter): ``localdisc
        predict``'s map of the file (:meth:`_file_segmentation`), shrunk as the image is."""
        if self.segmenter is None:
            raise HTTPError(404, "no segmentation model: start the viewer with --segmenter")

        def make() -> np.ndarray:
            return self._overlay(image_id, self._file_segmentation(image_id))

        key, name = ("segmentation", image_id), self.entry(image_id).name
        return self._computed(self._renders, key, f"segmentation of {name}", make)

    def query(
        self,
        image_id: int,
        x: int,
        y: int,
        level: str,
        superseded: Callable[[], bool] | None = None,
    ) -> QueryResult:
        """Similarity of pixel (x, y) of an image with every pixel of every image, by image id.

        ``superseded``: asked before each image of the scan; where it says True the scan stops
        with :class:`Superseded` (the maps computed so far stay cached)."""
        with self._lock:  # the small LRU below is shared between request threads
            return self._query((image_id, x, y, level), superseded)

    def _query(
        self, key: tuple[int, int, int, str], superseded: Callable[[], bool] | None
    ) -> QueryResult:
        image_id, x, y, level = key
        cached = self._queries.get(("result", key))
        if cached is not None:
            return cached  # type: ignore[return-value]
        if self._latest is not None and self._latest.key == key:
            return self._latest
        own = self.embeddings(image_id, level)
        col, row = self.working_pixel(image_id, x, y, own.shape)
        vector = own[:, row, col][None].clone()  # a view would keep all of `own` with the result
        # The cached images first: computing the others evicts the least recently used, which
        # would otherwise be images of this very query not reached yet, computed twice.
        order = sorted(self.entries, key=lambda e: ((level, e.id) not in self._embeddings, e.id))
        result_bytes = MATCH_BYTES * len(self.entries)
        budget = self._queries.limit - result_bytes  # for this query's maps
        # As many maps as fit are kept, the best first (the rest is computed again when the page
        # asks for it); a histogram of the values gives the median in constant memory.
        counts = np.zeros(BINS, np.int64)
        kept: list[tuple[tuple[float, int], int]] = []  # heap of (priority, size), worst first
        kept_bytes = 0
        found: dict[int, Match] = {}
        self.scan = {"level": level, "done": 0, "total": len(order)}
        try:
            for entry in order:
                if superseded is not None and superseded():
                    raise Superseded
                v = own if entry.id == image_id else self.embeddings(entry.id, level)
                sim = self._map(vector, entry.id, v)
                by, bx = np.unravel_index(int(np.argmax(sim)), sim.shape)
                match = Match(entry.id, (int(bx), int(by)), float(sim.max()), float(sim.min()),
                              float(sim.mean()))  # fmt: skip
                found[entry.id] = match
                add_to_histogram(counts, sim[::2, ::2])  # a quarter of the work, the same median
                # The query's own image first, then the best matches, as the page ranks them.
                priority = (math.inf if entry.id == image_id else match.max, -entry.id)
                while kept and kept_bytes + sim.nbytes > budget and kept[0][0] < priority:
                    (_, worst), size = heapq.heappop(kept)
                    self._queries.discard(("map", key, -worst))
                    kept_bytes -= size
                if kept_bytes + sim.nbytes <= budget:
                    heapq.heappush(kept, (priority, sim.nbytes))
                    kept_bytes += sim.nbytes
                    self._queries.put(("map", key, entry.id), sim, sim.nbytes)
                self.scan["done"] += 1
        finally:
            self.scan = None
        # The query's image is the one being looked at, and the next click is likely on it: keep
        # its embeddings (the scan may have evicted them, the least recently used).
        self._embeddings.put((level, image_id), own, own.element_size() * own.nelement())
        matches = [found[entry.id] for entry in self.entries]  # by id, as the routes index them
        # One colour range for all the query's heatmaps keeps them comparable; starting it at the
        # median (rather than -1) makes the similar half stand out, since trained embeddings
        # mostly have cosines well above 0 with each other.
        high = max(m.max for m in matches)
        low = min(histogram_median(counts), high - 1e-3)
        result = QueryResult(key, vector, matches, low, high)
        self._latest = result
        self._queries.put(("result", key), result, result_bytes)
        return result

    def similarity_map(self, result: QueryResult, target: int) -> np.ndarray:
        """A query's H x W similarity map on one image: kept by the query, or computed again
        from the image's (cached or recomputed) embeddings, to the same values."""
        self.entry(target)
        key = ("map", result.key, target)
        cached = self._queries.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        sim = self._map(result.vector, target, self.embeddings(target, result.key[3]))
        self._queries.put(key, sim, sim.nbytes)
        return sim

    def progress(self) -> dict:
        """How many images have each cached output, what is being computed, and how far the
        warm-up and the running query are."""
        counts = {level: 0 for level in LEVELS}
        for level, _ in self._embeddings.snapshot():
            counts[level] += 1
        scan = self.scan
        caches = (self._embeddings, self._queries, self._images, self._renders)
        return {
            "total": len(self.entries),
            "embeddings": counts,
            "clusters": sum(kind == "clusters" for kind, _ in self._renders.snapshot()),
            "working": self.working,
            "warming": self.warming,
            "warmed": self.warmed,
            "query": dict(scan) if scan else None,
            "cache_mb": {
                "used": sum(cache.bytes for cache in caches) / 2**20,
                "limit": sum(cache.limit for cache in caches) / 2**20,
            },
        }

    def warm_up(self) -> threading.Thread:
        """Compute clusters and pixel embeddings of every image in a background thread, so that
        the first click is fast; the page shows the progress. Each only while it fits in its
        cache: beyond it each would evict an earlier image's, all for nothing."""

        def run() -> None:
            try:
                for entry in self.entries:
                    if self._stop.is_set():
                        return
                    try:
                        h, w = entry.shape
                        label_bytes = h * w * np.dtype(self._labels_dtype()).itemsize
                        if self._renders.free() >= label_bytes:
                            self.labels(entry.id)
                        if self._embeddings.free() >= self.embedding_bytes(entry.id):
                            self.embeddings(entry.id, "pixel")
                    except Exception:  # noqa: BLE001 - a request will report it with its message
                        pass
                    self.warmed += 1
            finally:
                self.warming = False

        self.warming = True
        thread = threading.Thread(target=run, name="localdisc-viewer-warmup", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    # --- PNG renderings ----------------------------------------------------------------------
    def _cached_png(self, key: tuple[str, int], make: Callable[[], np.ndarray]) -> bytes:
        self.entry(key[1])  # 404 for an unknown id
        cached = self._renders.get(key)
        if cached is None:  # no lock: two requests may both encode it, neither waits for a model
            cached = png_bytes(make())
            self._renders.put(key, cached, len(cached))
        return cached  # type: ignore[return-value]

    def image_png(self, image_id: int) -> bytes:
        return self._cached_png(("image", image_id), lambda: to_uint8(self.image(image_id)))

    def thumb_png(self, image_id: int) -> bytes:
        def make() -> np.ndarray:
            thumb = Image.fromarray(to_uint8(self.image(image_id)))
            thumb.thumbnail((THUMB, THUMB))
            return np.asarray(thumb)

        return self._cached_png(("thumb", image_id), make)

    def clusters_png(self, image_id: int, hidden: frozenset[int] = frozenset()) -> bytes:
        """RGBA: the colour of each pixel's cluster, transparent where the cluster is hidden."""
        labels = self.labels(image_id)
        alpha = np.full(self.clusters, 255, np.uint8)
        alpha[list(hidden)] = 0
        lut = np.concatenate([self.colours, alpha[:, None]], axis=1)
        return png_bytes(lut[labels])

    def heatmap_png(self, result: QueryResult, target: int) -> bytes:
        """RGBA: the similarity map in the magma colour map from ``low`` (dark, transparent) to
        ``high`` (light yellow, opaque), so that the image shows through where it is unlike."""
        sim = self.similarity_map(result, target)
        t = np.clip((sim - result.low) / (result.high - result.low), 0, 1)
        rgba = np.empty((*t.shape, 4), np.uint8)
        rgba[..., :3] = self._magma[np.round(t * 255).astype(np.intp)]
        rgba[..., 3] = np.round(t**1.5 * 255).astype(np.uint8)  # the most similar stand out
        return png_bytes(rgba)

    def segmentation_png(self, image_id: int) -> bytes:
        """RGBA overlay: green, as opaque as the foreground is probable."""
        prob = self.segmentation(image_id)
        rgba = np.zeros((*prob.shape, 4), np.uint8)
        rgba[..., 1], rgba[..., 2] = 255, 90
        rgba[..., 3] = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
        return png_bytes(rgba)

    def segmentation_download(self, image_id: int) -> bytes:
        """The probability map at the file's own size as ``localdisc predict`` writes it
        (``NAME_prob.png``: :func:`~localdisc.tasks.predict.prob_png` of
        :meth:`_file_segmentation`), as PNG bytes. Only these bytes are kept (a photograph's
        map in float32 takes 24 MiB at 3000 x 2000), and the overlay made from the same map
        where it is not kept yet, so that neither asks the segmenter again."""
        if self.segmenter is None:
            raise HTTPError(404, "no segmentation model: start the viewer with --segmenter")
        entry = self.entry(image_id)

        def make() -> bytes:
            prob = self._file_segmentation(image_id)
            key = ("segmentation", image_id)
            if key not in self._renders:
                overlay = self._overlay(image_id, prob)
                self._renders.put(key, overlay, overlay.nbytes)
            return png_bytes(prob_png(prob))

        key = ("segmentation_download", image_id)
        return self._computed(self._renders, key, f"segmentation of {entry.name}", make, len)

    # --- JSON --------------------------------------------------------------------------------
    def info(self) -> dict:
        run_dir = self.loaded.run_dir
        return {
            "model": run_dir.name if run_dir else "model",
            "clusters": [
                {"index": k, "colour": "#{:02x}{:02x}{:02x}".format(*c)}
                for k, c in enumerate(self.colours.tolist())
            ],
            "levels": list(LEVELS),
            "segmenter": self.segmenter is not None,
            "size": self.size,
            "images": [
                {
                    "id": e.id,
                    "name": e.name,
                    "width": e.shape[1],
                    "height": e.shape[0],
                    "original": list(e.original),
                }
                for e in self.entries
            ],  # fmt: skip
            "errors": self.errors,
        }

    def similarity_json(self, image_id: int, x: int, y: int, level: str) -> dict:
        """The query's map on its own image, and on every other image ranked by best match.

        A later call stops this one's scan (:class:`Superseded`): a click replaces the one
        before, whose answer the page drops, and which held the model for the newer one."""
        with self._asked_lock:
            self._asked += 1
            mine = self._asked
        result = self.query(image_id, x, y, level, superseded=lambda: self._asked != mine)
        matches = result.matches
        q = f"image={image_id}&x={x}&y={y}&level={level}"

        def describe(m: Match) -> dict:
            return {
                "id": m.id, "name": self.entries[m.id].name, "max": m.max, "min": m.min,
                "mean": m.mean, "best": list(m.best),
                "best_file": self.entries[m.id].file_point(*m.best),
                "heatmap": f"/api/heatmap/{m.id}.png?{q}", "values": f"/api/simmap/{m.id}.npy?{q}",
            }  # fmt: skip

        others = sorted((m for m in matches if m.id != image_id), key=lambda m: (-m.max, m.id))
        # x, y are display pixels (what the page clicks); "file" is the same point in the file's
        # pixels, which is what a landmark file for `localize --landmarks` needs.
        file = self.entries[image_id].file_point(x, y)
        return {
            "query": {"image": image_id, "x": x, "y": y, "level": level, "file": file},
            "scale": {"low": result.low, "high": result.high},
            "self": describe(matches[image_id]),
            "matches": [describe(m) for m in others],
        }


def _cluster_colours(k: int) -> np.ndarray:
    from localdisc.eval.figures import cluster_colours

    return cluster_colours(k)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


# --- HTTP ------------------------------------------------------------------------------------
_ID = r"(\d{1,9})"
ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile(p), name)
    for p, name in [
        (r"/", "index"),
        (r"/static/([A-Za-z0-9_.-]{1,64})", "static"),
        (r"/api/info", "info"),
        (r"/api/status", "status"),
        (rf"/api/image/{_ID}\.png", "image"),
        (rf"/api/thumb/{_ID}\.png", "thumb"),
        (rf"/api/clusters/{_ID}\.png", "clusters"),
        (r"/api/similarity", "similarity"),
        (rf"/api/heatmap/{_ID}\.png", "heatmap"),
        (rf"/api/simmap/{_ID}\.npy", "simmap"),
        (rf"/api/segmentation/{_ID}\.png", "segmentation"),
        (rf"/api/segmentation/{_ID}/prob\.png", "segmentation_download"),
    ]
]


def _static_files() -> dict[str, bytes]:
    folder = resources.files("localdisc.viewer") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the :class:`Viewer`."""

    daemon_threads = True
    request_queue_size = 16

    def __init__(
        self,
        address: tuple[str, int],
        viewer: Viewer,
        *,
        quiet: bool = True,
        log: Callable[[str], object] = print,
    ) -> None:
        self.viewer = viewer
        self.quiet = quiet
        self.log = log  # errors of the server's own (500), said even when quiet
        self.static = _static_files()
        self.loopback = is_loopback(address[0])
        self.token = secrets.token_urlsafe(24)  # the URL printed at start carries it
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        """The server's root, without the token (requests need it: :attr:`login_url`)."""
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    @property
    def cookie_name(self) -> str:
        """The name of the cookie holding this server's token (:data:`TOKEN_COOKIE`_PORT)."""
        return f"{TOKEN_COOKIE}_{self.server_address[1]}"

    @property
    def login_url(self) -> str:
        """The URL to open: the root with the token, which the page then keeps as a cookie."""
        return f"{self.url}?token={self.token}"

    def server_close(self) -> None:
        self.viewer.stop()
        super().server_close()


class ViewerHandler(BaseHTTPRequestHandler):
    """GET-only routes; every error is a small JSON object."""

    server: ViewerServer
    server_version = "localdisc-viewer"
    _sets_cookie = False  # this request's answer sets the token's cookie (_route)
    timeout = 60  # a client that stops sending does not hold a thread for ever

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        try:
            self._check_body()
            raise HTTPError(405, "only GET is served")
        except HTTPError as exc:
            self._error(exc.status, exc.message, allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        if not self.server.quiet:
            super().log_message(format, *args)

    # --- plumbing -----------------------------------------------------------------------------
    def _check_body(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(413, "request bodies are not accepted")
        if length is None:
            return
        try:
            n = int(length)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if n < 0:
            raise HTTPError(400, "bad Content-Length")
        if n > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        if n:
            self.rfile.read(n)  # small: read it so that the reply is not cut by a reset

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
        if host and not is_loopback(name):
            raise HTTPError(400, "unexpected Host header (the viewer answers only localhost)")

    def _check_token(self, query: dict[str, list[str]]) -> bool:
        """Whether the request carries the server's token, in its cookie or (the URL printed
        at start) in ``?token=``; the latter returns True so that the answer sets the cookie.
        Raises 403 without it."""
        expected = self.server.token.encode()
        given = query.get("token", [""])[-1]
        if given and hmac.compare_digest(given.encode(), expected):
            return True
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == self.server.cookie_name and hmac.compare_digest(value.encode(), expected):
                return False
        raise HTTPError(
            403,
            "no valid token: open the URL the viewer printed at start (it ends in ?token=...)",
        )

    def _send(
        self, status: int, body: bytes, content_type: str, head: bool = False, **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")  # no embedding elsewhere
        if self._sets_cookie:
            cookie = f"{self.server.cookie_name}={self.server.token}"
            self.send_header("Set-Cookie", f"{cookie}; HttpOnly; SameSite=Strict; Path=/")
        for key, value in extra.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200, head: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", head)

    def _error(self, status: int, message: str, allow: bool = False, head: bool = False) -> None:
        extra = {"Allow": "GET, HEAD"} if allow or status == 405 else {}
        self.close_connection = True
        body = json.dumps({"error": message}).encode()
        with contextlib.suppress(OSError):  # the client may have gone away
            self._send(status, body, "application/json", head, **extra)

    def _serve(self, head: bool) -> None:
        self._sets_cookie = False  # one connection may carry several requests
        try:
            if len(self.path) > MAX_URL:
                raise HTTPError(414, f"URL over {MAX_URL} bytes")
            self._check_body()
            self._check_host()
            self._route(head)
        except HTTPError as exc:
            self._error(exc.status, exc.message, head=head)
        except LocaldiscError as exc:
            self._error(422, str(exc), head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - one failing image must not stop the server
            message = f"{type(exc).__name__}: {exc}"
            if (
                isinstance(exc, MemoryError)
                or "allocate memory" in message
                or ("out of memory" in message.lower())
            ):  # a --size of 100 000 (numpy's, torch's CPU and CUDA allocators'): 500 alone
                message = f"out of memory at the working size {self.viewer.size} (--size)"
            # The page shows the message; the terminal said nothing of it.
            self.server.log(f"error answering {self.path.partition('?')[0][:100]}: {message}")
            self._error(500, message, head=head)

    def _route(self, head: bool) -> None:
        parts = urlsplit(self.path)
        raw = parts.path
        path = unquote(raw)
        # Paths are never mapped to files, but refuse traversal outright rather than 404 it.
        segments = path.split("/")
        if any(s in ("..", ".") for s in segments) or "\\" in path or "\x00" in path:
            raise HTTPError(400, "bad path")
        try:
            query = parse_qs(parts.query, max_num_fields=16, strict_parsing=False)
        except ValueError:
            raise HTTPError(400, "too many query parameters") from None
        # The printed URL's token: its answer sets the cookie that the page's requests carry.
        self._sets_cookie = self._check_token(query)
        for pattern, name in ROUTES:
            m = pattern.fullmatch(path)
            if m:
                getattr(self, f"_r_{name}")(head, query, *m.groups())
                return
        raise HTTPError(404, f"not found: {path[:100]}")

    # --- routes -------------------------------------------------------------------------------
    @property
    def viewer(self) -> Viewer:
        return self.server.viewer

    def _png(self, body: bytes, head: bool, **extra: str) -> None:
        self._send(200, body, "image/png", head, **extra)

    def _r_index(self, head: bool, query: dict) -> None:
        self._send(200, self.server.static["index.html"], STATIC["index.html"], head)

    def _r_static(self, head: bool, query: dict, name: str) -> None:
        if name not in self.server.static:
            raise HTTPError(404, f"no static file {name}")
        self._send(200, self.server.static[name], STATIC[name], head)

    def _r_info(self, head: bool, query: dict) -> None:
        self._json(self.viewer.info(), head=head)

    def _r_status(self, head: bool, query: dict) -> None:
        self._json(self.viewer.progress(), head=head)

    def _r_image(self, head: bool, query: dict, image_id: str) -> None:
        self._png(self.viewer.image_png(int(image_id)), head)

    def _r_thumb(self, head: bool, query: dict, image_id: str) -> None:
        self._png(self.viewer.thumb_png(int(image_id)), head)

    def _r_clusters(self, head: bool, query: dict, image_id: str) -> None:
        self.viewer.entry(int(image_id))
        hidden = _int_list(query, "hide", self.viewer.clusters)
        self._png(self.viewer.clusters_png(int(image_id), hidden), head)

    def _query(self, query: dict) -> tuple[int, int, int, str]:
        image_id = _int(query, "image")
        entry = self.viewer.entry(image_id)
        h, w = entry.shape
        x, y = _coordinate(query, "x", w), _coordinate(query, "y", h)
        level = _one(query, "level", "pixel")
        if level not in LEVELS:
            raise HTTPError(400, f"level must be pixel or patch, not {level[:20]!r}")
        return image_id, x, y, level

    def _r_similarity(self, head: bool, query: dict) -> None:
        self._json(self.viewer.similarity_json(*self._query(query)), head=head)

    def _result(self, query: dict, target: str) -> QueryResult:
        self.viewer.entry(int(target))
        return self.viewer.query(*self._query(query))

    def _r_heatmap(self, head: bool, query: dict, target: str) -> None:
        self._png(self.viewer.heatmap_png(self._result(query, target), int(target)), head)

    def _r_simmap(self, head: bool, query: dict, target: str) -> None:
        sim = self.viewer.similarity_map(self._result(query, target), int(target))
        buffer = io.BytesIO()
        np.save(buffer, sim.astype(np.float32), allow_pickle=False)
        self._send(200, buffer.getvalue(), "application/octet-stream", head)

    def _r_segmentation(self, head: bool, query: dict, image_id: str) -> None:
        self._png(self.viewer.segmentation_png(int(image_id)), head)

    def _r_segmentation_download(self, head: bool, query: dict, image_id: str) -> None:
        entry = self.viewer.entry(int(image_id))
        body = self.viewer.segmentation_download(int(image_id))
        name = entry.name[:100] + "_prob.png"
        fallback = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        # Headers are Latin-1: the ASCII fallback alone turns every non-Latin name into
        # underscores (two CJK names into the same file), so the UTF-8 name goes in filename*
        # (RFC 6266), which browsers prefer.
        disposition = (
            f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
        )
        self._png(body, head, Content_Disposition=disposition)


# --- query values ----------------------------------------------------------------------------
def _one(query: dict, key: str, default: str | None = None) -> str:
    values = query.get(key)
    if not values:
        if default is None:
            raise HTTPError(400, f"missing query parameter {key}")
        return default
    if len(values) > 1:
        raise HTTPError(400, f"{key} given more than once")
    return values[0]


def _int(query: dict, key: str) -> int:
    text = _one(query, key)
    if not re.fullmatch(r"\d{1,9}", text):
        raise HTTPError(400, f"{key} must be a non-negative integer")
    return int(text)


def _coordinate(query: dict, key: str, limit: int) -> int:
    """A pixel coordinate in ``[0, limit)``; fractions are floored (the pixel a click at that
    distance from the image's corner falls in, as the page computes it). Only a plain decimal
    number of at most :data:`MAX_NUMBER` characters: a longer one is refused, not cut (which
    queried another pixel), and so are what ``float`` reads besides (``1_0``, ``1e1``, ``inf``,
    other scripts' digits)."""
    text = _one(query, key)
    if len(text) > MAX_NUMBER or not DECIMAL.fullmatch(text):
        limit_text = f"at most {MAX_NUMBER} characters"
        raise HTTPError(400, f"{key} must be a decimal number (e.g. 120 or 120.5), {limit_text}")
    value = float(text)
    if not 0 <= value < limit:
        raise HTTPError(400, f"{key} must be in [0, {limit})")
    return int(value)


def _int_list(query: dict, key: str, limit: int) -> frozenset[int]:
    text = _one(query, key, "")
    if not text:
        return frozenset()
    if not re.fullmatch(r"\d{1,4}(,\d{1,4}){0,255}", text):
        raise HTTPError(400, f"{key} must be comma-separated cluster numbers")
    values = frozenset(int(v) for v in text.split(","))
    if max(values) >= limit:
        raise HTTPError(400, f"{key}: clusters are 0 to {limit - 1}")
    return values


# --- starting --------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface (any spelling: 127.0.0.2, 0:0:0:0:0:0:0:1,
    LOCALHOST)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning to print when the server is reachable from other machines."""
    if is_loopback(host):
        return None
    return (
        f"warning: listening on {host}: anyone who can reach this machine and has the URL's "
        "token can view the images and the model's outputs (sent unencrypted). Use --host "
        "127.0.0.1 to keep it local."
    )


def check_port(port: int) -> None:
    """Refuse a port outside 0-65535, for which ``bind`` raises OverflowError (no OSError)."""
    if isinstance(port, bool) or not 0 <= port <= 65535:
        raise LocaldiscError(f"--port must be 0 to 65535 (0: any free port), not {port}")


def create_server(
    viewer: Viewer,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    log: Callable[[str], object] = print,
    quiet: bool = True,
) -> ViewerServer:
    """Bind the viewer's HTTP server (``port`` 0: a free one); call ``serve_forever`` on it."""
    check_port(port)
    warning = host_warning(host)
    if warning:
        log(warning)
    try:
        return ViewerServer((host, port), viewer, quiet=quiet, log=log)
    except OSError as exc:
        raise LocaldiscError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def load_segmenter(folder: str | Path, device: str = "cpu") -> object:
    """The ``--segmenter``: a :class:`~localdisc.models.segmenter.Segmenter` that ``localdisc
    finetune`` wrote, refused where it is a ``shape-guided vessels`` network, which ``predict``
    runs over flips, at its own size, in the field of view (:mod:`localdisc.tasks.vessels`): the
    viewer's plain map of it would pass for predict's."""
    from localdisc.models.segmenter import Segmenter, read_config

    if "self_trained_vessels" in read_config(folder):
        raise LocaldiscError(
            f"{folder}: a `shape-guided vessels` network; --segmenter takes a folder written by "
            "`localdisc finetune` (`localdisc predict --model` segments with it)"
        )
    return Segmenter.from_pretrained(folder, device=device)


def serve(
    model: str | Path,
    images: Sequence[str | Path],
    *,
    segmenter: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    size: int | None = None,
    device: str = "cpu",
    log: Callable[[str], object] = print,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> None:
    """Load the model and images and serve the viewer until interrupted (Ctrl+C)."""
    from localdisc.models.ld import untrained_clusters
    from localdisc.tasks.predict import collect_images
    from localdisc.tasks.similarity import load_model

    check_port(port)  # before the model and images, which may take minutes to load
    check_cache_mb(cache_mb)
    files = collect_images(images, log=log)
    loaded = load_model(model, device=device)
    untrained = untrained_clusters(model)
    if untrained is not None:
        log(
            f"warning: {model}: {untrained[0]}, whose clustering head never trained: the "
            f"clusters shown are its random weights'; {untrained[1]}"
        )
    seg = load_segmenter(segmenter, device) if segmenter is not None else None
    viewer = Viewer(loaded, files, segmenter=seg, size=size, cache_mb=cache_mb)
    if not viewer.entries:
        found = [f"{viewer.error_paths[e['name']]}: {e['error']}" for e in viewer.errors[:3]]
        raise LocaldiscError("none of the images could be read: " + "; ".join(found))
    for error in viewer.errors:
        log(f"skipped {viewer.error_paths[error['name']]}: {error['error']}")
    for note in (
        *header_notes(viewer.metas, "points"),
        dim_note(viewer.peaks, "image(s)", "they are shown and embedded near black"),
    ):
        if note is not None:
            log(f"note: {note}")
    server = create_server(viewer, host, port, log=log)
    warming = viewer.warm_up()
    log(
        f"{len(viewer.entries)} image(s) at {viewer.size} px; open {server.login_url} (Ctrl+C "
        "to stop)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        server.server_close()  # stops the warm-up at its next image
        # Joined before the interpreter exits: a daemon thread inside torch then aborted it.
        warming.join()
