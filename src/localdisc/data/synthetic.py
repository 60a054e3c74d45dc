"""Synthetic fundus photographs and chest radiographs with exact ground truth.

The demo pre-trains on these when no data set is present, the tests use them as images with known
structure, and the shape functions (:func:`vessel_tree`, :func:`lung_masks`, :func:`heart_mask`)
double as shape-prior simulators for segmentation without labels. Everything is seeded through
``np.random.default_rng`` and deterministic; a 256 x 256 image takes a fraction of a second.

Lengths are calibrated on DRIVE (565 px wide, field-of-view radius ~270 px) and JSRT/SCR and
scale with the requested image size.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

__all__ = [
    "SyntheticFundus",
    "SyntheticXray",
    "heart_mask",
    "lung_masks",
    "paint_vessels",
    "synthetic_fundus",
    "synthetic_xray",
    "vessel_tree",
]

RngLike = np.random.Generator | int | None

# DRIVE geometry that the fundus lengths below are expressed in ("DRIVE pixels").
_DRIVE_FOV_RADIUS = 270.0


def _check_size(size: int) -> int:
    if int(size) != size or size < 8:
        raise ValueError(f"synthetic image size must be an integer >= 8, got {size!r}")
    return int(size)


def _streams(rng_or_seed: RngLike, n: int) -> list[np.random.Generator]:
    """``n`` random streams: independent children of a seed, or the given generator n times.

    Separate streams keep, for one seed, the anatomy independent of how many draws the
    rendering makes (the disc and fovea of the image size too; the vessel tree, grown in
    pixels, is another at another size), and make the stand-alone shape functions return
    exactly the masks of the full image generated with the same seed.
    """
    if isinstance(rng_or_seed, np.random.Generator):
        return [rng_or_seed] * n
    return [np.random.default_rng(s) for s in np.random.SeedSequence(rng_or_seed).spawn(n)]


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``scale`` pixels.

    Generated on a coarse grid and upsampled so that large scales stay cheap.
    """
    step = max(1, int(scale / 4))
    coarse_shape = (shape[0] // step + 3, shape[1] // step + 3)
    coarse = ndi.gaussian_filter(rng.standard_normal(coarse_shape), scale / step, mode="wrap")
    field = ndi.zoom(coarse, step, order=1)[: shape[0], : shape[1]]
    field -= field.mean()
    return field / (field.std() + 1e-12)


# --------------------------------------------------------------------------------------------
# Rasterising tubes
# --------------------------------------------------------------------------------------------


def _resample(points: np.ndarray, radii: np.ndarray, spacing: float) -> tuple[np.ndarray, ...]:
    """Points along a polyline no further than ``spacing`` apart, radii interpolated."""
    if len(points) < 2:
        return points, radii
    seg = np.hypot(*np.diff(points, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(arc[-1] / spacing)) + 1)
    t = np.linspace(0.0, arc[-1], n)
    out = np.stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])], axis=1)
    return out, np.interp(t, arc, radii)


def _rasterise_tubes(
    polylines: list[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int],
    min_radius: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """Sweep discs along polylines: (diameter map, chord-length map), both 0 off the tubes.

    Each polyline is ``(points (n, 2) as x, y; radii (n,))``. Radii below ``min_radius`` are drawn
    at ``min_radius`` so that the thinnest tubes stay 8-connected one-pixel lines; their chord
    length is scaled down by ``r / min_radius`` so they render fainter, as sub-pixel vessels do.
    The chord length ``2 sqrt(r^2 - d^2)`` is the path length of light through a cylinder, which
    is what absorption (Beer-Lambert) shading needs.
    """
    h, w = shape
    diameter = np.zeros(h * w, np.float32)
    chord = np.zeros(h * w, np.float32)
    if not polylines:
        return diameter.reshape(shape), chord.reshape(shape)
    pts, rad = zip(*(_resample(p, r, 0.5) for p, r in polylines), strict=True)
    centres = np.concatenate(pts)
    radius = np.concatenate(rad)
    drawn = np.maximum(radius, min_radius)
    fade = radius / drawn
    half = np.ceil(drawn + 0.5).astype(int)
    base = np.rint(centres).astype(int)
    for k in np.unique(half):
        sel = half == k
        off = np.arange(-k, k + 1)
        ox, oy = np.meshgrid(off, off)
        px = base[sel, 0, None] + ox.ravel()[None]
        py = base[sel, 1, None] + oy.ravel()[None]
        d2 = (px - centres[sel, 0, None]) ** 2 + (py - centres[sel, 1, None]) ** 2
        r2 = drawn[sel, None] ** 2
        inside = (d2 <= r2) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        idx = (py * w + px)[inside]
        np.maximum.at(diameter, idx, np.broadcast_to(2 * radius[sel, None], d2.shape)[inside])
        c = 2 * np.sqrt(np.maximum(r2 - d2, 0.0)) * fade[sel, None]
        np.maximum.at(chord, idx, c[inside].astype(np.float32))
    return diameter.reshape(shape), chord.reshape(shape)


# --------------------------------------------------------------------------------------------
# Retinal vessel tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Eye:
    """Where things are in one synthetic fundus, in pixels (x, y)."""

    size: int
    centre: tuple[float, float]
    fov_radius: float
    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]

    @property
    def unit(self) -> float:
        """Pixels per DRIVE pixel."""
        return self.fov_radius / _DRIVE_FOV_RADIUS


def _sample_eye(size: int, rng: np.random.Generator) -> _Eye:
    centre = ((size - 1) / 2, (size - 1) / 2)
    fov_radius = size * rng.uniform(0.455, 0.485)
    # Disc about 1/7.5 of the FOV diameter; left or right eye decides its side.
    disc_radius = fov_radius * rng.uniform(0.125, 0.145)
    side = 1.0 if rng.random() < 0.5 else -1.0
    disc = (
        centre[0] + side * fov_radius * rng.uniform(0.55, 0.7),
        centre[1] + fov_radius * rng.uniform(-0.12, 0.08),
    )
    # Fovea ~2.5 disc diameters temporal of the disc and slightly below it.
    dist = 5.0 * disc_radius * rng.uniform(0.92, 1.08)
    tilt = math.radians(rng.uniform(-2.0, 10.0))
    fovea = (disc[0] - side * dist * math.cos(tilt), disc[1] + dist * math.sin(tilt))
    return _Eye(size, centre, fov_radius, disc, disc_radius, fovea)


@dataclass
class _Vessel:
    points: np.ndarray  # (n, 2) x, y
    radii: np.ndarray  # (n,)
    artery: bool
    ident: int  # the walker that grew it
    parent: int  # the vessel it branched from, -1 for a trunk
    sprout: bool = False  # a side branch sent into a gap after the main growth


@dataclass(order=True)
class _Walker:
    priority: float
    order: int
    x: float = 0.0
    y: float = 0.0
    heading: float = 0.0
    radius: float = 0.0
    artery: bool = False
    parent: int = -1
    sibling: int = -1
    sprout: bool = False
    spiral: float = 0.0
    main: bool = False  # on the trunk's path (always the thicker daughter)
    stop_near_fovea: float = 0.0


class _VesselGrower:
    """Grows arteries and veins from the optic disc as steered random walks that bifurcate.

    Big vessels follow a guidance field: radial from the disc, bent around the fovea (so the
    temporal arcades arch over and under the macula and meet at the horizontal raphe) and pushed
    away from it. Small vessels follow it loosely and fill free space: a coarse occupancy grid
    steers them away from vessels already grown and stops them when they would run into one.
    Largest vessels grow first, so the small ones fill what is left; :meth:`fill_gaps` then sends
    branches into any hole still left.
    """

    def __init__(self, eye: _Eye, rng: np.random.Generator) -> None:
        self.eye = eye
        self.rng = rng
        u = eye.unit
        self.u = u
        self.step = max(0.7, 1.6 * u)
        self.min_radius = max(0.55 * u, 0.3)  # thinner twigs would still draw 1 px wide
        self.cross_radius = 2.6 * u  # vessels at least this thick may cross others
        self.cell = 8.0 * u
        n = int(math.ceil(eye.size / self.cell)) + 2
        self.grid = np.full((n, n), -1, np.int32)  # id of the walker that last passed
        self.thick = np.zeros((n, n), bool)  # a thick vessel passed: thin ones cross it
        # Last centreline point, radius and kind per cell: where gap-filling branches start.
        self.where = np.zeros((n, n, 3), np.float32)
        self.kind = np.zeros((n, n), bool)
        self.dx = eye.fovea[0] - eye.disc[0]
        self.dy = eye.fovea[1] - eye.disc[1]
        self.df = math.hypot(self.dx, self.dy)
        self.ux, self.uy = self.dx / self.df, self.dy / self.df
        self.normals = rng.standard_normal(100_000)  # drawn in bulk: per-step calls are slow
        self.k = 0
        self.counter = 0
        self.heap: list[_Walker] = []
        self.vessels: list[_Vessel] = []

    def _normal(self) -> float:
        self.k = (self.k + 1) % len(self.normals)
        return float(self.normals[self.k])

    def _field(self, x: float, y: float, spiral: float = 0.0) -> float:
        """Preferred heading at (x, y); ``spiral`` > 0 bends outwards from the macula, < 0 in."""
        e = self.eye
        rx, ry = x - e.disc[0], y - e.disc[1]
        rd = math.hypot(rx, ry) + 1e-9
        # Temporal arcades circle a point just nasal of the fovea, passing through the disc.
        mx, my = rx - 0.85 * self.dx, ry - 0.85 * self.dy
        md = math.hypot(mx, my) + 1e-9
        tx, ty = -my / md, mx / md
        if tx * self.ux + ty * self.uy < 0:  # orient the tangent temporally
            tx, ty = -tx, -ty
        # Slow outward spiral, faster in the periphery, and a push away from the fovea itself.
        fd = math.hypot(x - e.fovea[0], y - e.fovea[1]) + 1e-9
        along = (rx * self.ux + ry * self.uy) / self.df
        out = (
            spiral
            + 0.5 * max(0.0, md / self.df - 1.25)
            + 0.5 * min((0.45 * self.df / fd) ** 4, 4.0)
        )
        out += 0.8 * min(max(along - 0.8, 0.0), 1.0)  # past the fovea, fan out temporally
        # Nasal of the disc (more than ~110 degrees away from the fovea direction): radial.
        temporal = min(max((along * self.df / rd + 0.55) / 0.4, 0.0), 1.0)
        vx = (1 - temporal) * rx / rd + temporal * (tx + out * mx / md)
        vy = (1 - temporal) * ry / rd + temporal * (ty + out * my / md)
        return math.atan2(vy, vx)

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        return int(y / self.cell) + 1, int(x / self.cell) + 1

    def _occupant(self, x: float, y: float) -> tuple[int, bool]:
        gy, gx = self._cell(x, y)
        if 0 <= gy < self.grid.shape[0] and 0 <= gx < self.grid.shape[1]:
            return int(self.grid[gy, gx]), bool(self.thick[gy, gx])
        return -1, False

    def push(self, x: float, y: float, heading: float, radius: float, artery: bool, **kw) -> None:
        self.counter += 1
        stop = self.eye.disc_radius * self.rng.uniform(0.8, 1.3)
        heapq.heappush(
            self.heap,
            _Walker(
                -radius, self.counter, x, y, heading, radius, artery, stop_near_fovea=stop, **kw
            ),
        )

    def grow(self) -> list[_Vessel]:
        while self.heap:
            self._grow_one(heapq.heappop(self.heap))
        return self.vessels

    def fill_gaps(self, gap: float = 24.0, max_sprouts: int = 80) -> list[_Vessel]:
        """Send thin side branches into regions further than ``gap`` DRIVE pixels from vessels.

        Real retinas are perfused everywhere but the fovea; a tree grown by local rules alone
        leaves holes, so the largest hole repeatedly gets a branch from its nearest vessel.
        """
        e, cell = self.eye, self.cell
        n = self.grid.shape[0]
        # In small images capillaries would be drawn too wide to pack as densely.
        gap_cells = max(gap * self.u, 8.0) / cell
        cy, cx = (np.mgrid[:n, :n] - 0.5) * cell  # cell centres in pixels
        allowed = (np.hypot(cx - e.centre[0], cy - e.centre[1]) < e.fov_radius - cell) & (
            np.hypot(cx - e.fovea[0], cy - e.fovea[1]) > 1.5 * e.disc_radius
        )
        for _ in range(max_sprouts):
            dist, (iy, ix) = ndi.distance_transform_edt(self.grid < 0, return_indices=True)
            dist[~allowed] = 0.0
            target = np.unravel_index(int(np.argmax(dist)), dist.shape)
            if dist[target] < gap_cells:
                break
            allowed[
                max(0, target[0] - 1) : target[0] + 2, max(0, target[1] - 1) : target[1] + 2
            ] = False  # try each hole once
            source = iy[target], ix[target]
            x0, y0, r0 = (float(v) for v in self.where[source])
            # Thin, but not so thin that it stops at once (Murray's law is not kept here).
            radius = max(min(0.75 * r0, 1.5 * self.u), 1.3 * self.min_radius)
            heading = math.atan2(cy[target] - y0, cx[target] - x0)
            self.push(
                x0,
                y0,
                heading,
                radius,
                bool(self.kind[source]),
                parent=int(self.grid[source]),
                sprout=True,
            )
            self.grow()
        return self.vessels

    def _grow_one(self, w: _Walker) -> None:
        e, u, ds = self.eye, self.u, self.step
        my_id = w.order
        x, y, theta, r = w.x, w.y, w.heading, w.radius
        xs, ys, rs = [x], [y], [r]
        if w.parent < 0:  # trunks all leave from the disc centre: one connected tree
            xs, ys, rs = [e.disc[0], x], [e.disc[1], y], [r, r]
        big = r >= self.cross_radius
        # Path length to the next bifurcation grows with calibre (longer trunks between branches).
        length = u * (18.0 + r / u * self.rng.uniform(4.0, 9.0))
        # Guidance: large vessels follow the global pattern, capillaries wander.
        rel = min(1.0, r / (4.0 * u))
        pull = (0.01 + 0.07 * rel**1.5) / u if w.main else 0.012 / u
        sigma = (0.012 - 0.007 * rel) / math.sqrt(u)
        kappa = 0.0
        travelled = 0.0
        grace = 2.0 * self.cell
        bifurcate = False
        while True:
            target = self._field(x, y, w.spiral)
            dtheta = (target - theta + math.pi) % (2 * math.pi) - math.pi
            avoid = 0.0
            if travelled > 0.5 * self.cell:
                look = 2.2 * self.cell
                own = (my_id, w.parent, w.sibling) if travelled < grace else (my_id,)
                left, _ = self._occupant(
                    x + look * math.cos(theta - 0.6), y + look * math.sin(theta - 0.6)
                )
                right, _ = self._occupant(
                    x + look * math.cos(theta + 0.6), y + look * math.sin(theta + 0.6)
                )
                occ_l = left >= 0 and left not in own
                occ_r = right >= 0 and right not in own
                # Thick vessels may cross others but still avoid running alongside them.
                avoid = (0.03 if big else 0.08) / u * (occ_l - occ_r)
                # Thin vessels stop where they would run into another thin one; real capillary
                # beds do not overlap, while thin vessels do cross the big ones.
                ahead, thick = self._occupant(
                    x + look * math.cos(theta), y + look * math.sin(theta)
                )
                if ahead >= 0 and ahead not in own and not thick and not big and r < 1.6 * u:
                    break
            kappa += -kappa * ds / (25.0 * u) + sigma * math.sqrt(ds) * self._normal()
            theta += (kappa + pull * dtheta + avoid) * ds
            nx, ny = x + ds * math.cos(theta), y + ds * math.sin(theta)
            # End at the aperture: a vessel that left and came back would be cut in two.
            if math.hypot(nx - e.centre[0], ny - e.centre[1]) > e.fov_radius - 0.5:
                xs.append(nx)
                ys.append(ny)
                rs.append(r)
                break
            x, y = nx, ny
            r *= math.exp(-ds / (900.0 * u))
            travelled += ds
            xs.append(x)
            ys.append(y)
            rs.append(r)
            gy, gx = self._cell(x, y)
            if 0 <= gy < self.grid.shape[0] and 0 <= gx < self.grid.shape[1]:
                self.grid[gy, gx] = my_id
                self.thick[gy, gx] |= big
                self.where[gy, gx] = (x, y, r)
                self.kind[gy, gx] = w.artery
            if not big and math.hypot(x - e.fovea[0], y - e.fovea[1]) < w.stop_near_fovea:
                break
            if travelled >= length:
                bifurcate = True
                break
        self.vessels.append(
            _Vessel(np.stack([xs, ys], axis=1), np.asarray(rs), w.artery, my_id, w.parent, w.sprout)
        )
        if bifurcate:
            self._bifurcate(x, y, theta, r, w.artery, my_id, w.main)

    def _bifurcate(
        self, x: float, y: float, theta: float, r0: float, artery: bool, pid: int, main: bool
    ) -> None:
        rng = self.rng
        # Side branches off big vessels are thin; small vessels split more evenly.
        alpha = rng.uniform(0.25, 0.6) if r0 > 2.0 * self.u else rng.uniform(0.4, 0.9)
        r1 = r0 / (1.0 + alpha**3) ** (1.0 / 3.0)  # Murray's law: r0^3 = r1^3 + r2^3
        r2 = alpha * r1
        # Angles that minimise pumping + volume cost for Murray radii.
        c1 = (r0**4 + r1**4 - r2**4) / (2 * r0**2 * r1**2)
        c2 = (r0**4 + r2**4 - r1**4) / (2 * r0**2 * r2**2)
        a1 = math.acos(min(max(c1, -1.0), 1.0)) + math.radians(rng.normal(0, 4))
        a2 = math.acos(min(max(c2, -1.0), 1.0)) + math.radians(rng.normal(0, 6))
        # Send the thinner daughter to the emptier side.
        probe = 2.5 * self.cell
        occ_plus, _ = self._occupant(
            x + probe * math.cos(theta + a2), y + probe * math.sin(theta + a2)
        )
        occ_minus, _ = self._occupant(
            x + probe * math.cos(theta - a2), y + probe * math.sin(theta - a2)
        )
        side = 1.0 if rng.random() < 0.5 else -1.0
        if (occ_plus >= 0) != (occ_minus >= 0):
            side = -1.0 if occ_plus >= 0 else 1.0
        first, second = self.counter + 1, self.counter + 2
        # Branches bend away from their parent: outer ones towards the periphery, inner ones
        # into the macula (where they stop); the thinner the branch, the stronger the bend.
        mx = x - self.eye.disc[0] - 0.85 * self.dx
        my = y - self.eye.disc[1] - 0.85 * self.dy
        daughters = ((theta - side * a1, r1, second, main), (theta + side * a2, r2, first, False))
        for heading, radius, sib, is_main in daughters:
            if radius < self.min_radius:
                continue
            outward = math.cos(heading) * mx + math.sin(heading) * my >= 0
            bend = 1.0 - min(1.0, radius / (4.0 * self.u))
            spiral = 0.9 * bend if outward else -1.0 * bend
            self.push(
                x, y, heading, radius, artery, parent=pid, sibling=sib, spiral=spiral, main=is_main
            )


def _plant_trunks(grower: _VesselGrower, eye: _Eye, rng: np.random.Generator) -> None:
    """Central retinal artery and vein branches leaving the disc, per quadrant."""
    u = eye.unit
    base = math.atan2(grower.uy, grower.ux)  # temporal direction
    vein = 4.6 * u * rng.uniform(0.9, 1.1)
    artery = vein * rng.uniform(0.7, 0.8)
    for s in (-1.0, 1.0):  # superior / inferior
        specs = [
            (rng.uniform(70, 90), vein, False),  # temporal arcade vein
            (rng.uniform(60, 85), artery, True),  # temporal arcade artery
            (rng.uniform(110, 140), 0.75 * vein, False),  # nasal vein
            (rng.uniform(115, 150), 0.75 * artery, True),  # nasal artery
            (rng.uniform(15, 35), 0.35 * vein, rng.random() < 0.5),  # small macular branches
            (rng.uniform(5, 20), 0.25 * vein, rng.random() < 0.5),
        ]
        for angle, radius, is_artery in specs:
            heading = base + s * math.radians(angle)
            start = eye.disc_radius * rng.uniform(0.05, 0.3)
            ox = eye.disc[0] + start * math.cos(heading)
            oy = eye.disc[1] + start * math.sin(heading)
            # Each trunk keeps its own arc radius so artery and vein do not merge into one path.
            grower.push(
                ox, oy, heading, radius, is_artery, spiral=rng.uniform(-0.1, 0.06), main=True
            )


def _grow_tree(eye: _Eye, rng: np.random.Generator) -> list[_Vessel]:
    grower = _VesselGrower(eye, rng)
    _plant_trunks(grower, eye, rng)
    grower.grow()
    return grower.fill_gaps()


def _circle(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def vessel_tree(
    size: int,
    rng_or_seed: RngLike = None,
    *,
    optic_disc: tuple[float, float] | None = None,
    fovea: tuple[float, float] | None = None,
    fov_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A retinal vessel tree grown from the optic disc inside a circular field of view.

    Args:
        size: output height and width in pixels.
        rng_or_seed: a ``np.random.Generator`` or a seed.
        optic_disc: disc centre (x, y) in pixels; random (left or right eye) when omitted.
        fovea: fovea centre (x, y); ~2.5 disc diameters temporal of the disc when omitted.
        fov_radius: radius of the circular field of view centred in the image.

    Returns:
        ``(vessels, calibre)``: a bool H x W vessel mask (inside the field of view) and a float32
        H x W map of the vessel diameter in pixels at each vessel pixel, 0 elsewhere.
    """
    size = _check_size(size)
    eye_rng, tree_rng, _ = _streams(rng_or_seed, 3)
    eye = _resolve_eye(size, eye_rng, optic_disc, fovea, fov_radius)
    mask, diameter, _, _ = _render_tree(eye, _grow_tree(eye, tree_rng))
    return mask, diameter


def _resolve_eye(
    size: int,
    rng: np.random.Generator,
    optic_disc: tuple[float, float] | None,
    fovea: tuple[float, float] | None,
    fov_radius: float | None,
) -> _Eye:
    eye = _sample_eye(size, rng)
    radius = eye.fov_radius if fov_radius is None else float(fov_radius)
    scale = radius / eye.fov_radius
    if optic_disc is None:  # as far out in this FOV as in the sampled one: at a small radius
        # the sampled place lay outside the FOV, and the painted tree was empty
        cx, cy = eye.centre
        disc = (cx + (eye.disc[0] - cx) * scale, cy + (eye.disc[1] - cy) * scale)
    else:
        disc = (float(optic_disc[0]), float(optic_disc[1]))
    disc_radius = eye.disc_radius * scale
    if fovea is None:
        # Keep the sampled disc-to-fovea offset but point it towards the image centre side.
        off = (eye.fovea[0] - eye.disc[0], eye.fovea[1] - eye.disc[1])
        side = 1.0 if disc[0] <= eye.centre[0] else -1.0
        fov = (disc[0] + side * abs(off[0]) * scale, disc[1] + off[1] * scale)
    else:
        fov = (float(fovea[0]), float(fovea[1]))
    return _Eye(size, eye.centre, radius, disc, disc_radius, fov)


def _render_tree(
    eye: _Eye, vessels: list[_Vessel]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mask, diameter, artery chord length, vein chord length), clipped to the FOV."""
    shape = (eye.size, eye.size)
    fov = _circle(eye.size, eye.centre, eye.fov_radius)
    arteries = [(v.points, v.radii) for v in vessels if v.artery]
    veins = [(v.points, v.radii) for v in vessels if not v.artery]
    diam_a, chord_a = _rasterise_tubes(arteries, shape)
    diam_v, chord_v = _rasterise_tubes(veins, shape)
    diameter = np.maximum(diam_a, diam_v) * fov
    mask = diameter > 0
    return mask, diameter.astype(np.float32), chord_a * fov, chord_v * fov


# --------------------------------------------------------------------------------------------
# Fundus photograph
# --------------------------------------------------------------------------------------------


@dataclass
class SyntheticFundus:
    """A synthetic colour fundus photograph and its ground truth."""

    image: np.ndarray  # float32 H x W x 3 in [0, 1], RGB, black outside the field of view
    vessels: np.ndarray  # bool H x W
    fov: np.ndarray  # bool H x W, circular field of view
    optic_disc: tuple[float, float]  # (x, y) pixel centre
    fovea: tuple[float, float]  # (x, y)
    disc_radius: float  # pixels: the disc's horizontal semi-axis
    disc_height: float | None = None  # vertical semi-axis in pixels; None: ``disc_radius``

    @property
    def disc(self) -> np.ndarray:
        """The optic disc as a bool H x W mask: the ellipse the image draws it as, semi-axes
        ``disc_radius`` (horizontal) and ``disc_height`` (vertical) at ``optic_disc``."""
        h, w = self.fov.shape
        yy, xx = np.mgrid[:h, :w]
        x, y = self.optic_disc
        height = self.disc_radius if self.disc_height is None else self.disc_height
        return np.hypot((xx - x) / self.disc_radius, (yy - y) / height) <= 1.0


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 across ``x = 0`` over about ``width``; a smooth edge for anatomy."""
    return 0.5 * (1.0 + np.tanh(x / max(width, 1e-6)))


def _transmission(
    chord_a: np.ndarray, chord_v: np.ndarray, unit: float, strength: float
) -> np.ndarray:
    """H x W x 3 share of light that passes the vessels: Beer-Lambert absorption along the chord
    through each (in DRIVE pixels), sublinear so that capillaries, blurred by the optics, stay
    visible as in real photographs; most in green, arteries paler than veins."""
    mu_v = np.array([0.03, 0.14, 0.1], np.float32) * strength
    mu_a = mu_v * np.array([0.4, 0.55, 0.6], np.float32)
    path_v = np.sqrt(chord_v / unit)[..., None]
    path_a = np.sqrt(chord_a / unit)[..., None]
    return np.exp(-mu_v * path_v - mu_a * path_a)


def paint_vessels(
    image: np.ndarray, fov: np.ndarray, rng_or_seed: RngLike = None, *, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A simulated vessel tree (:func:`vessel_tree`) painted onto a real fundus photograph.

    The tree fills a circle of the FOV's area at the FOV's centroid and darkens ``image`` (RGB in
    [0, 1]) as the vessels of :func:`synthetic_fundus` darken theirs (absorption along each
    vessel's chord, ``strength`` times the simulator's, blurred by the optics): vessels of every
    calibre, each with its exact mask, on a real background. The real vessels stay as they were.

    Returns:
        ``(painted, vessels)``: the painted image (float32, the input's shape) and the painted
        tree's bool mask inside ``fov``.
    """
    fov = np.asarray(fov, bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != fov.shape:
        raise ValueError(
            f"need an H x W x 3 image and an H x W FOV, got {image.shape} and {fov.shape}"
        )
    if not fov.any():
        raise ValueError("the FOV is empty: nothing to paint on")
    h, w = fov.shape
    size = max(h, w)
    cy, cx = ndi.center_of_mass(fov)
    radius = math.sqrt(fov.sum() / math.pi)
    eye_rng, tree_rng = _streams(rng_or_seed, 2)
    eye = _resolve_eye(size, eye_rng, None, None, radius)
    mask, _, chord_a, chord_v = _render_tree(eye, _grow_tree(eye, tree_rng))
    # The tree's FOV is centred in a size x size square: move it onto the image's FOV.
    shift = (round(cy - eye.centre[1]), round(cx - eye.centre[0]))
    maps = np.stack([mask.astype(np.float32), chord_a, chord_v])
    maps = np.roll(maps, shift, axis=(1, 2))[:, :h, :w]
    light = _transmission(maps[1], maps[2], eye.unit, strength)
    sigma = max(0.5, 0.6 * eye.unit)
    light = ndi.gaussian_filter(light, (sigma, sigma, 0))
    painted = np.clip(image * np.where(fov[..., None], light, 1.0), 0.0, 1.0)
    return painted.astype(np.float32), (maps[0] > 0.5) & fov


def synthetic_fundus(size: int = 256, seed: int = 0) -> SyntheticFundus:
    """A colour fundus photograph with known vessels, disc, fovea and field of view.

    Orange-red fundus with vignetting and uneven illumination, a yellowish optic disc with a
    paler cup, a darker macula ~2.5 disc diameters temporal of the disc, and vessels shaded by
    light absorption along their diameter: darker and redder than the background, contrast mainly
    in the green channel, veins darker and wider than arteries. The seed also picks the eye.
    """
    size = _check_size(size)
    eye_rng, tree_rng, rng = _streams(seed, 3)
    eye = _sample_eye(size, eye_rng)
    vessels, _, chord_a, chord_v = _render_tree(eye, _grow_tree(eye, tree_rng))
    u = eye.unit
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    rho = np.hypot(xx - eye.centre[0], yy - eye.centre[1]) / eye.fov_radius
    fov = _circle(size, eye.centre, eye.fov_radius)

    # Background reflectance: orange-red, colour and brightness vary between people.
    red = rng.uniform(0.72, 0.92)
    green = red * rng.uniform(0.45, 0.65)
    blue = green * rng.uniform(0.5, 0.7)
    colour = np.array([red, green, blue], np.float32)
    shade = 1.0 + 0.07 * _smooth_noise((size, size), size / 5, rng)  # uneven illumination
    shade *= 1.0 - rng.uniform(0.25, 0.45) * np.minimum(rho, 1.0) ** rng.uniform(2.5, 4.0)
    # Choroidal mottle, stronger in red where the choroid shows through.
    mottle = _smooth_noise((size, size), max(1.0, 2.5 * u), rng)
    image = colour * shade[..., None] * (1.0 + np.array([0.025, 0.015, 0.015]) * mottle[..., None])

    # Macula: pigment absorbs most in blue and green.
    d_fovea = np.hypot(xx - eye.fovea[0], yy - eye.fovea[1]) / eye.disc_radius
    macula = np.exp(-0.5 * (d_fovea / 1.3) ** 2)
    depth = rng.uniform(0.2, 0.35)
    image *= 1.0 - depth * np.array([0.5, 1.0, 1.0]) * macula[..., None]
    image *= 1.0 - 0.1 * np.exp(-0.5 * (d_fovea / 0.25) ** 2)[..., None]

    # Optic disc: slightly tall ellipse, yellowish rim, pale cup off-centre temporally.
    ex = (xx - eye.disc[0]) / eye.disc_radius
    disc_height = eye.disc_radius * rng.uniform(1.03, 1.12)  # kept: the mask must be as tall
    ey = (yy - eye.disc[1]) / disc_height
    disc = _soft_step(1.0 - np.hypot(ex, ey), 0.08)
    towards_fovea = np.sign(eye.fovea[0] - eye.disc[0])
    cup_r = rng.uniform(0.3, 0.5)
    cup = _soft_step(cup_r - np.hypot(ex - 0.15 * towards_fovea, ey), 0.12)
    rim = np.array([1.0, rng.uniform(0.7, 0.88), rng.uniform(0.4, 0.55)], np.float32)
    rim = rim * min(1.0, red / 0.8) * shade[..., None] ** 0.3
    image = image * (1 - 0.92 * disc[..., None]) + 0.92 * rim * disc[..., None]
    cup_colour = np.array([1.0, 0.95, 0.75], np.float32)
    image = image * (1 - 0.7 * cup[..., None]) + 0.7 * cup_colour * cup[..., None]

    # Vessels: light absorbed along each chord.
    image *= _transmission(chord_a, chord_v, u, rng.uniform(0.85, 1.15))
    # Central light reflex on thick arteries.
    reflex = np.clip(chord_a / (6.0 * u), 0.0, 1.0) ** 8
    image += 0.05 * reflex[..., None]

    # Optics and sensor: slight blur, noise, black outside the aperture.
    sigma = max(0.5, 0.6 * u)
    image = ndi.gaussian_filter(image, (sigma, sigma, 0))
    image += rng.normal(0.0, 0.008, image.shape)
    image = np.clip(image, 0.0, 1.0) * fov[..., None]
    return SyntheticFundus(
        image=image.astype(np.float32),
        vessels=vessels & fov,
        fov=fov,
        optic_disc=(float(eye.disc[0]), float(eye.disc[1])),
        fovea=(float(eye.fovea[0]), float(eye.fovea[1])),
        disc_radius=float(eye.disc_radius),
        disc_height=float(disc_height),
    )


# --------------------------------------------------------------------------------------------
# Chest radiograph
# --------------------------------------------------------------------------------------------


def _catmull_rom(p0, p1, p2, p3, n: int) -> np.ndarray:
    """Centripetal Catmull-Rom segment from ``p1`` to ``p2`` (no overshoot, no cusps)."""

    def knot(t: float, a: np.ndarray, b: np.ndarray) -> float:
        return t + max(float(np.hypot(*(b - a))) ** 0.5, 1e-6)

    t0 = 0.0
    t1 = knot(t0, p0, p1)
    t2 = knot(t1, p1, p2)
    t3 = knot(t2, p2, p3)
    t = np.linspace(t1, t2, n, endpoint=False)[:, None]
    a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
    a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
    a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
    b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
    b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
    return (t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2


def _closed_curve(points: np.ndarray, corners: tuple[int, ...] = (), n: int = 16) -> np.ndarray:
    """Smooth closed curve through ``points`` (k, 2), with sharp angles at ``corners``.

    At a corner the neighbouring control point is mirrored through it, so the curve arrives and
    leaves along straight chords (a costophrenic angle, not a rounded one).
    """
    k = len(points)
    out = []
    for i in range(k):
        p0, p1, p2, p3 = (points[(i + j) % k] for j in (-1, 0, 1, 2))
        if i in corners:
            p0 = 2 * p1 - p2
        if (i + 1) % k in corners:
            p3 = 2 * p2 - p1
        out.append(_catmull_rom(p0, p1, p2, p3, n))
    return np.concatenate(out)


def _fill(outline: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a closed outline in unit coordinates (x, y in [0, 1]) to a bool mask."""
    canvas = Image.new("1", (size, size), 0)
    # PIL's polygon fill is an order of magnitude faster than skimage.draw for long outlines.
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline * size - 0.5], fill=1)
    return np.asarray(canvas, dtype=bool)


def _band(polylines: list[np.ndarray], shape: tuple[int, int], radius: float) -> np.ndarray:
    """Cylinder profile ``sqrt(1 - (d / radius)^2)`` around polylines (pixels), 0 beyond.

    For many wide tubes of one radius a distance transform is cheaper than sweeping discs.
    """
    centre = np.ones(shape, bool)
    for line in polylines:
        pts, _ = _resample(line, np.zeros(len(line)), 0.5)
        ij = np.rint(pts[:, ::-1]).astype(int)
        keep = (ij >= 0).all(axis=1) & (ij[:, 0] < shape[0]) & (ij[:, 1] < shape[1])
        centre[ij[keep, 0], ij[keep, 1]] = False
    dist = ndi.distance_transform_edt(centre)
    return np.sqrt(np.clip(1.0 - (dist / radius) ** 2, 0.0, 1.0)).astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


@dataclass(frozen=True)
class _Chest:
    """Outlines of one synthetic thorax in unit coordinates (x right, y down, [0, 1])."""

    right_lung: np.ndarray  # raw lung outline, patient's right (image left), closed at midline
    left_lung: np.ndarray
    heart: np.ndarray
    mediastinum: np.ndarray  # central soft-tissue column from the neck down to the diaphragm
    body: np.ndarray
    midline: float
    apex: float
    domes: tuple[float, float]  # right, left hemidiaphragm tops
    widths: tuple[float, float]  # right, left hemithorax widths from the midline
    hila: tuple[tuple[float, float], tuple[float, float]]


def _sample_chest(
    rng: np.random.Generator,
    cardiothoracic_ratio: float | None = None,
    shape_rng: np.random.Generator | None = None,
) -> _Chest:
    """One thorax from ``rng``; the lungs' apices, domes and costophrenic angles vary further
    with ``shape_rng`` (its own stream, so that the heart, mediastinum and body, drawn from
    ``rng`` after the lungs, stay the same for a seed when the lungs' shapes change)."""
    shape_rng = rng if shape_rng is None else shape_rng
    # The ranges (and the lungs' taper below) give the organs the place, size and area they
    # have in SCR's training fold, mean and spread (benchmarks/prior_gallery.py): both lungs
    # span 0.80 of the width and 0.78 of the height from 0.07 below the top, the heart
    # 0.38 x 0.32 with its foot at 0.76, its height following the lungs' and not its width.
    cx = 0.5 + rng.normal(0.0, 0.01)
    w_r = rng.uniform(0.36, 0.48)
    w_l = w_r * rng.uniform(0.97, 1.05)
    apex = rng.uniform(0.037, 0.127)
    dome_r = rng.uniform(0.6, 0.8)
    dome_l = dome_r + rng.uniform(-0.01, 0.03)  # the left hemidiaphragm usually sits lower
    hilum_y = apex + rng.uniform(0.26, 0.32)
    floor = 0.5 * (dome_r + dome_l) + rng.uniform(0.03, 0.06)  # where the heart meets the diaphragm

    def lung(side: float, w: float, dome: float) -> np.ndarray:
        # Lateral wall, costophrenic angle and dome; the medial side is closed at the midline
        # and cut back later by the mediastinum and heart.
        cp = dome + rng.uniform(0.01, 0.15)
        pts = [
            (0.45 * w, apex),
            (0.75 * w, apex + rng.uniform(0.04, 0.07)),
            (0.92 * w, apex + rng.uniform(0.17, 0.22)),
            (1.00 * w, apex + rng.uniform(0.36, 0.44)),
            (rng.uniform(0.97, 1.01) * w, cp - rng.uniform(0.1, 0.14)),
            (rng.uniform(0.9, 0.96) * w, cp),  # costophrenic angle
            (0.70 * w, dome + rng.uniform(0.03, 0.05)),
            (0.42 * w, dome),  # top of the dome
            (0.05, min(dome, floor) + rng.uniform(-0.02, 0.0)),  # cardiophrenic angle
            (0.0, min(dome, floor) - 0.04),
            (0.0, apex + 0.1),
            (0.2 * w, apex + 0.02),
        ]
        pts = np.array(pts) + rng.normal(0.0, 0.006, (len(pts), 2))
        # As on SCR's masks beside these (judged by eye, the prior gallery): the apex narrower
        # than the base, the lateral wall sloping out all the way down, the dome's top nearer
        # the midline and the diaphragm falling obliquely to a deeper costophrenic angle.
        # Domes higher or lower than the heart's floor, too.
        taper, medial, fall, deeper, rise = shape_rng.uniform(
            [0.6, 0.6, 0.0, 0.0, -0.02], [0.9, 1.0, 0.05, 0.08, 0.05]
        )
        pts[5:7, 1] += [deeper, fall + 0.5 * deeper]
        pts[6:9, 1] -= rise
        pts[7, 0] *= medial
        height = np.clip((pts[5, 1] - pts[:, 1]) / (pts[5, 1] - apex), 0.0, 1.0)
        pts[:, 0] *= 1.0 - (1.0 - taper) * height
        pts[:, 0] = cx + side * pts[:, 0]
        return _closed_curve(pts, corners=(5,))

    right_lung = lung(-1.0, w_r, dome_r)
    left_lung = lung(1.0, w_l, dome_l)

    # Heart: a tilted egg (apex down and to the patient's left), its base flattened by the
    # diaphragm; its width set by the cardiothoracic ratio, its height by the thorax's.
    if cardiothoracic_ratio is None:
        # The heart is wider in a wider chest, but by less: the ratio falls as the chest widens.
        ctr = rng.uniform(0.37, 0.54) * math.sqrt(0.84 / (w_r + w_l))
    else:
        ctr = float(cardiothoracic_ratio)
    width = ctr * (w_r + w_l)
    tilt = math.radians(rng.uniform(30.0, 45.0))
    ratio = rng.uniform(0.8, 0.92)
    a = 0.5 * width  # the outline's scale: its width and height are set once it is drawn
    b = ratio * a
    hx = cx + (0.5 - rng.uniform(0.23, 0.45)) * width
    half_height = math.sqrt((a * math.sin(tilt)) ** 2 + (b * math.cos(tilt)) ** 2)
    hy = floor - rng.uniform(0.68, 0.82) * half_height
    phi = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    # Egg-shaped (broader towards the apex) and slightly irregular.
    wobble = 1.0 + 0.03 * np.cos(2 * phi + rng.uniform(0, 2 * np.pi))
    ex = a * np.cos(phi) * wobble
    ey = b * np.sin(phi) * wobble * (1.0 + 0.12 * np.cos(phi))
    heart = np.stack(
        [
            hx + ex * math.cos(tilt) - ey * math.sin(tilt),
            hy + ex * math.sin(tilt) + ey * math.cos(tilt),
        ],
        axis=1,
    )
    # As in SCR's training fold, the heart's height follows the thorax's (a long chest, a long
    # heart) rather than its own width, so it ranges from squat to upright.
    tall = rng.uniform(0.37, 0.53) * (floor - apex)
    heart[:, 1] = floor - (floor - heart[:, 1]) * tall / (floor - heart[:, 1].min())
    # Narrower at the top (the great vessels) than at its widest, low down: pear-shaped.
    below_top = np.clip((heart[:, 1] - heart[:, 1].min()) / tall, 0.0, 1.0)
    heart[:, 0] = hx + (heart[:, 0] - hx) * (1.0 - rng.uniform(0.3, 0.45) * (1.0 - below_top))
    heart[:, 0] = hx + (heart[:, 0] - hx) * width / np.ptp(heart[:, 0])
    heart[:, 1] = np.minimum(heart[:, 1], floor + 0.03 * (heart[:, 0] - hx) / width)

    # Mediastinum: trachea and great vessels on top, the aortic knob bulging to the left,
    # widening at the hila (pulmonary arteries) down to the heart.
    right_edge = [
        (rng.uniform(0.04, 0.055), 0.0),
        (rng.uniform(0.04, 0.055), apex + 0.1),
        (rng.uniform(0.055, 0.075), apex + 0.2),
        (rng.uniform(0.065, 0.085), hilum_y),
        (rng.uniform(0.05, 0.07), floor),
    ]
    left_edge = [
        (rng.uniform(0.045, 0.06), 0.0),
        (rng.uniform(0.05, 0.065), apex + 0.1),
        (rng.uniform(0.075, 0.095), apex + rng.uniform(0.17, 0.21)),  # aortic knob
        (rng.uniform(0.065, 0.08), apex + 0.25),
        (rng.uniform(0.08, 0.1), hilum_y + 0.03),  # pulmonary trunk
        (rng.uniform(0.05, 0.07), floor),
    ]
    mediastinum = np.array(
        [(cx - x, y) for x, y in right_edge] + [(cx + x, y) for x, y in left_edge[::-1]]
    )
    mediastinum = _closed_curve(mediastinum, corners=(0, len(right_edge) - 1, len(right_edge)))

    body = []
    for side in (-1.0, 1.0):
        w = w_r if side < 0 else w_l
        half = [
            (0.08, -0.01),
            (0.1, apex - 0.03),
            (0.3, apex - 0.02),
            (w + 0.1, apex + 0.02),
            (w + 0.12, apex + 0.25),
            (w + 0.12, 0.7),
            (w + 0.15, 1.02),
        ]
        pts = [(cx + side * x, y + rng.normal(0, 0.005)) for x, y in half]
        body.append(pts[::-1] if side < 0 else pts)
    body_outline = np.array(body[0] + body[1])
    hila = ((cx - 0.1, hilum_y), (cx + 0.1, hilum_y))
    return _Chest(
        right_lung=right_lung,
        left_lung=left_lung,
        heart=heart,
        mediastinum=mediastinum,
        body=body_outline,
        midline=cx,
        apex=apex,
        domes=(dome_r, dome_l),
        widths=(w_r, w_l),
        hila=hila,
    )


def _chest_masks(chest: _Chest, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right lung, left lung, heart) masks; the lungs stop at the cardiomediastinal border.

    The heart is shrunk by a few percent before cutting so that, as in the SCR annotations, the
    heart mask overlaps the lungs in a thin band.
    """
    heart = _fill(chest.heart, size)
    centre = chest.heart.mean(axis=0)
    carve = _fill(centre + (chest.heart - centre) * 0.96, size) | _fill(chest.mediastinum, size)
    right = _largest_component(_fill(chest.right_lung, size) & ~carve)
    left = _largest_component(_fill(chest.left_lung, size) & ~carve)
    return right, left, heart


def _seeded_chest(rng_or_seed: RngLike, cardiothoracic_ratio: float | None) -> _Chest:
    """The thorax of ``synthetic_xray`` with the same seed: its first and fourth streams."""
    chest_rng, _, _, shape_rng = _streams(rng_or_seed, 4)
    return _sample_chest(chest_rng, cardiothoracic_ratio, shape_rng)


def lung_masks(
    size: int, rng_or_seed: RngLike = None, *, cardiothoracic_ratio: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both lung fields of a PA chest radiograph: ``(right_lung, left_lung)`` bool masks.

    Radiological convention: the patient's right lung is on the image left. Shapes vary in
    size, apex height and width (narrower than the base), diaphragm height (the left usually
    lower than the right) and slope down to sharp costophrenic angles, the aortic knob and the
    left lung's cardiac notch; ``cardiothoracic_ratio`` sizes the heart they wrap around. With
    the same integer seed (and ratio) :func:`heart_mask` returns the matching heart, and both
    equal the masks of ``synthetic_xray(size, seed)``.
    """
    right, left, _ = _chest_masks(
        _seeded_chest(rng_or_seed, cardiothoracic_ratio), _check_size(size)
    )
    return right, left


def heart_mask(
    size: int, rng_or_seed: RngLike = None, *, cardiothoracic_ratio: float | None = None
) -> np.ndarray:
    """The heart silhouette of a PA chest radiograph as a bool mask.

    A pear shape sitting on the diaphragm, narrow at the top, its apex towards the image right.
    ``cardiothoracic_ratio`` (heart width over thorax width, normal ~0.4-0.5, larger in
    cardiomegaly) is random when omitted. With the same integer seed and ratio,
    :func:`lung_masks` returns the lungs that fit around it.
    """
    return _fill(_seeded_chest(rng_or_seed, cardiothoracic_ratio).heart, _check_size(size))


@dataclass
class SyntheticXray:
    """A synthetic posterior-anterior chest radiograph and its ground truth."""

    image: np.ndarray  # float32 H x W x 1 in [0, 1]
    lungs: np.ndarray  # bool H x W, both lungs
    heart: np.ndarray  # bool H x W
    left_lung: np.ndarray  # bool, patient's left: image right
    right_lung: np.ndarray  # bool, patient's right: image left
    heart_centre: tuple[float, float]  # (x, y) pixels


def _rib_polylines(
    chest: _Chest, size: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Posterior ribs (arcs bending down at the side wall) and anterior ribs (oblique), pixels."""
    posterior, anterior = [], []
    cx = chest.midline
    height = float(np.mean(chest.domes)) - chest.apex
    t = np.linspace(0.0, 1.0, 24)
    for side, w in ((-1.0, chest.widths[0]), (1.0, chest.widths[1])):
        for k in range(10):
            # Spacing grows downwards; the ribs steepen lower down.
            f = k / 9.0
            y0 = chest.apex - 0.01 + height * (0.75 * f + 0.25 * f**2) + rng.normal(0, 0.005)
            drop = 0.07 + 0.06 * f
            x = cx + side * (0.03 + t * (w + 0.02))
            y = y0 - 0.04 * t + drop * t**2.5
            posterior.append(np.stack([x, y], axis=1) * size)
            # Anterior rib: from the side wall obliquely down towards the sternum.
            x = cx + side * (w + 0.01 - t * (w - 0.1))
            y = y0 + drop - 0.04 + t * (0.1 + 0.04 * f)
            anterior.append(np.stack([x, y], axis=1) * size)
    return posterior, anterior


def _reframe(chest: _Chest, rng: np.random.Generator) -> _Chest:
    """The thorax zoomed (each axis by 1 + N(0, 0.06)) and shifted (N(0, 0.03) of the side) in
    the detector: the spread of the lungs' pose on JSRT's films, which the simulator's own
    outlines (and so a simulated prior) do not have."""
    zoom = np.clip(1.0 + rng.normal(0.0, 0.06, 2), 0.85, 1.15)
    shift = np.clip(rng.normal(0.0, 0.03, 2), -0.08, 0.08)

    def move(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - 0.5) * zoom + 0.5 + shift

    def x(v: float) -> float:
        return float((v - 0.5) * zoom[0] + 0.5 + shift[0])

    def y(v: float) -> float:
        return float((v - 0.5) * zoom[1] + 0.5 + shift[1])

    body = chest.body.copy()  # lowered at the bottom, so that it still fills the frame there
    body[:, 1] = np.where(body[:, 1] > 0.9, body[:, 1] + 0.5, body[:, 1])
    return replace(
        chest,
        right_lung=move(chest.right_lung),
        left_lung=move(chest.left_lung),
        heart=move(chest.heart),
        mediastinum=move(chest.mediastinum),
        body=move(body),
        midline=x(chest.midline),
        apex=y(chest.apex),
        domes=(y(chest.domes[0]), y(chest.domes[1])),
        widths=(chest.widths[0] * zoom[0], chest.widths[1] * zoom[0]),
        hila=tuple(tuple(move(h)) for h in chest.hila),
    )


def synthetic_xray(size: int = 256, seed: int = 0, *, hard: bool = False) -> SyntheticXray:
    """A PA chest radiograph with known lungs and heart.

    Dark lung fields with soft edges, bright mediastinum, heart, spine and abdomen, faint
    posterior and anterior ribs, clavicles, trachea and vascular markings fanning out from the
    hila, on a darker background outside the body.

    ``hard=True`` draws the same anatomy closer to the look of digitised films (JSRT): paler
    lungs whose edges fade, strong ribs and vessels, soft-tissue shadows over the lower lungs,
    the body filling the frame, film markers in the corners, a random gamma, more noise, and the
    thorax zoomed and shifted in the frame, so that its masks leave the pose of
    :func:`lung_masks` and :func:`heart_mask` (a simulated prior's). For choosing settings on
    generated images that behave like real ones.
    """
    size = _check_size(size)
    chest_rng, rng, film_rng, shape_rng = _streams(seed, 4)
    chest = _sample_chest(chest_rng, shape_rng=shape_rng)
    if hard:
        chest = _reframe(chest, film_rng)
    right, left, heart = _chest_masks(chest, size)
    lungs = right | left
    s = float(size)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / s

    # Soft tissue: brighter where the body is thicker (centre).
    body = ndi.gaussian_filter(_fill(chest.body, size).astype(np.float32), 0.01 * s)
    half_width = np.maximum(chest.widths[0], chest.widths[1]) + 0.1
    thickness = np.sqrt(np.clip(1.0 - ((xx - chest.midline) / half_width) ** 2, 0.0, 1.0))
    background = rng.uniform(0.25, 0.4)
    tissue = rng.uniform(0.84, 0.9)
    if hard:  # the body fills the frame: what lies outside it is barely darker
        background = film_rng.uniform(0.45, 0.8)
    image = background + (tissue - background) * body * (0.8 + 0.2 * thickness)

    # Lungs: air darkens most in the middle of each lung, less at the edges and apices.
    inner = ndi.distance_transform_edt(lungs) / s
    depth = 1.0 - np.exp(-inner / 0.04)
    apex, floor = chest.apex, float(np.mean(chest.domes))
    zone = np.clip(0.75 + 0.35 * (yy - apex) / (floor - apex), 0.75, 1.1)
    edge = film_rng.uniform(0.008, 0.016) if hard else 0.006  # paler edges that fade
    air = ndi.gaussian_filter(lungs.astype(np.float32) * (0.45 + 0.55 * depth) * zone, edge * s)
    darkening = rng.uniform(0.3, 0.38)
    image -= (film_rng.uniform(0.14, 0.34) if hard else darkening) * air
    if hard:  # soft tissue (breasts, pectorals) over the lower lateral lungs
        for side, w in ((-1.0, chest.widths[0]), (1.0, chest.widths[1])):
            bx, by = chest.midline + side * 0.65 * w, floor - 0.08
            blob = np.exp(-(((xx - bx) / 0.16) ** 2) - ((yy - by) / 0.1) ** 2)
            image += film_rng.uniform(0.0, 0.1) * blob

    # Vascular markings: thin streaks radiating from each hilum, fading towards the periphery.
    markings = np.zeros_like(image)
    for hx, hy in chest.hila:
        angle = np.arctan2(yy - hy, xx - hx)
        radial = np.hypot(xx - hx, yy - hy)
        wave = _smooth_noise((1, 720), 3.0, rng)[0]
        idx = ((angle + np.pi) / (2 * np.pi) * 720).astype(int) % 720
        markings += np.clip(wave[idx], 0, None) * np.exp(-radial / 0.15)
    # Break the streaks into segments so they read as vessels, not rays.
    broken = np.clip(_smooth_noise((size, size), 0.01 * s, rng) + 0.3, 0.0, None)
    markings = ndi.gaussian_filter(markings * broken, 0.002 * s)
    texture = _smooth_noise((size, size), 0.008 * s, rng)
    vessels = film_rng.uniform(0.05, 0.09) if hard else 0.03
    image += air * (vessels * markings + 0.012 * texture)

    # Bones: ribs over the lungs, clavicles, spine; the trachea is a dark air column.
    posterior, anterior = _rib_polylines(chest, size, rng)
    post = _band(posterior, image.shape, 0.012 * s)
    ant = _band(anterior, image.shape, 0.01 * s)
    bone = film_rng.uniform(1.2, 2.2) if hard else 1.0
    ribs = bone * (np.sqrt(post) * 0.04 + np.sqrt(ant) * 0.02)
    image += ribs * (0.3 + 0.7 * air / (air.max() + 1e-6))
    clavicles = []
    for side in (-1.0, 1.0):
        t = np.linspace(0, 1, 20)
        x = chest.midline + side * (0.05 + 0.3 * t)
        y = apex + 0.08 - 0.08 * t + 0.02 * np.sin(np.pi * t) + rng.normal(0, 0.01)
        clavicles.append(np.stack([x, y], axis=1) * s)
    image += 0.045 * np.sqrt(_band(clavicles, image.shape, 0.014 * s))
    spine = np.exp(-(((xx - chest.midline) / 0.035) ** 4))
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - apex) / 0.045)  # ~0.045 of the image apart
    image += spine * (0.03 + 0.01 * vertebrae) * body
    trachea = np.exp(-(((xx - chest.midline) / 0.014) ** 2)) * (yy < apex + 0.17)
    image -= 0.08 * ndi.gaussian_filter(trachea.astype(np.float32), 0.004 * s)
    image += 0.03 * ndi.gaussian_filter(heart.astype(np.float32), 0.01 * s)

    noise = rng.normal(0.0, 0.008, image.shape)
    if hard:
        noise *= film_rng.uniform(1.0, 2.5)
    image = ndi.gaussian_filter(image, 0.0015 * s) + noise
    image = np.clip(image, 0.0, 1.0)
    if hard:
        image = image ** film_rng.uniform(0.75, 1.3)
        for corner in (0.0, 1.0):  # film markers: dark labels in the top corners
            if film_rng.random() < 0.5:
                w, h = film_rng.uniform(0.06, 0.14), film_rng.uniform(0.03, 0.06)
                x0 = int(corner * (1 - w) * s + (1 - 2 * corner) * film_rng.uniform(0, 0.03) * s)
                image[: int(h * s), x0 : x0 + int(w * s)] = film_rng.uniform(0.0, 0.08)
    image = image.astype(np.float32)[..., None]
    ys, xs = np.nonzero(heart)
    return SyntheticXray(
        image=image,
        lungs=lungs,
        heart=heart,
        left_lung=left,
        right_lung=right,
        heart_centre=(float(xs.mean()), float(ys.mean())),
    )
