"""DenseCL: global InfoNCE with a negative queue plus dense InfoNCE over matched feature cells.

X. Wang, R. Zhang, C. Shen, T. Kong, L. Li, "Dense Contrastive Learning for Self-Supervised
Visual Pre-Training", CVPR 2021, Sec. 3.2-3.4. Built on MoCo v2 (He et al., CVPR 2020; Chen et
al., arXiv 2003.04297): a query encoder sees view 1, a momentum (key) encoder sees view 2, and
negatives come from queues of past keys.

- Global (MoCo) term, for a query ``q``, its positive key ``k+`` and queued keys ``k-``::

      L_q = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{k-} exp(q.k- / tau)) )

- Dense term over the ``S_h x S_w`` grid of the dense projection head's outputs ``r_s`` (query)
  and ``t`` (key)::

      L_r = 1/S^2 sum_s -log( exp(r_s.t+_s / tau)
                              / (exp(r_s.t+_s / tau) + sum_{t-} exp(r_s.t- / tau)) )

  The positive key ``t+_s`` of query cell ``s`` is the key cell whose BACKBONE feature (before
  the dense head) is most similar to the query cell's: ``argmax_j cos(f1_s, f2_j)`` (Sec. 3.3).
  Each negative ``t-`` is the pooled dense-head output of a view of a different image (a dense
  queue with one vector per past key image).

- ``L = (1 - lambda) L_q + lambda L_r`` with ``lambda = 0.5`` and ``tau = 0.2`` (the paper's
  defaults; MoCo v2's temperature).

All vectors are L2-normalised here; keys and queues are used without gradient. Losses are means
over queries (and cells), as ``F.cross_entropy`` with target 0 on ``[l_pos, l_neg]`` logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DenseCLTerms",
    "dense_contrastive_loss",
    "dense_correspondence",
    "densecl_loss",
    "info_nce_loss",
    "pooled_dense_keys",
]

#: The paper's temperature (MoCo v2) and weight of the dense term.
TAU = 0.2
DENSE_WEIGHT = 0.5


def _f32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce_loss(q: Tensor, k: Tensor, queue: Tensor, tau: float = TAU) -> Tensor:
    """MoCo's InfoNCE: query ``q[i]``'s positive is ``k[i]``, its negatives every queue row.

    Args:
        q: ``[N, D]`` queries (normalised here, gradient flows).
        k: ``[N, D]`` positive keys (normalised here, detached).
        queue: ``[K, D]`` negative keys (detached; expected unit vectors).
        tau: temperature.
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q, k [N, D] and queue [K, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(queue.shape)}"
        )
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(_f32(q), dim=1)
        k = F.normalize(_f32(k.detach()), dim=1)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ _f32(queue.detach()).T
        logits = torch.cat([l_pos, l_neg], 1) / tau
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target)


@torch.no_grad()
def dense_correspondence(f_query: Tensor, f_key: Tensor) -> Tensor:
    """Index of the most similar key cell for every query cell (DenseCL Sec. 3.3).

    Args:
        f_query: ``[N, C, H, W]`` backbone features of view 1.
        f_key: ``[N, C, H', W']`` backbone features of view 2 (same images, same order).

    Returns:
        ``[N, H*W]`` int64: ``match[n, s] = argmax_j cos(f_query[n, :, s], f_key[n, :, j])``
        with cells flattened in raster order.
    """
    if f_query.dim() != 4 or f_key.dim() != 4 or f_query.shape[:2] != f_key.shape[:2]:
        raise ValueError(
            f"expected [N, C, H, W] maps of the same N and C, got {tuple(f_query.shape)} and "
            f"{tuple(f_key.shape)}"
        )
    fq = F.normalize(_f32(f_query).flatten(2), dim=1)
    fk = F.normalize(_f32(f_key).flatten(2), dim=1)
    return torch.bmm(fq.transpose(1, 2), fk).argmax(dim=2)


def pooled_dense_keys(t: Tensor) -> Tensor:
    """Dense-queue entries for key outputs ``t`` ``[N, D, H, W]``: ``L2norm(mean over cells)``."""
    return F.normalize(_f32(t.detach()).mean(dim=(2, 3)), dim=1)


def dense_contrastive_loss(
    r: Tensor, t: Tensor, match: Tensor, queue: Tensor, tau: float = TAU
) -> Tensor:
    """DenseCL's dense InfoNCE, averaged over all query cells of all images.

    Args:
        r: ``[N, D, H, W]`` dense query vectors (normalised over ``D`` here, gradient flows).
        t: ``[N, D, H', W']`` dense key vectors (normalised here, detached).
        match: ``[N, H*W]`` index of each query cell's positive key cell
            (:func:`dense_correspondence`).
        queue: ``[K, D]`` negatives (pooled key vectors of other images), detached.
        tau: temperature.
    """
    n, d = r.shape[:2]
    if t.shape[:2] != (n, d) or match.shape != (n, r.shape[2] * r.shape[3]):
        raise ValueError(
            f"shape mismatch: r {tuple(r.shape)}, t {tuple(t.shape)}, match {tuple(match.shape)}"
        )
    with torch.autocast(device_type=r.device.type, enabled=False):
        rq = F.normalize(_f32(r).flatten(2), dim=1).transpose(1, 2)  # [N, S, D]
        tk = F.normalize(_f32(t.detach()).flatten(2), dim=1).transpose(1, 2)  # [N, S', D]
        positives = torch.gather(tk, 1, match[:, :, None].expand(-1, -1, d))  # [N, S, D]
        l_pos = (rq * positives).sum(2, keepdim=True)  # [N, S, 1]
        l_neg = rq @ _f32(queue.detach()).T  # [N, S, K]
        logits = torch.cat([l_pos, l_neg], 2).flatten(0, 1) / tau
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=r.device)
        return F.cross_entropy(logits, target)


class DenseCLTerms(NamedTuple):
    total: Tensor
    global_: Tensor
    dense: Tensor


def densecl_loss(
    q: Tensor,
    k: Tensor,
    global_queue: Tensor,
    r: Tensor,
    t: Tensor,
    match: Tensor,
    dense_queue: Tensor,
    *,
    tau: float = TAU,
    dense_weight: float = DENSE_WEIGHT,
) -> DenseCLTerms:
    """``(1 - lambda) L_q + lambda L_r`` (DenseCL Eq. 3 with ``lambda = dense_weight``)."""
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
    lg = info_nce_loss(q, k, global_queue, tau)
    ld = dense_contrastive_loss(r, t, match, dense_queue, tau)
    return DenseCLTerms((1.0 - dense_weight) * lg + dense_weight * ld, lg, ld)
