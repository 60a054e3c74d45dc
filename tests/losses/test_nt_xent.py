"""SimCLR's NT-Xent against a direct float64 transcription of the paper's Eq. 1 / Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from localdisc.losses.nt_xent import NTXentLoss, nt_xent_loss


def reference_nt_xent(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Chen et al. 2020, Algorithm 1, with the paper's interleaved indexing.

    ``z`` holds [view 1 of 0..N-1 ; view 2 of 0..N-1]; the paper numbers the views so that
    (2k-1, 2k) are the two views of instance k, which we build explicitly (0-based: 2k, 2k+1).
    """
    n = z.shape[0] // 2
    views = []
    for k in range(n):
        views += [z[k], z[k + n]]

    def sim(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.dot(u, v) / (torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v))

    def ell(i: int, j: int) -> torch.Tensor:
        num = torch.exp(sim(views[i], views[j]) / tau)
        den = sum(torch.exp(sim(views[i], views[k]) / tau) for k in range(2 * n) if k != i)
        return -torch.log(num / den)

    total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n))
    return total / (2 * n)


def rand(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("n2", "d", "tau"), [(2, 3, 0.2), (6, 4, 0.2), (10, 5, 0.1), (8, 3, 0.5)])
def test_matches_reference_value_and_gradient(seed, n2, d, tau):
    z = rand(n2, d, seed).requires_grad_()  # not normalised: the loss uses cosines
    got = nt_xent_loss(z, tau)
    want = reference_nt_xent(z, tau)
    (g_got,) = torch.autograd.grad(got, z)
    (g_want,) = torch.autograd.grad(want, z)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-10)


def test_float32_and_autocast_match_reference():
    z64 = rand(12, 6, seed=4)
    want = reference_nt_xent(z64, 0.2)
    got = nt_xent_loss(z64.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_ac = nt_xent_loss(z64.float())
    assert got_ac.dtype == torch.float32
    torch.testing.assert_close(got_ac, got, rtol=1e-6, atol=1e-6)
    assert nt_xent_loss(z64.bfloat16()).dtype == torch.float32


def test_identical_positives_and_orthogonal_negatives():
    # Positives coincide, every other pair is orthogonal: each anchor sees one view at cos 1 and
    # 2N - 2 at cos 0, so the loss has the closed form -log(e^(1/tau) / (e^(1/tau) + 2N - 2)).
    n, d, tau = 5, 8, 0.2
    base = torch.eye(d, dtype=torch.float64)[:n]
    ideal = torch.cat([base, base])
    closed = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert nt_xent_loss(ideal, tau).item() == pytest.approx(closed, rel=1e-12)
    for seed in range(5):
        assert nt_xent_loss(ideal, tau) < nt_xent_loss(rand(2 * n, d, seed), tau)
    assert nt_xent_loss(ideal, tau) < nt_xent_loss(torch.cat([base, -base]), tau)
    # Rotating a positive away from its partner (keeping it orthogonal to the others) hurts.
    bent = ideal.clone()
    bent[n] = F.normalize(base[0] + 0.5 * torch.eye(d, dtype=torch.float64)[n], dim=0)
    assert nt_xent_loss(ideal, tau) < nt_xent_loss(bent, tau)


def test_scale_invariance_and_pair_permutation():
    z = rand(10, 4, seed=9)
    base = nt_xent_loss(z)
    torch.testing.assert_close(nt_xent_loss(3.0 * z), base)
    perm = torch.tensor([2, 0, 4, 1, 3])
    torch.testing.assert_close(nt_xent_loss(torch.cat([z[:5][perm], z[5:][perm]])), base)
    torch.testing.assert_close(nt_xent_loss(torch.cat([z[5:], z[:5]])), base)
    assert not torch.allclose(nt_xent_loss(torch.cat([z[:5][perm], z[5:]])), base)


def test_module_and_validation():
    z = rand(6, 3, seed=0)
    mod = NTXentLoss(tau=0.3)
    torch.testing.assert_close(mod(z), nt_xent_loss(z, 0.3))
    assert "tau=0.3" in repr(mod)
    with pytest.raises(ValueError, match="even"):
        nt_xent_loss(rand(5, 3, seed=0))
    with pytest.raises(ValueError, match=r"\[2N, D\]"):
        nt_xent_loss(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="tau"):
        nt_xent_loss(z, tau=0.0)
