"""A picture of shape priors: simulated masks next to real reference masks, drawn with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GAP = 4
_LABEL_WIDTH = 170
_BACKGROUND = (60, 60, 60)
_SIMULATED_INK = (255, 255, 255)
_REFERENCE_INK = (255, 190, 90)  # real masks in amber, so the two kinds tell apart at a glance


def _as_stack(name: str, masks: np.ndarray) -> np.ndarray:
    """[N, H, W] or [N, 1, H, W] (anything array-like, torch included) -> bool [N, H, W]."""
    arr = np.asarray(masks.cpu() if hasattr(masks, "cpu") else masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"prior {name!r}: expected masks [N, H, W], got shape {arr.shape}")
    return arr > 0.5 if arr.dtype != bool else arr


def _tile(mask: np.ndarray, tile: int, ink: tuple[int, int, int]) -> Image.Image:
    """A mask as a ``tile`` x ``tile`` RGB image, padded to square, ink on black.

    Box-filtered when shrunk, so one-pixel vessels turn grey rather than vanish.
    """
    h, w = mask.shape
    side = max(h, w)
    grey = np.zeros((side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    grey[top : top + h, left : left + w] = mask.astype(np.uint8) * 255
    im = Image.fromarray(grey, "L")
    if side != tile:
        im = im.resize((tile, tile), Image.Resampling.BOX if side > tile else Image.NEAREST)
    level = np.asarray(im, np.float32)[..., None] / 255.0
    return Image.fromarray((level * np.array(ink, np.float32)).astype(np.uint8), "RGB")


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def prior_gallery(
    priors: dict[str, np.ndarray],
    path: str | Path,
    *,
    references: dict[str, np.ndarray] | None = None,
    columns: int = 6,
) -> Path:
    """Write one PNG grid: a row per prior (its first ``columns`` masks), then a row per
    reference set of real masks (amber), each row labelled with its name.

    Tiles are the largest mask side, capped at 256 px. Returns the path written.
    """
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    rows = [(f"simulated: {k}", _as_stack(k, v), _SIMULATED_INK) for k, v in priors.items()]
    rows += [(f"real: {k}", _as_stack(k, v), _REFERENCE_INK) for k, v in (references or {}).items()]
    if not rows:
        raise ValueError("prior_gallery needs at least one prior or reference set")
    tile = min(256, max(max(stack.shape[1:]) for _, stack, _ in rows))
    width = _LABEL_WIDTH + columns * (tile + _GAP) + _GAP
    height = len(rows) * (tile + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    for r, (label, stack, ink) in enumerate(rows):
        y = _GAP + r * (tile + _GAP)
        # Wrap long labels on ':' so "real: DRIVE vessels" fits the label column.
        text = label.replace(": ", ":\n")
        draw.multiline_text((8, y + tile // 2 - 18), text, fill=ink, font=font, spacing=4)
        for c, mask in enumerate(stack[:columns]):
            canvas.paste(_tile(mask, tile, ink), (_LABEL_WIDTH + c * (tile + _GAP), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", optimize=True)
    return path
