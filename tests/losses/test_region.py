"""Region embeddings and region discrimination against direct float64 transcriptions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from localdisc.losses import RegionDiscriminationLoss, region_discrimination_loss, region_embeddings


def reference_region_embeddings(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The naive [N, K, D, H, W] broadcast of METHOD.md's z_{n,k} = L2norm(sum_p a v)."""
    sums = (a[:, :, None] * v[:, None]).sum(dim=(-2, -1))  # [N, K, D]
    return sums / sums.norm(dim=-1, keepdim=True)


def reference_region_loss(v: torch.Tensor, a: torch.Tensor, tau: float) -> torch.Tensor:
    z = reference_region_embeddings(v, a)
    n, k, _ = z.shape
    protos = []
    for j in range(k):
        mean = sum(z[i, j] for i in range(n)) / n
        protos.append(mean / mean.norm())
    total = z.new_zeros(())
    for i in range(n):
        for kk in range(k):
            logits = [torch.dot(z[i, kk], protos[j]) / tau for j in range(k)]
            log_den = torch.log(sum(torch.exp(t) for t in logits))
            total = total + (logits[kk] - log_den)
    return -total / (n * k)


def inputs(n: int, d: int, k: int, h: int, w: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, d, h, w, generator=gen, dtype=dtype), dim=1)
    a = torch.sigmoid(torch.randn(n, k, h, w, generator=gen, dtype=dtype) * 2)
    a = a / a.sum(dim=1, keepdim=True)  # the clustering head's L1 normalisation
    return v, a


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("n", "d", "k", "h", "w"), [(2, 4, 3, 5, 6), (3, 6, 5, 4, 4), (1, 3, 2, 3, 7)]
)
def test_region_embeddings_match_broadcast(seed, n, d, k, h, w):
    v, a = inputs(n, d, k, h, w, seed)
    v.requires_grad_()
    a.requires_grad_()
    got = region_embeddings(v, a)
    want = reference_region_embeddings(v, a)
    assert got.shape == (n, k, d)
    torch.testing.assert_close(got, want)
    weights = torch.randn(n, k, d, generator=torch.Generator().manual_seed(seed), dtype=v.dtype)
    g_got = torch.autograd.grad((got * weights).sum(), (v, a))
    g_want = torch.autograd.grad((want * weights).sum(), (v, a))
    for x, y in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("n", "d", "k", "h", "w", "tau"),
    [(2, 4, 3, 5, 6, 0.2), (4, 5, 4, 3, 3, 0.2), (3, 3, 2, 4, 2, 1.0)],
)
def test_region_loss_matches_reference(seed, n, d, k, h, w, tau):
    v, a = inputs(n, d, k, h, w, seed)
    v.requires_grad_()
    a.requires_grad_()
    got = region_discrimination_loss(v, a, tau)
    want = reference_region_loss(v, a, tau)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g_got = torch.autograd.grad(got, (v, a))
    g_want = torch.autograd.grad(want, (v, a))
    for x, y in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_gradient_flows_through_the_prototypes():
    # Detaching c must change the gradient, otherwise the reference check would not cover it.
    v, a = inputs(3, 4, 3, 4, 4, seed=2)
    a.requires_grad_()
    (g,) = torch.autograd.grad(region_discrimination_loss(v, a), a)
    z = region_embeddings(v, a)
    c = F.normalize(z.mean(0), dim=-1).detach()
    logits = z @ c.T / 0.2
    loss = -logits.log_softmax(-1).diagonal(dim1=1, dim2=2).mean()
    (g_detached,) = torch.autograd.grad(loss, a)
    assert not torch.allclose(g, g_detached, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_permuting_images(seed):
    v, a = inputs(5, 4, 3, 3, 3, seed)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        region_discrimination_loss(v[perm], a[perm]), region_discrimination_loss(v, a)
    )


@pytest.mark.parametrize("seed", range(3))
def test_cluster_channels_permute_consistently(seed):
    v, a = inputs(3, 4, 5, 3, 4, seed)
    perm = torch.tensor([2, 4, 0, 1, 3])
    # z is equivariant, the loss invariant, to relabelling the clusters.
    torch.testing.assert_close(region_embeddings(v, a[:, perm]), region_embeddings(v, a)[:, perm])
    torch.testing.assert_close(
        region_discrimination_loss(v, a[:, perm]), region_discrimination_loss(v, a)
    )
    # Relabelling the clusters of one image only is not a symmetry.
    a_mixed = a.clone()
    a_mixed[0] = a[0, perm]
    assert not torch.allclose(
        region_discrimination_loss(v, a_mixed), region_discrimination_loss(v, a)
    )


def test_separated_clusters_score_lower():
    # Hard, consistent clusters whose pixels embed as distinct directions beat random ones.
    n, k, d, h, w = 3, 4, 8, 4, 4
    labels = torch.arange(h * w).reshape(h, w) % k
    a = F.one_hot(labels, k).permute(2, 0, 1).float().expand(n, k, h, w)
    v = torch.eye(d)[:k][labels].permute(2, 0, 1).expand(n, d, h, w)
    v_rand, a_rand = inputs(n, d, k, h, w, seed=0, dtype=torch.float32)
    assert region_discrimination_loss(v, a) < region_discrimination_loss(v_rand, a_rand)


def test_region_embeddings_never_form_the_5d_product():
    # N=2, K=16, D=32, 512 x 512: the [N, K, D, H, W] float32 product would be 1 GiB. Record
    # every CPU allocation of forward + backward and require the total to stay far below it.
    n, k, d, h, w = 2, 16, 32, 512, 512
    five_d_bytes = n * k * d * h * w * 4
    assert five_d_bytes >= 2**30
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, d, h, w, generator=gen).requires_grad_()
    a = torch.rand(n, k, h, w, generator=gen).requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        z = region_embeddings(v, a)
        z.sum().backward()
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    assert z.shape == (n, k, d)
    assert v.grad is not None and a.grad is not None
    # This is the sum of all allocations, not a peak: the input gradients (~100 MB) are
    # allocated per image and then assembled, about 320 MB in all; the broadcast form
    # allocates > 3 GiB here.
    assert allocated < five_d_bytes / 2, f"allocated {allocated / 2**20:.0f} MiB"
    assert allocated > (v.numel() + a.numel()) * 4  # the profiler did see the gradients


def test_bf16_and_autocast_compute_in_float32():
    v, a = inputs(2, 8, 4, 6, 6, seed=1, dtype=torch.float32)
    want = region_discrimination_loss(v, a)
    got = region_discrimination_loss(v.bfloat16(), a.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, region_discrimination_loss(v.bfloat16().float(), a.bfloat16().float())
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_autocast = region_discrimination_loss(v, a)
    assert got_autocast.dtype == torch.float32
    torch.testing.assert_close(got_autocast, want, rtol=1e-6, atol=1e-6)


def test_module_and_validation():
    v, a = inputs(2, 3, 2, 3, 3, seed=0)
    mod = RegionDiscriminationLoss(tau=0.5)
    torch.testing.assert_close(mod(v, a), region_discrimination_loss(v, a, 0.5))
    torch.testing.assert_close(
        region_discrimination_loss(v, a, distributed=True), region_discrimination_loss(v, a)
    )
    with pytest.raises(ValueError, match="agree"):
        region_embeddings(v, a[:, :, :2])
    with pytest.raises(ValueError, match="tau"):
        region_discrimination_loss(v, a, tau=-1.0)
    # K = 1: one cluster is always "discriminated", loss log(1) = 0.
    assert math.isclose(region_discrimination_loss(v, a[:, :1]).item(), 0.0, abs_tol=1e-12)


@pytest.mark.parametrize("tau", [0.0, -0.2, math.inf, math.nan])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(tau):
    # tau = inf made every logit 0: the loss log K for any embedding, and no gradient at all.
    v, a = inputs(2, 3, 2, 3, 3, seed=0)
    with pytest.raises(ValueError, match="tau must be positive and finite"):
        region_discrimination_loss(v, a, tau=tau)
    with pytest.raises(ValueError, match="tau must be positive and finite"):
        RegionDiscriminationLoss(tau=tau)(v, a)
