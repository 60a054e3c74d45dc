"""Hypersphere mixup against a direct float64 transcription of METHOD.md Sec. 3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from localdisc.losses import HypersphereMixupLoss, hypersphere_mixup_loss, mixup_targets
from reference_losses import reference_isl


def reference_mixup(mixed, patches1, patches2, lam, tau):
    b, _, g, _ = mixed.shape
    cells = [(i, u, w) for i in range(b) for u in range(g) for w in range(g)]
    first = [mixed[i, :, u, w] for i, u, w in cells]
    targets = []
    for i, u, w in cells:
        t = lam[i] * patches1[i, :, u, w] + (1 - lam[i]) * patches2[i, :, u, w]
        targets.append((t / t.norm()).detach())
    return reference_isl(first + targets, tau)


def unit_patches(b: int, d: int, g: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, g, g, generator=gen, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("b", "d", "g", "tau"), [(1, 4, 2, 0.1), (2, 3, 2, 0.1), (3, 5, 1, 0.4)])
def test_matches_reference_value_and_gradient(seed, b, d, g, tau):
    mixed = unit_patches(b, d, g, seed).requires_grad_()
    p1 = unit_patches(b, d, g, seed + 10).requires_grad_()
    p2 = unit_patches(b, d, g, seed + 20).requires_grad_()
    lam = torch.empty(b, dtype=torch.float64).uniform_(0.2, 0.8)
    got = hypersphere_mixup_loss(mixed, p1, p2, lam, tau)
    want = reference_mixup(mixed, p1, p2, lam, tau)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (g_got,) = torch.autograd.grad(got, mixed)
    (g_want,) = torch.autograd.grad(want, mixed)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-10)


def test_targets_receive_no_gradient():
    mixed = unit_patches(2, 4, 2, 0).requires_grad_()
    p1 = unit_patches(2, 4, 2, 1).requires_grad_()
    p2 = unit_patches(2, 4, 2, 2).requires_grad_()
    loss = hypersphere_mixup_loss(mixed, p1, p2, torch.tensor([0.3, 0.6]))
    g_mixed, g1, g2 = torch.autograd.grad(loss, (mixed, p1, p2), allow_unused=True)
    assert g1 is None and g2 is None
    assert g_mixed.abs().sum() > 0


def test_targets_are_normalised_mixes():
    p1 = unit_patches(2, 4, 3, 1)
    p2 = unit_patches(2, 4, 3, 2)
    lam = torch.tensor([0.25, 0.7], dtype=torch.float64)
    t = mixup_targets(p1, p2, lam)
    manual = 0.25 * p1[0] + 0.75 * p2[0]
    torch.testing.assert_close(t[0], manual / manual.norm(dim=0, keepdim=True))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(2, 3, 3, dtype=torch.float64))
    torch.testing.assert_close(mixup_targets(p1, p2, 1.0), p1)  # scalar lam broadcasts


def test_mixed_at_the_target_scores_lower():
    p1 = unit_patches(2, 16, 2, 1)
    p2 = unit_patches(2, 16, 2, 2)
    lam = torch.tensor([0.4, 0.6], dtype=torch.float64)
    on_target = hypersphere_mixup_loss(mixup_targets(p1, p2, lam), p1, p2, lam)
    # The same embeddings but with lam swapped between items: no longer at the target.
    off_target = hypersphere_mixup_loss(mixup_targets(p1, p2, lam.flip(0)), p1, p2, lam)
    assert on_target < off_target


def test_bf16_inputs_compute_in_float32():
    mixed, p1, p2 = (unit_patches(2, 8, 2, s).float() for s in range(3))
    lam = torch.tensor([0.3, 0.5])
    got = hypersphere_mixup_loss(mixed.bfloat16(), p1.bfloat16(), p2.bfloat16(), lam)
    assert got.dtype == torch.float32
    want = hypersphere_mixup_loss(
        mixed.bfloat16().float(), p1.bfloat16().float(), p2.bfloat16().float(), lam
    )
    torch.testing.assert_close(got, want)


def test_module_and_validation():
    mixed, p1, p2 = (unit_patches(2, 3, 2, s) for s in range(3))
    lam = torch.tensor([0.3, 0.5], dtype=torch.float64)
    mod = HypersphereMixupLoss(tau=0.2)
    torch.testing.assert_close(
        mod(mixed, p1, p2, lam), hypersphere_mixup_loss(mixed, p1, p2, lam, 0.2)
    )
    with pytest.raises(ValueError, match="lam"):
        hypersphere_mixup_loss(mixed, p1, p2, torch.tensor([0.3, 0.5, 0.6]))
    with pytest.raises(ValueError, match="same shape"):
        hypersphere_mixup_loss(mixed, p1, p2[:1], lam)
