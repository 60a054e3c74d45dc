"""Binary entropy (base 2) of the cluster assignments against a per-element transcription."""

from __future__ import annotations

import math

import pytest
import torch

from localdisc.losses import EntropyLoss, entropy_loss


def reference_entropy(a: torch.Tensor) -> torch.Tensor:
    """mean_{n,k,p} -(a log2 a + (1 - a) log2(1 - a)), one element at a time (0 < a < 1)."""
    terms = [-(x * math.log2(x) + (1 - x) * math.log2(1 - x)) for x in a.flatten().tolist()]
    return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)


def assignments(n: int, k: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.sigmoid(torch.randn(n, k, h, w, generator=gen, dtype=torch.float64) * 3)
    return a / a.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 8, 3, 3), (3, 2, 1, 6)])
def test_matches_reference_value_and_gradient(seed, shape):
    a = assignments(*shape, seed).requires_grad_()
    got = entropy_loss(a)
    torch.testing.assert_close(got.detach(), reference_entropy(a.detach()), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(got, a)
    # d/da of -(a log2 a + (1-a) log2(1-a)) is log2((1 - a) / a), divided by the element count.
    want = torch.log2((1 - a.detach()) / a.detach()) / a.numel()
    torch.testing.assert_close(g, want)


def test_hard_assignments_have_zero_entropy_and_finite_gradient():
    labels = torch.randint(0, 4, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    a = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float().requires_grad_()
    loss = entropy_loss(a)
    (g,) = torch.autograd.grad(loss, a)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert 0 <= loss.item() < 1e-5  # only the eps clamp's residue


def test_half_has_entropy_one():
    a = torch.full((2, 3, 4, 4), 0.5)
    torch.testing.assert_close(entropy_loss(a), torch.tensor(1.0))
    torch.testing.assert_close(EntropyLoss()(a.bfloat16()), torch.tensor(1.0))


def test_symmetric_and_bounded():
    a = assignments(2, 4, 5, 5, seed=3)
    torch.testing.assert_close(entropy_loss(a), entropy_loss(1 - a))
    assert 0 < entropy_loss(a) < 1


def test_bf16_input_computes_in_float32():
    a = assignments(2, 4, 5, 5, seed=1).float()
    got = entropy_loss(a.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, entropy_loss(a.bfloat16().float()))


def test_eps_and_module():
    a = torch.tensor([0.0, 1.0, 0.5])
    loose = entropy_loss(a, eps=1e-2)
    # Two clamped ends each contribute H(0.01) ~= 0.0808 bits, the middle 1 bit.
    h = -(0.01 * math.log2(0.01) + 0.99 * math.log2(0.99))
    assert math.isclose(loose.item(), (2 * h + 1) / 3, rel_tol=1e-5)
    assert EntropyLoss(eps=1e-2)(a).item() == pytest.approx(loose.item())
    with pytest.raises(ValueError, match="eps"):
        entropy_loss(a, eps=0.0)
