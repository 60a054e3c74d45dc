import numpy as np
import pytest
import torch

from localdisc.priors import load_prior
from localdisc.priors.topology import PriorTopology, enforce_topology, measure_topology


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_simulated_organs_and_vessels() -> None:
    assert measure_topology(load_prior("simulated:lungs", 64, count=8)) == PriorTopology(2, False)
    assert measure_topology(load_prior("simulated:heart", 64, count=8)) == PriorTopology(1, False)
    vessels = measure_topology(load_prior("simulated:vessels", 128, count=4))
    assert vessels.thin and not vessels.solid
    for organ in ("optic_disc", "fovea"):  # the smallest organs: still solid at 128 px
        assert measure_topology(load_prior(f"simulated:{organ}", 128, count=8)).solid
    assert vessels.holes  # arcades and crossings close loops


def test_measure_ignores_specks_and_takes_the_median() -> None:
    ring = _disc(32, 16, 16, 10) & ~_disc(32, 16, 16, 5)
    speck = np.zeros((32, 32), bool)
    speck[0, 0] = True
    masks = np.stack([ring | speck, ring, _disc(32, 16, 16, 8), np.zeros((32, 32), bool)])
    # one piece each (the speck is < 1 %), two rings of three non-empty masks have a hole
    assert measure_topology(masks) == PriorTopology(1, True)
    assert measure_topology(torch.from_numpy(masks[2:3, None])) == PriorTopology(1, False)
    with pytest.raises(ValueError, match="empty"):
        measure_topology(np.zeros((2, 8, 8)))


def test_enforce_keeps_the_largest_pieces_and_fills_holes() -> None:
    left, right = _disc(64, 32, 16, 10), _disc(64, 32, 48, 12)
    blob = _disc(64, 5, 32, 3)
    hole = _disc(64, 32, 48, 3)
    prob = np.where(left | right | blob, 0.9, 0.1).astype(np.float32)
    prob[hole] = 0.2
    out = enforce_topology(prob, PriorTopology(2, False))
    assert (out[blob] == 0).all()  # the smallest piece goes
    assert (out[hole] == 1).all()  # the hole closes
    assert (out[left] == 0.9).all() and (out[right & ~hole] == 0.9).all()
    assert (out[~(left | right | blob)] == 0.1).all()  # background untouched
    assert out.dtype == np.float32 and prob[hole][0] == pytest.approx(0.2)  # input unchanged

    kept_holes = enforce_topology(prob, PriorTopology(3, True))
    np.testing.assert_array_equal(kept_holes, prob)  # nothing to do
    one = enforce_topology(prob, PriorTopology(1, True)) > 0.5
    assert one.sum() == (right & ~hole).sum()
    assert not enforce_topology(np.zeros((8, 8)), PriorTopology(1, False)).any()


def test_enforce_counts_one_half_as_the_written_masks_do() -> None:
    """Two runs' mean is exactly 0.5 where one says 1 and the other 0: such a piece is in the
    written mask (``>= 0.5``), so it must go when it is one piece too many (it used to stay)."""
    from scipy import ndimage

    from localdisc.tasks.predict import mask_png

    heart, speck = _disc(32, 12, 12, 6), _disc(32, 26, 26, 2)
    prob = np.where(heart, 1.0, 0.0).astype(np.float32)
    prob[speck] = 0.5
    written = mask_png(enforce_topology(prob, PriorTopology(1, False))) > 0
    assert ndimage.label(written)[1] == 1 and (written == heart).all()


def test_a_topology_reads_plainly_in_messages() -> None:
    # An ensemble of runs with different priors printed PriorTopology(components=2, holes=False).
    assert str(PriorTopology(2, False)) == "2 pieces, no holes"
    assert str(PriorTopology(1, True)) == "1 piece, with holes"
    assert f"{PriorTopology(1, False)}" == "1 piece, no holes"


def test_a_tree_without_loops_is_no_organ() -> None:
    # Vessel masks whose branches never cross have no holes: taken for an organ, output A of a
    # vessel run had its loops filled and every piece but the largest removed, and no clDice.
    tree = np.zeros((128, 128), bool)
    tree[20:120, 63:66] = True  # a trunk 3 px wide, two branches, one branch of a branch
    tree[60:63, 30:66] = tree[40:43, 63:100] = tree[20:60, 30:33] = True
    topology = measure_topology(np.stack([tree, np.roll(tree, 9, axis=1)]))
    assert topology == PriorTopology(1, False, thin=True) and not topology.solid
    assert str(topology) == "1 piece, no holes, thin (a tree)"
    # An organ as large in area as the tree is not thin.
    assert not measure_topology(_disc(128, 64, 64, 11)[None]).thin


def test_pieces_touching_at_a_corner_are_one() -> None:
    """Pieces are 8-connected, as holes are 4-connected: a rasterised line's diagonal steps
    split it (a simulated vessel tree of one piece counted 19), and a lobe joined to the organ
    at a corner was cut away as a piece too many."""
    line = np.eye(32, dtype=bool) | np.eye(32, k=1, dtype=bool)[::-1]  # an X of diagonal steps
    assert measure_topology(line[None]).components == 1
    vessels = measure_topology(load_prior("simulated:vessels", 128, count=4))
    assert vessels.components == 1
    organ = np.zeros((32, 32), bool)
    organ[4:16, 4:16] = True
    lobe = np.zeros_like(organ)
    lobe[16:22, 16:22] = True  # touches the organ at the corner (15, 15) alone
    prob = np.where(organ | lobe, 0.9, 0.1).astype(np.float32)
    np.testing.assert_array_equal(enforce_topology(prob, PriorTopology(1, False)), prob)
    ring = np.zeros((9, 9), bool)  # a diamond of diagonal steps: one piece around a hole
    for i in range(4):
        ring[4 - i, i] = ring[4 + i, i] = ring[i, 4 + i] = ring[8 - i, 4 + i] = True
    ring[4, 8] = True
    topology = measure_topology(ring[None])
    assert (topology.components, topology.holes) == (1, True)


def test_a_tie_between_two_counts_keeps_the_larger() -> None:
    # Half the masks with two pieces: holding output A to one piece would remove an organ.
    one, two = _disc(32, 16, 8, 5), _disc(32, 16, 8, 5) | _disc(32, 16, 24, 5)
    assert measure_topology(np.stack([one, two, one, two])).components == 2


def test_holes_under_1_percent_are_specks_and_half_the_masks_decide() -> None:
    # A pinhole (a resizing speck, < 1 % of the mask) is no hole: counted, an organ prior would
    # be "with holes" and no longer solid, so its topology would not be enforced. A hole of
    # 1 % or more counts, and a prior has holes when at least half of its masks do (a tie).
    square = np.zeros((40, 40), bool)
    square[5:35, 5:35] = True  # 900 px
    pinhole, ring = square.copy(), square.copy()
    pinhole[20, 20] = False
    ring[18:21, 18:21] = False  # 9 px: 1 % of the 891 px left
    assert measure_topology(np.stack([pinhole, pinhole])) == PriorTopology(1, False)
    assert measure_topology(np.stack([ring, ring])) == PriorTopology(1, True)
    assert measure_topology(np.stack([ring, square])).holes
    assert not measure_topology(np.stack([ring, square, square])).holes
