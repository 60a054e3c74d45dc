"""Models Genesis restoration loss (MSE) against a loop transcription."""

from __future__ import annotations

import pytest
import torch

from localdisc.losses.restoration import restoration_loss


def reference_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total, count = 0.0, 0
    for b in range(recon.shape[0]):
        for c in range(recon.shape[1]):
            for i in range(recon.shape[2]):
                for j in range(recon.shape[3]):
                    total = total + (recon[b, c, i, j] - target[b, c, i, j]) ** 2
                    count += 1
    return total / count


def test_matches_reference_and_gradient():
    g = torch.Generator().manual_seed(0)
    recon = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    got, want = restoration_loss(recon, target), reference_mse(recon, target)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    (g1,) = torch.autograd.grad(got, recon)
    torch.testing.assert_close(g1, 2 * (recon - target).detach() / recon.numel())


def test_zero_on_identity_positive_otherwise_and_float32_compute():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert restoration_loss(x, x.clone()).item() == 0.0
    assert restoration_loss(x, 1 - x) > 0
    assert restoration_loss(x.bfloat16(), x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        restoration_loss(x, x[:, :, :4])
