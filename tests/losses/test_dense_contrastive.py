"""DenseCL's global and dense InfoNCE against loop transcriptions of the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from localdisc.losses.dense_contrastive import (
    dense_contrastive_loss,
    dense_correspondence,
    densecl_loss,
    info_nce_loss,
    pooled_dense_keys,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x)


def reference_info_nce(q, k, queue, tau):
    """L_q = -log(exp(q.k+/tau) / (exp(q.k+/tau) + sum_k- exp(q.k-/tau))), mean over queries."""
    total = 0.0
    for i in range(q.shape[0]):
        qi, kp = unit(q[i]), unit(k[i].detach())
        pos = torch.exp(torch.dot(qi, kp) / tau)
        neg = sum(torch.exp(torch.dot(qi, queue[j]) / tau) for j in range(queue.shape[0]))
        total = total - torch.log(pos / (pos + neg))
    return total / q.shape[0]


def reference_correspondence(fq, fk):
    """For every query cell s: argmax over key cells j of cos(fq_s, fk_j), by loops."""
    n, _, h, w = fq.shape
    hk, wk = fk.shape[2:]
    out = torch.zeros(n, h * w, dtype=torch.long)
    for b in range(n):
        for s in range(h * w):
            a = fq[b, :, s // w, s % w]
            sims = [
                torch.dot(unit(a), unit(fk[b, :, j // wk, j % wk])).item() for j in range(hk * wk)
            ]
            out[b, s] = max(range(len(sims)), key=lambda j: sims[j])
    return out


def reference_dense(r, t, match, queue, tau):
    """L_r = 1/S^2 sum_s -log(exp(r_s.t+_s/tau) / (... + sum_t- exp(r_s.t-/tau))), batch mean."""
    n, _, h, w = r.shape
    wk = t.shape[3]
    total = 0.0
    for b in range(n):
        per_image = 0.0
        for s in range(h * w):
            rs = unit(r[b, :, s // w, s % w])
            j = int(match[b, s])
            tp = unit(t[b, :, j // wk, j % wk].detach())
            pos = torch.exp(torch.dot(rs, tp) / tau)
            neg = sum(torch.exp(torch.dot(rs, queue[m]) / tau) for m in range(queue.shape[0]))
            per_image = per_image - torch.log(pos / (pos + neg))
        total = total + per_image / (h * w)
    return total / n


def queue_of(k: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(k, d, generator=gen(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("n", "d", "k", "tau"), [(1, 3, 1, 0.2), (4, 5, 7, 0.2), (3, 4, 6, 0.5)])
def test_info_nce_matches_reference(seed, n, d, k, tau):
    g = gen(seed)
    q = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    key = torch.randn(n, d, generator=g, dtype=torch.float64)
    queue = queue_of(k, d, seed + 10)
    got, want = info_nce_loss(q, key, queue, tau), reference_info_nce(q, key, queue, tau)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(got, q)
    (g2,) = torch.autograd.grad(reference_info_nce(q, key, queue, tau), q)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


def test_keys_and_queue_get_no_gradient():
    g = gen(0)
    q = torch.randn(3, 4, generator=g, requires_grad=True)
    k = torch.randn(3, 4, generator=g, requires_grad=True)
    queue = F.normalize(torch.randn(5, 4, generator=g), dim=1).requires_grad_()
    info_nce_loss(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


@pytest.mark.parametrize("seed", range(3))
def test_correspondence_matches_loop_argmax(seed):
    g = gen(seed)
    fq = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    fk = torch.randn(2, 6, 2, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dense_correspondence(fq, fk), reference_correspondence(fq, fk))


def test_correspondence_recovers_a_known_permutation():
    # The key view is the query view with its cells permuted and rescaled: the argmax of the
    # cosine must find, for every query cell, the key cell it was moved to.
    g = gen(5)
    fq = torch.rand(3, 16, 4, 4, generator=g) + 0.1  # non-negative, like ReLU features
    perm = torch.randperm(16, generator=g)
    fk = torch.empty_like(fq).flatten(2)
    fk[:, :, perm] = 2.5 * fq.flatten(2)
    match = dense_correspondence(fq, fk.view_as(fq))
    assert torch.equal(match, perm.expand(3, -1))


@pytest.mark.parametrize("seed", range(3))
def test_dense_loss_matches_reference(seed):
    g = gen(seed)
    r = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(2, 4, 3, 2, generator=g, dtype=torch.float64)
    fq = torch.randn(2, 5, 2, 3, generator=g, dtype=torch.float64)
    fk = torch.randn(2, 5, 3, 2, generator=g, dtype=torch.float64)
    match = dense_correspondence(fq, fk)
    queue = queue_of(6, 4, seed + 20)
    got = dense_contrastive_loss(r, t, match, queue, 0.2)
    want = reference_dense(r, t, match, queue, 0.2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(got, r)
    (g2,) = torch.autograd.grad(reference_dense(r, t, match, queue, 0.2), r)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


def test_dense_positive_is_the_matched_cell():
    # Dense vectors equal to the backbone features: the matched key cell is the query cell's own
    # direction, so each positive logit is 1/tau and the loss has a closed form.
    d = 8
    fq = torch.eye(d, dtype=torch.float64)[:4].T.reshape(1, d, 2, 2)  # 4 orthonormal cells
    perm = torch.tensor([2, 0, 3, 1])
    fk = torch.empty_like(fq).flatten(2)
    fk[:, :, perm] = fq.flatten(2)
    fk = fk.view_as(fq)
    match = dense_correspondence(fq, fk)
    assert torch.equal(match[0], perm)
    queue = torch.eye(d, dtype=torch.float64)[4:]  # orthogonal to every cell
    got = dense_contrastive_loss(fq, fk, match, queue, 0.2)
    closed = -math.log(math.exp(5.0) / (math.exp(5.0) + 4))
    assert got.item() == pytest.approx(closed, rel=1e-12)
    # A wrong correspondence (identity instead of perm) is strictly worse.
    wrong = torch.arange(4).expand(1, 4)
    assert dense_contrastive_loss(fq, fk, wrong, queue, 0.2) > got


def test_densecl_combination_and_pooled_keys():
    g = gen(7)
    q, k = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    r, t = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    match = dense_correspondence(torch.randn(2, 3, 2, 2, generator=g), torch.rand(2, 3, 2, 2))
    queue = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    terms = densecl_loss(q, k, queue, r, t, match, queue, dense_weight=0.5)
    torch.testing.assert_close(terms.global_, info_nce_loss(q, k, queue))
    torch.testing.assert_close(terms.dense, dense_contrastive_loss(r, t, match, queue))
    torch.testing.assert_close(terms.total, 0.5 * terms.global_ + 0.5 * terms.dense)
    only_dense = densecl_loss(q, k, queue, r, t, match, queue, dense_weight=1.0)
    torch.testing.assert_close(only_dense.total, terms.dense)
    pooled = pooled_dense_keys(t)
    torch.testing.assert_close(pooled, F.normalize(t.mean(dim=(2, 3)), dim=1))
    with pytest.raises(ValueError, match="dense_weight"):
        densecl_loss(q, k, queue, r, t, match, queue, dense_weight=1.5)
    with pytest.raises(ValueError, match="expected"):
        info_nce_loss(q, k[:1], queue)
