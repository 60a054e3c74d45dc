"""Peer pre-training objectives: one CPU step each, gradients, momentum, exact resume."""

from __future__ import annotations

import pytest
import torch

from helpers import generator, torch_threads
from localdisc.methods import (
    PEER_METHODS,
    DenseCLObjective,
    PeerViews,
    PixProObjective,
    PretrainObjective,
)
from localdisc.models.ld import LDModel

SIZE, BATCH, POOL = 32, 2, 40
#: Small queues for the tests (the default 4096 would dominate a 32-pixel step).
OPTIONS: dict[str, dict] = {
    "densecl": {"queue_size": 12},
    "pixpro": {},
    "simclr": {},
    "genesis": {},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


gen = generator


def pool_pair(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    x = torch.randint(0, 256, (2 * BATCH, channels, POOL, POOL), generator=g, dtype=torch.uint8)
    return x[:BATCH], x[BATCH:]


def build(name: str, modality: str = "fundus", seed: int = 0) -> PretrainObjective:
    torch.manual_seed(seed)
    model = LDModel(modality=modality, dim=8, clusters=4)
    return PEER_METHODS[name](model, size=SIZE, modality=modality, **OPTIONS[name])


def momentum_modules(obj: PretrainObjective) -> list[torch.nn.Module]:
    return [m for n, m in obj.named_children() if n.startswith("momentum_")]


def test_registry_and_interface():
    assert set(PEER_METHODS) == {"simclr", "densecl", "pixpro", "genesis"}
    for name, cls in PEER_METHODS.items():
        assert cls.name == name and issubclass(cls, PretrainObjective)
    with pytest.raises(ValueError, match="modality"):
        PEER_METHODS["simclr"](LDModel(modality="xray"), size=SIZE, modality="fundus")
    with pytest.raises(ValueError, match="multiple of 16"):
        PEER_METHODS["simclr"](LDModel(), size=40, modality="fundus")
    with pytest.raises(TypeError):
        PEER_METHODS["simclr"](LDModel(), size=SIZE, modality="fundus", no_such_option=1)


@pytest.mark.parametrize("name", sorted(PEER_METHODS))
def test_one_step_then_exact_resume(name):
    modality = "xray" if name == "genesis" else "fundus"
    channels = 1 if modality == "xray" else 3
    obj = build(name, modality)
    assert obj.model.config.modality == modality
    x1, x2 = pool_pair(channels, seed=1)

    # --- one training step ---------------------------------------------------------------
    params = obj.trainable_parameters()
    momentum_ids = {id(p) for m in momentum_modules(obj) for p in m.parameters()}
    assert params and not momentum_ids & {id(p) for p in params}
    encoder_ids = {id(p) for p in obj.model.encoder.parameters()}
    assert encoder_ids <= {id(p) for p in params}
    if name == "genesis":
        assert {id(p) for p in obj.model.backbone.decoder.parameters()} <= {id(p) for p in params}
    optimizer = torch.optim.Adam(params, lr=1e-3)
    terms = obj(x1, x2, gen(5))
    assert set(terms) >= {"loss"} and len(terms) >= 2
    for value in terms.values():
        assert value.dim() == 0 and torch.isfinite(value)
    terms["loss"].backward()
    grads = [p.grad for p in obj.model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for m in momentum_modules(obj) for p in m.parameters())
    before = [
        [p.detach().clone() for p in m.parameters()] for m in momentum_modules(obj)
    ]  # fmt: skip
    optimizer.step()
    obj.after_step()
    for module, old in zip(momentum_modules(obj), before, strict=True):
        assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), old, strict=True))
    if name in ("densecl", "pixpro"):
        assert momentum_modules(obj)
    assert obj.images_per_step(BATCH) == (2 if name == "genesis" else 4) * BATCH

    # --- exact resume from state_dict ----------------------------------------------------
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    fresh = build(name, modality, seed=123)
    fresh.load_state_dict(state)
    nxt1, nxt2 = pool_pair(channels, seed=2)
    want = obj(nxt1, nxt2, gen(9))
    got = fresh(nxt1, nxt2, gen(9))
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # ... and a different generator gives a different loss.
    assert not torch.equal(obj(nxt1, nxt2, gen(10))["loss"], want["loss"])


def test_densecl_queue_is_state_and_fills_in_order():
    obj = build("densecl")
    size = obj.global_queue.shape[0]
    assert {"global_queue", "dense_queue", "queue_ptr"} <= set(obj.state_dict())
    x1, x2 = pool_pair(3, seed=3)
    obj(x1, x2, gen(0))
    obj.after_step()
    assert int(obj.queue_ptr) == 2 * BATCH
    q_norm = obj.global_queue[: 2 * BATCH].norm(dim=1)
    torch.testing.assert_close(q_norm, torch.ones_like(q_norm))
    for _ in range(2):  # wraps around a queue of 12 with 4 keys per step
        obj(x1, x2, gen(0))
        obj.after_step()
    assert int(obj.queue_ptr) == (3 * 2 * BATCH) % size
    # Evaluation forwards do not enqueue.
    obj.eval()
    with torch.no_grad():
        obj(x1, x2, gen(0))
    ptr = int(obj.queue_ptr)
    obj.after_step()
    assert int(obj.queue_ptr) == ptr


def test_densecl_shuffled_bn_changes_only_key_statistics():
    # With one group the query and key batches hold the same images in the same order; with
    # shuffling, the loss differs (different batch statistics) but stays finite.
    x1, x2 = pool_pair(3, seed=4)
    a = build("densecl")
    b = build("densecl")
    b.shuffle_bn_groups = 1
    la, lb = a(x1, x2, gen(1))["loss"], b(x1, x2, gen(1))["loss"]
    assert torch.isfinite(la) and torch.isfinite(lb) and not torch.equal(la, lb)
    assert isinstance(a, DenseCLObjective)


def test_pixpro_momentum_schedule():
    model = LDModel(dim=8, clusters=4)
    obj = PixProObjective(model, size=SIZE, modality="fundus", momentum_steps=10)
    assert obj.momentum == pytest.approx(0.99)
    obj.step.fill_(5)
    assert obj.momentum == pytest.approx(0.995)
    obj.step.fill_(10)
    assert obj.momentum == pytest.approx(1.0)
    assert "step" in obj.state_dict()
    const = PixProObjective(LDModel(dim=8, clusters=4), size=SIZE, modality="fundus")
    const.step.fill_(1000)
    assert const.momentum == 0.99


def test_peer_views_are_independent_per_view():
    views = PeerViews(SIZE, "fundus")
    x = pool_pair(3, seed=6)[0]
    batch = views(x, 2, gen(0))
    assert batch.images.shape == (2 * BATCH, 3, SIZE, SIZE)
    assert batch.raw.min() >= 0 and batch.raw.max() <= 1
    assert batch.theta.shape == (2 * BATCH, 2, 3) and batch.image_hw == (POOL, POOL)
    assert not torch.allclose(batch.theta[:BATCH], batch.theta[BATCH:])
    again = views(x, 2, gen(0))
    assert torch.equal(again.images, batch.images)
