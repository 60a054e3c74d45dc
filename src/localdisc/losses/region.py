"""Region discrimination: couples the embedding head and the clustering head.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (arXiv
2108.09440), Sec. 3 (region discrimination); METHOD.md Sec. 3.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.losses.isl import _active_world, _check_equal_local_sizes, _compute_dtype

__all__ = ["RegionDiscriminationLoss", "region_discrimination_loss", "region_embeddings"]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum all-reduce: ``y = sum_r x_r`` on every rank.

    Backward all-reduces the incoming gradients, since every rank's loss depends on ``y`` and
    hence on every rank's ``x_r``. (Same semantics as ``torch.distributed.nn.functional
    .all_reduce``, which recent torch deprecates with a warning on every call.)
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def region_embeddings(v: Tensor, a: Tensor) -> Tensor:
    """Region embeddings ``z_{n,k} = L2norm(sum_p a_{n,k}(p) v_n(p))`` (paper Sec. 3).

    Computed as one batched matrix product ``a[N, K, HW] @ v[N, HW, D]``: the ``[N, K, D, H, W]``
    broadcast product is never formed (at B = 4, S = 448 it alone peaks at ~30 GiB).

    Args:
        v: ``[N, D, H, W]`` pixel embeddings.
        a: ``[N, K, H, W]`` soft cluster assignments.

    Returns:
        ``[N, K, D]``, unit-norm over ``D`` (float32 for bf16/fp16 input, autocast disabled).
    """
    if v.dim() != 4 or a.dim() != 4:
        raise ValueError(
            f"region_embeddings expects v [N, D, H, W] and a [N, K, H, W], got "
            f"{tuple(v.shape)} and {tuple(a.shape)}"
        )
    n, d, h, w = v.shape
    if a.shape[0] != n or a.shape[2:] != v.shape[2:]:
        raise ValueError(f"v {tuple(v.shape)} and a {tuple(a.shape)} must agree in N, H and W")
    k = a.shape[1]
    with torch.autocast(device_type=v.device.type, enabled=False):
        dtype = _compute_dtype(torch.promote_types(v.dtype, a.dtype))
        # The reduction runs over all H*W pixels while the output is only K x D: one GEMM per
        # image leaves most of a GPU idle (6.6 ms per step on an H100 at S = 448). Splitting the
        # pixels into chunks gives independent products, summed afterwards. The chunks are
        # strided views of each image's a and v (no copies), hence the short loop over images.
        chunks = math.gcd(h * w, 64)
        length = h * w // chunks
        # unbind, not a_[i]: its backward is one stack, where indexing would add n full-size
        # zero-padded gradients together.
        sums = torch.stack(
            [
                torch.bmm(
                    a_i.reshape(k, chunks, length).transpose(0, 1),
                    v_i.reshape(d, chunks, length).permute(1, 2, 0),
                ).sum(0)
                for a_i, v_i in zip(a.to(dtype).unbind(0), v.to(dtype).unbind(0), strict=True)
            ]
        )
        return F.normalize(sums, dim=-1)


def region_discrimination_loss(
    v: Tensor, a: Tensor, tau: float = 0.2, *, distributed: bool = False
) -> Tensor:
    r"""Region discrimination (paper Sec. 3; METHOD.md Sec. 3)::

        z_{n,k} = L2norm(sum_p a_{n,k}(p) v_n(p))
        c_k     = L2norm(mean_n z_{n,k})
        L_RD    = -(1/(N K)) sum_{n,k} log softmax_j(z_{n,k} . c_j / tau)[k]

    Gradients flow through ``z`` (into both heads) and through the prototypes ``c``.

    Args:
        v: ``[N, D, H, W]`` pixel embeddings of the non-mixed views.
        a: ``[N, K, H, W]`` cluster assignments of the same views.
        tau: temperature (paper: 0.2).
        distributed: when ``torch.distributed`` is initialised with world size ``W > 1``, the
            prototypes span the global batch: the per-rank sums ``sum_n z_{n,k}`` are combined by
            a differentiable all-reduce (its backward all-reduces the gradient, so every rank's
            ``z`` receives the prototype gradient of every rank's loss). ``L2norm(mean) =
            L2norm(sum)``, so no global count is needed. Each rank returns the mean over its own
            ``N_local * K`` terms; with equal local sizes (checked) the ranks' average is the
            global loss and DDP's gradient averaging gives its gradient.

    Returns:
        Scalar loss (float32 unless the inputs are float64).
    """
    if not 0 < tau < math.inf:  # NaN too: the loss was NaN without a word
        raise ValueError(f"tau must be positive and finite, got {tau}")
    z = region_embeddings(v, a)  # [N, K, D]
    n, k, _ = z.shape
    world_size = _active_world()[0] if distributed else 1
    with torch.autocast(device_type=z.device.type, enabled=False):
        if world_size > 1:
            _check_equal_local_sizes(n, z.device)
            c = F.normalize(_AllReduceSum.apply(z.sum(dim=0)), dim=-1)
        else:
            c = F.normalize(z.mean(dim=0), dim=-1)  # [K, D]
        logits = z @ c.T / tau  # [N, K, K]: logits[n, k, j] = z_{n,k} . c_j / tau
        log_prob = logits.log_softmax(dim=-1)
        return -log_prob.diagonal(dim1=1, dim2=2).mean()


class RegionDiscriminationLoss(nn.Module):
    """Module form of :func:`region_discrimination_loss` (TPAMI 2023 Sec. 3).

    Args:
        tau: temperature (paper: 0.2).
        distributed: prototypes over all ranks, see :func:`region_discrimination_loss`.
    """

    def __init__(self, tau: float = 0.2, *, distributed: bool = False) -> None:
        super().__init__()
        self.tau = tau
        self.distributed = distributed

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        return region_discrimination_loss(v, a, self.tau, distributed=self.distributed)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, distributed={self.distributed}"
