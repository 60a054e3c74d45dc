"""The engine's training step against a plain one on the same inputs: values and gradients.

The engine's step (``ld_losses``) is built for speed: view 2 undone on the grid by one gather,
patches pooled by a reshape-mean, region embeddings by a chunked batched product, a leaner L2
normalisation, the clustering head skipped on the mixed images. The plain step here is METHOD.md
written out directly: ``F.normalize``, ``adaptive_avg_pool2d``, ``torch.rot90``/``torch.flip`` per
image, ISL as a masked similarity matrix, region embeddings through the ``[N, K, D, H, W]``
broadcast. The clustering head sees the 4B non-mixed views in both, the images region
discrimination is defined on (its batch-norm statistics are those images' in both).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_pretrain_config
from localdisc.data.views import LDViews
from localdisc.engine import precision
from localdisc.engine.pretrain import ld_losses
from localdisc.models.ld import LDConfig, LDModel


def plain_isl(x: torch.Tensor, tau: float) -> torch.Tensor:
    """ISL of METHOD.md 3 on ``N = 2M`` rows, positives ``(i, i + M)``, second operand detached."""
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    s = torch.exp(x @ x.detach().T / tau).masked_fill(eye, 0.0)
    p = s / s.sum(1, keepdim=True)
    pos = (torch.arange(n) + n // 2) % n
    negatives = ~eye & ~F.one_hot(pos, n).bool()
    log_neg = torch.where(negatives, torch.log1p(-p), torch.zeros_like(p)).sum(1)
    return -(torch.log(p[torch.arange(n), pos]) + log_neg).mean()


def plain_step(model: LDModel, images: torch.Tensor, lam, flip, rot_k, stage: int, config):
    b = lam.shape[0]
    features = model.backbone(images)
    v = F.normalize(model.embedding_head(features), dim=1)
    patches = F.normalize(F.adaptive_avg_pool2d(v, 8), dim=1)

    def rows(p: torch.Tensor) -> torch.Tensor:  # [M, D, 8, 8] -> [M * 64, D], image-major
        return p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])

    view1 = patches[: 2 * b]
    view2 = []
    for i in range(2 * b):  # view 2 = flip both axes if flip, then rot90 by k: undo in reverse
        grid = torch.rot90(patches[2 * b + i], -int(rot_k[i]), dims=(1, 2))
        view2.append(torch.flip(grid, dims=(1, 2)) if flip[i] else grid)
    pd = plain_isl(torch.cat([rows(view1), rows(torch.stack(view2))]), config.tau)
    lam4 = lam.view(-1, 1, 1, 1)
    targets = F.normalize(lam4 * view1[:b] + (1 - lam4) * view1[b:], dim=1).detach()
    mix = plain_isl(torch.cat([rows(patches[4 * b :]), rows(targets)]), config.tau)
    total = pd + mix
    if stage == 2:
        a = torch.sigmoid(model.cluster_head(features[: 4 * b]))
        a = a / a.sum(1, keepdim=True)
        z = F.normalize((a[:, :, None] * v[: 4 * b, None]).sum((-1, -2)), dim=-1)  # [N, K, D]
        c = F.normalize(z.mean(0), dim=-1)
        logits = torch.einsum("nkd,jd->nkj", z, c) / config.tau_region
        k = a.shape[1]
        rd = F.cross_entropy(logits.reshape(-1, k), torch.arange(k).repeat(4 * b))
        e = a.clamp(1e-7, 1 - 1e-7)
        ent = (-(e * torch.log2(e) + (1 - e) * torch.log2(1 - e))).mean()
        total = total + config.region_weight * rd + config.entropy_weight * ent
    return total


@pytest.mark.parametrize("stage", [1, 2])
def test_fast_step_equals_the_plain_step(stage):
    config = tiny_pretrain_config(batch=2, size=32, amp=False)  # fp32, as the plain step
    torch.manual_seed(0)
    model = LDModel(LDConfig(dim=8, clusters=4, width=8))
    model.cluster_head.requires_grad_(stage == 2)
    pool = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    batch = LDViews(32)(pool[:2], pool[2:], generator=torch.Generator().manual_seed(1))
    assert batch.flip.any() and (batch.rot_k > 0).any()  # the undo is exercised

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    fast, fast_grads = loss_and_grads(lambda: ld_losses(model, batch, stage, config).total)
    plain, plain_grads = loss_and_grads(
        lambda: plain_step(model, batch.images, batch.lam, batch.flip, batch.rot_k, stage, config)
    )
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == plain_grads.keys()
    assert any(n.startswith("cluster_head") for n in fast_grads) == (stage == 2)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_step_is_the_fp32_step_to_bf16_precision(stage, monkeypatch):
    # The step a CPU with bf16 instructions runs (emulated elsewhere: slower, same numbers).
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = LDModel(LDConfig(dim=8, clusters=4, width=8)).to(memory_format=torch.channels_last)
    pool = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    batch = LDViews(32)(pool[:2], pool[2:], generator=torch.Generator().manual_seed(1))
    losses = {}
    for amp in (False, True):
        terms = ld_losses(model, batch, stage, tiny_pretrain_config(batch=2, size=32, amp=amp))
        assert terms.total.dtype == torch.float32  # the losses reduce in float32 either way
        losses[amp] = terms.total.detach()
    assert losses[True] != losses[False]  # bf16 was used
    torch.testing.assert_close(losses[True], losses[False], rtol=2e-2, atol=0)
