"""Instance-spreading criterion against a direct float64 transcription of METHOD.md Sec. 3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from localdisc.losses import InstanceSpreadingLoss, isl_loss


def reference_isl(x: torch.Tensor, tau: float, stop_grad: bool = True) -> torch.Tensor:
    """Literal transcription: double loop over i, j; sg(x_j) as ``.detach()``."""
    n = x.shape[0]
    m = n // 2
    total = x.new_zeros(())
    for i in range(n):
        pos = (i + m) % n
        s = {
            j: torch.exp(torch.dot(x[i], x[j].detach() if stop_grad else x[j]) / tau)
            for j in range(n)
            if j != i
        }
        z = sum(s.values())
        term = torch.log(s[pos] / z)
        for j, s_ij in s.items():
            if j != pos:
                term = term + torch.log(1 - s_ij / z)
        total = total + term
    return -total / n


def unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.1), (6, 4, 0.1), (10, 5, 0.1), (8, 3, 0.5)])
def test_matches_reference_value_and_gradient(seed, n, d, tau):
    x = unit(n, d, seed).requires_grad_()
    got = isl_loss(x, tau)
    want = reference_isl(x, tau)
    (g_got,) = torch.autograd.grad(got, x)
    (g_want,) = torch.autograd.grad(want, x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-10)


def test_float32_matches_float64_reference():
    x64 = unit(12, 6, seed=7)
    x32 = x64.float().requires_grad_()
    got = isl_loss(x32)
    (g_got,) = torch.autograd.grad(got, x32)
    x64.requires_grad_()
    want = reference_isl(x64, 0.1)
    (g_want,) = torch.autograd.grad(want, x64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-5)


def test_stop_gradient_matters():
    # The gradient check above only proves sg(x_j) if dropping it changes the gradient.
    x = unit(8, 4, seed=3).requires_grad_()
    (g,) = torch.autograd.grad(isl_loss(x), x)
    (g_no_sg,) = torch.autograd.grad(reference_isl(x, 0.1, stop_grad=False), x)
    assert not torch.allclose(g, g_no_sg, atol=1e-3)


def test_aligned_positives_and_spread_negatives_score_lower_than_random():
    m, d = 6, 8
    spread = torch.eye(d, dtype=torch.float64)[:m]  # orthogonal negatives
    good = torch.cat([spread, spread])  # positives coincide
    good_loss = isl_loss(good)
    for seed in range(5):
        assert good_loss < isl_loss(unit(2 * m, d, seed))
    # and worse than good: positives anti-aligned
    assert good_loss < isl_loss(torch.cat([spread, -spread]))


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_consistent_permutation_of_pairs(seed):
    m = 7
    x = unit(2 * m, 5, seed)
    perm = torch.roll(torch.randperm(m, generator=torch.Generator().manual_seed(seed)), 1)
    a, b = x[:m], x[m:]
    base = isl_loss(x)
    torch.testing.assert_close(isl_loss(torch.cat([a[perm], b[perm]])), base)
    torch.testing.assert_close(isl_loss(torch.cat([b, a])), base)  # the pair relation is symmetric
    # Permuting one half only breaks the pairs and must change the loss.
    assert (perm != torch.arange(m)).any()
    assert not torch.allclose(isl_loss(torch.cat([a[perm], b])), base)


def test_gradient_permutes_with_the_pairs():
    m = 5
    x = unit(2 * m, 4, seed=11).requires_grad_()
    perm = torch.tensor([3, 0, 4, 1, 2])
    full = torch.cat([perm, perm + m])
    (g,) = torch.autograd.grad(isl_loss(x), x)
    xp = x.detach()[full].requires_grad_()
    (gp,) = torch.autograd.grad(isl_loss(xp), xp)
    torch.testing.assert_close(gp, g[full])


def test_extreme_logits_stay_finite():
    # A negative identical to x_i with a tiny tau takes almost all of Z_i: p_ij -> 1, where a
    # naive log(1 - p) is -inf. The clamp must keep value and gradient finite.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.cat([v[:1], v[:1], v[1:], v[1:]]).requires_grad_()
    # pairs: (0, 2) and (1, 3); x_0 == x_1 is a duplicate negative, x_2 orthogonal
    loss = isl_loss(x, tau=0.01)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss)
    assert torch.isfinite(g).all()
    assert loss > 10  # the duplicate negative is penalised heavily, not silently ignored


def test_bf16_and_autocast_compute_in_float32():
    x = unit(16, 8, seed=5).float()
    want = isl_loss(x)
    got_bf16 = isl_loss(x.bfloat16())
    assert got_bf16.dtype == torch.float32
    torch.testing.assert_close(got_bf16, isl_loss(x.bfloat16().float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_autocast = isl_loss(x)
    assert got_autocast.dtype == torch.float32
    # A bf16 matmul (8 mantissa bits) would be off by ~1e-2 here.
    torch.testing.assert_close(got_autocast, want, rtol=1e-6, atol=1e-6)


def test_module_and_validation():
    x = unit(6, 3, seed=0)
    mod = InstanceSpreadingLoss(tau=0.3)
    torch.testing.assert_close(mod(x), isl_loss(x, 0.3))
    assert "tau=0.3" in repr(mod)
    # distributed=True without a process group is the local loss
    torch.testing.assert_close(isl_loss(x, distributed=True), isl_loss(x))
    with pytest.raises(ValueError, match="even"):
        isl_loss(unit(5, 3, seed=0))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        isl_loss(torch.zeros(2, 3, 4))
    for tau in (0.0, float("nan"), float("inf")):  # NaN gave a NaN loss without a word
        with pytest.raises(ValueError, match="tau must be positive and finite"):
            isl_loss(x, tau=tau)
