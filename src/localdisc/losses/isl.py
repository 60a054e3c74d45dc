"""Instance-spreading criterion (ISL), the contrastive core of local discrimination.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (arXiv
2108.09440), Sec. 3 (patch discrimination); the criterion follows Ye et al.'s instance-spreading
loss. Patch discrimination and hypersphere mixup both reduce to it (``patch.py``, ``mixup.py``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["InstanceSpreadingLoss", "isl_loss"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 are promoted to float32 (sums of exps/logs); float64 stays float64.
    return torch.promote_types(dtype, torch.float32)


def _active_world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _check_equal_local_sizes(n: int, device: torch.device) -> None:
    # all_gather needs equal shapes on every rank, and the DDP gradient average is only the global
    # loss's gradient when every rank holds the same number of rows. One tiny collective (max of
    # n and of -n) catches a mismatch on every rank at once, instead of a hang or wrong numbers.
    sizes = torch.tensor([n, -n], dtype=torch.int64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if sizes[0].item() != n or -sizes[1].item() != n:
        raise ValueError(
            f"distributed ISL needs the same number of vectors on every rank; this rank has {n}, "
            f"the ranks range from {-sizes[1].item()} to {sizes[0].item()}"
        )


def _gather_keys(keys: Tensor, world_size: int) -> Tensor:
    """All-gather the (already detached) key vectors of every rank, in rank order."""
    keys = keys.contiguous()
    bufs = [torch.empty_like(keys) for _ in range(world_size)]
    # No autograd through the gather: the keys are sg(x_j), so no gradient is owed to other ranks.
    dist.all_gather(bufs, keys)
    return torch.cat(bufs, dim=0)


def isl_loss(x: Tensor, tau: float = 0.1, *, distributed: bool = False) -> Tensor:
    r"""Instance-spreading criterion over ``N = 2M`` unit vectors paired as ``(i, i + M)``.

    With ``sg`` the stop-gradient on the second operand (METHOD.md Sec. 3; paper Sec. 3)::

        s_ij = exp(x_i . sg(x_j) / tau)                 for j != i
        Z_i  = sum_{j != i} s_ij
        L    = -(1/N) sum_i [ log(s_{i,pos(i)} / Z_i)
                              + sum_{j not in {i, pos(i)}} log(1 - s_ij / Z_i) ]

    It is evaluated on one ``[N, N]`` logit matrix with the diagonal masked: ``log Z_i`` by
    log-sum-exp, ``log(1 - p_ij)`` as ``log1p(-p_ij)`` with ``p_ij = exp(logit_ij - log Z_i)``.
    ``p_ij`` is clamped to ``1 - eps`` (machine epsilon of the compute dtype) so that a negative
    that takes all of ``Z_i`` gives a large finite term instead of ``-inf``; with unit vectors and
    ``tau = 0.1`` that only happens for near-duplicate negatives, and the clamp then stops that
    term's gradient.

    Because only the first operand carries gradient, row ``i`` of the loss sends gradient to
    ``x_i`` alone.

    Args:
        x: ``[N, D]`` vectors, expected on the unit sphere (they are not re-normalised here).
            bf16/fp16 inputs are computed in float32, autocast is disabled inside.
        tau: temperature.
        distributed: when ``torch.distributed`` is initialised with world size ``W > 1``, the
            negatives span the global batch: every rank passes its own ``[N_local, D]`` (equal
            sizes, pairs ``(i, i + N_local/2)`` within the rank), the detached vectors are
            all-gathered, and each rank computes the rows of its own vectors against all
            ``W * N_local`` of them. The global batch is then the ranks' first halves in rank
            order followed by their second halves. Each rank returns the mean over *its* rows, so
            the average over ranks is the global loss and DDP's gradient averaging yields the
            global loss's gradient. Without an initialised group it is the local loss.

    Returns:
        Scalar loss in the compute dtype (float32 unless ``x`` is float64).
    """
    if x.dim() != 2:
        raise ValueError(f"isl_loss expects x of shape [N, D], got {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2 or n % 2:
        raise ValueError(f"isl_loss needs an even number N >= 2 of vectors (pairs), got N = {n}")
    if not 0 < tau < math.inf:  # NaN too: the loss was NaN without a word
        raise ValueError(f"tau must be positive and finite, got {tau}")

    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(_compute_dtype(x.dtype))
        keys = x.detach()
        world_size, rank = _active_world() if distributed else (1, 0)
        if world_size > 1:
            _check_equal_local_sizes(n, x.device)
            keys = _gather_keys(keys, world_size)
        offset = rank * n  # column of this rank's first vector among the (gathered) keys

        logits = x @ keys.T / tau  # [n, world_size * n]
        rows = torch.arange(n, device=x.device)
        self_col = offset + rows
        pos_col = offset + (rows + n // 2) % n

        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_col] = True
        logits = logits.masked_fill(self_mask, float("-inf"))  # j != i everywhere below

        log_z = torch.logsumexp(logits, dim=1, keepdim=True)
        log_p = logits - log_z  # log(s_ij / Z_i); -inf on the diagonal
        pos_term = log_p[rows, pos_col]

        eps = torch.finfo(log_p.dtype).eps
        log_not_p = torch.log1p(-log_p.exp().clamp(max=1.0 - eps))
        neg_mask = ~self_mask
        neg_mask[rows, pos_col] = False
        neg_term = torch.where(neg_mask, log_not_p, torch.zeros_like(log_not_p)).sum(dim=1)

        return -(pos_term + neg_term).mean()


class InstanceSpreadingLoss(nn.Module):
    """Module form of :func:`isl_loss` (instance-spreading criterion, TPAMI 2023 Sec. 3).

    Args:
        tau: temperature (paper: 0.1).
        distributed: span the negatives over all ranks, see :func:`isl_loss`.
    """

    def __init__(self, tau: float = 0.1, *, distributed: bool = False) -> None:
        super().__init__()
        self.tau = tau
        self.distributed = distributed

    def forward(self, x: Tensor) -> Tensor:
        return isl_loss(x, self.tau, distributed=self.distributed)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, distributed={self.distributed}"
