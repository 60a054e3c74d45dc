"""Simulated reference masks for shape-guided clustering (METHOD.md 5).

Vessels, lungs and heart come straight from :mod:`localdisc.data.synthetic`; the optic disc and
fovea are filled ellipses placed with the same eye geometry, so that ``simulate_mask("optic_disc",
size, s)`` sits where the vessels of ``simulate_mask("vessels", size, s)`` leave the disc.
"""

from __future__ import annotations

import numpy as np

from localdisc.data import synthetic
from localdisc.data.synthetic import heart_mask, lung_masks, vessel_tree

#: The shapes :func:`simulate_mask` can draw.
SIMULATORS: tuple[str, ...] = ("vessels", "lungs", "heart", "optic_disc", "fovea")

# Mixed into the seed of the ellipse jitter so it is independent of the eye geometry stream.
_JITTER_TAG = 0x5EED_0D15


def _check(name: str, size: int, seed: int) -> None:
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; known: {', '.join(SIMULATORS)}")
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"simulated mask size must be an integer >= 8, got {size!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"simulator seed must be a non-negative integer, got {seed!r}")


def _eye(size: int, seed: int) -> synthetic._Eye:
    """The eye geometry that ``vessel_tree(size, seed)`` grows its tree in (same stream)."""
    eye_rng = synthetic._streams(seed, 3)[0]
    return synthetic._sample_eye(size, eye_rng)


def _ellipse(
    size: int, centre: tuple[float, float], rx: float, ry: float, fov: synthetic._Eye
) -> np.ndarray:
    """Filled axis-aligned ellipse (pixel centres inside), clipped to the field of view.

    Never empty: at tiny sizes a sub-pixel ellipse still marks the pixel under its centre.
    """
    yy, xx = np.mgrid[:size, :size]
    mask = ((xx - centre[0]) / rx) ** 2 + ((yy - centre[1]) / ry) ** 2 <= 1.0
    mask &= synthetic._circle(size, fov.centre, fov.fov_radius)
    if not mask.any():
        x = int(np.clip(round(centre[0]), 0, size - 1))
        y = int(np.clip(round(centre[1]), 0, size - 1))
        mask[y, x] = True
    return mask


def _optic_disc(size: int, seed: int) -> np.ndarray:
    eye = _eye(size, seed)
    rng = np.random.default_rng([seed, _JITTER_TAG, 1])
    # A little larger or smaller than the rendered disc, and slightly taller than wide as in
    # real fundus photographs: 3-15 % (the synthetic renderer draws 3-12 %, this a little more).
    rx = eye.disc_radius * rng.uniform(0.9, 1.1)
    ry = rx * rng.uniform(1.03, 1.15)
    jitter = rng.normal(0.0, 0.1 * eye.disc_radius, 2)
    centre = (eye.disc[0] + jitter[0], eye.disc[1] + jitter[1])
    return _ellipse(size, centre, rx, ry, eye)


def _fovea(size: int, seed: int) -> np.ndarray:
    eye = _eye(size, seed)
    rng = np.random.default_rng([seed, _JITTER_TAG, 2])
    # The foveal avascular zone plus the darker macular centre: about 1-1.5 disc radii.
    rx = eye.disc_radius * rng.uniform(1.0, 1.5)
    ry = rx * rng.uniform(0.9, 1.1)
    jitter = rng.normal(0.0, 0.1 * eye.disc_radius, 2)
    centre = (eye.fovea[0] + jitter[0], eye.fovea[1] + jitter[1])
    return _ellipse(size, centre, rx, ry, eye)


def simulate_mask(name: str, size: int, seed: int) -> np.ndarray:
    """One simulated reference mask: ``bool`` ``size x size``, the same for the same seed.

    Names (:data:`SIMULATORS`): ``vessels`` (a retinal vessel tree grown from the optic disc in
    a circular field of view), ``lungs`` (both lung fields of a PA chest radiograph), ``heart``
    (the cardiac silhouette), ``optic_disc`` (a slightly tall ellipse on the nasal side of
    either eye) and ``fovea`` (a small ellipse ~2.5 disc diameters temporal of the disc).

    Raises:
        ValueError: unknown name, size below 8 or a negative seed.
    """
    _check(name, size, seed)
    size, seed = int(size), int(seed)
    if name == "vessels":
        mask = vessel_tree(size, seed)[0]
    elif name == "lungs":
        right, left = lung_masks(size, seed)
        mask = right | left
    elif name == "heart":
        mask = heart_mask(size, seed)
    elif name == "optic_disc":
        mask = _optic_disc(size, seed)
    else:
        mask = _fovea(size, seed)
    return np.ascontiguousarray(mask, dtype=bool)


def simulate_masks(name: str, size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` simulated masks, ``bool`` ``[count, size, size]``; mask ``i`` uses ``seed + i``.

    So a larger ``count`` extends a smaller one with the same seed rather than replacing it.
    """
    if isinstance(count, bool) or int(count) != count or count < 0:
        raise ValueError(f"mask count must be a non-negative integer, got {count!r}")
    _check(name, size, seed)
    out = np.zeros((int(count), int(size), int(size)), dtype=bool)
    for i in range(int(count)):
        out[i] = simulate_mask(name, size, int(seed) + i)
    return out
