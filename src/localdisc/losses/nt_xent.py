"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, Sec. 2.1 (Eq. 1 and Algorithm 1). For a batch of ``N``
instances with two views each (``2N`` projections ``z``), ``sim(u, v) = u.v / (|u| |v|)``::

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    L       = 1/(2N) sum_{k=1..N} [ l(2k-1, 2k) + l(2k, 2k-1) ]

i.e. a cross-entropy over the ``2N - 1`` other views in which the other view of the same instance
is the target. Both operands carry gradient (no stop-gradient, unlike LD's ISL).

Layout: we order the views as ``[view 1 of instances 0..N-1 ; view 2 of instances 0..N-1]``, so
the pairs are ``(i, i + N)`` (the convention of :func:`localdisc.losses.isl_loss`) rather than the
paper's interleaved ``(2k-1, 2k)``; the loss is the same sum.

Temperature: the paper's ImageNet default is 0.1 (Table 5, batch 4096, LARS) and its CIFAR-10
runs use 0.5. We default to 0.2: with medical pre-training batches (the published LD batch is 4
pairs, so 2N = 16 views and 14 negatives per anchor) 0.1 puts nearly all the gradient on one or two
hard negatives, which in a small pool of look-alike fundus/X-ray images are often near-duplicates,
while 0.5 flattens the softmax so that the few negatives barely push; 0.2 sits between the two and
is the temperature of MoCo v2/DenseCL and of LD's region discrimination, which keeps the peers
comparable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NTXentLoss", "nt_xent_loss"]

#: Default temperature (see the module docstring for the choice).
TAU = 0.2


def nt_xent_loss(z: Tensor, tau: float = TAU) -> Tensor:
    """NT-Xent over ``2N`` projections paired as ``(i, i + N)`` (SimCLR Eq. 1, mean over 2N).

    Args:
        z: ``[2N, D]`` projections (any norm: the similarity is the cosine). bf16/fp16 inputs are
            computed in float32, autocast is disabled inside.
        tau: temperature.

    Returns:
        Scalar loss in the compute dtype (float32 unless ``z`` is float64).
    """
    if z.dim() != 2:
        raise ValueError(f"nt_xent_loss expects z of shape [2N, D], got {tuple(z.shape)}")
    n2 = z.shape[0]
    if n2 < 2 or n2 % 2:
        raise ValueError(f"nt_xent_loss needs an even number 2N >= 2 of views, got {n2}")
    if not 0 < tau < math.inf:  # NaN too: the loss was NaN without a word
        raise ValueError(f"tau must be positive and finite, got {tau}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        logits = z @ z.T / tau
        eye = torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))  # k != i
        target = (torch.arange(n2, device=z.device) + n2 // 2) % n2
        return F.cross_entropy(logits, target)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss` (SimCLR, ICML 2020)."""

    def __init__(self, tau: float = TAU) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z: Tensor) -> Tensor:
        return nt_xent_loss(z, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
