"""Peer pre-training objectives: one CPU step each, gradients, momentum, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import generator, torch_threads
from localdisc.errors import InputError
from localdisc.methods import (
    PEER_METHODS,
    DenseCLObjective,
    PeerViews,
    PixProObjective,
    PretrainObjective,
)
from localdisc.methods import densecl as densecl_module
from localdisc.methods.base import grouped_forward, shuffle_bn_permutation
from localdisc.methods.densecl import QUEUE_SIZE, queue_size_for
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


def test_densecl_queues_start_as_unit_vectors_and_each_step_replaces_the_oldest_keys():
    # MoCo's queue: random unit vectors at first, then first in, first out; a queue whose
    # writes all went to its first rows kept the rest's random keys as negatives for ever.
    obj = build("densecl")  # 12 keys, 2 * BATCH = 4 enqueued per step
    for queue in (obj.global_queue, obj.dense_queue):
        torch.testing.assert_close(queue.norm(dim=1), torch.ones(12))
    x1, x2 = pool_pair(3, seed=3)
    for step in range(3):
        before = [obj.global_queue.clone(), obj.dense_queue.clone()]
        obj(x1, x2, gen(step))
        obj.after_step()
        new = torch.zeros(12, dtype=torch.bool)
        new[4 * step : 4 * step + 4] = True
        for queue, was in zip((obj.global_queue, obj.dense_queue), before, strict=True):
            assert (queue[new] != was[new]).any(dim=1).all()
            assert torch.equal(queue[~new], was[~new])


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


def test_pixpro_momentum_without_progress_follows_its_own_step_count():
    # after_step() updates at the momentum of the steps done before it, then counts the step:
    # BYOL's m = 1 - (1 - 0.99) (cos(pi k / K) + 1) / 2 at k = 0, then k = 1 of K = 10.
    obj = build("pixpro")
    obj.momentum_steps = 10
    with torch.no_grad():
        for p in obj.model.encoder.parameters():
            p.add_(1.0)  # the online encoder away from its momentum copy
    for k in range(3):
        online = [p.detach().clone() for p in obj.model.encoder.parameters()]
        target = [p.detach().clone() for p in obj.momentum_encoder.parameters()]
        m = 1 - 0.01 * (math.cos(math.pi * k / 10) + 1) / 2
        obj.after_step()
        for new, t, o in zip(obj.momentum_encoder.parameters(), target, online, strict=True):
            torch.testing.assert_close(new, m * t + (1 - m) * o, rtol=0, atol=1e-6)
        assert int(obj.step) == k + 1


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


def test_peer_views_row_v_times_n_plus_i_is_view_v_of_image_i():
    # The layout every objective pairs by (view 1 of the instances, then view 2): constant
    # images keep their value under any geometry (X-ray views pad with the border).
    x = torch.stack([torch.full((1, 40, 40), v, dtype=torch.uint8) for v in (20, 120, 220)])
    raw = PeerViews(SIZE, "xray", jitter=False)(x, 2, gen(0)).raw
    want = torch.tensor([20, 120, 220] * 2, dtype=torch.float32).view(6, 1, 1, 1) / 255
    torch.testing.assert_close(raw, want.expand_as(raw))


def test_peer_views_scale_uint16_as_uint8_and_refuse_unknown_scales():
    # uint16 was taken as floats and every view clipped to white.
    views = PeerViews(SIZE, "fundus")
    x = pool_pair(3, seed=6)[0]
    wide = x.to(torch.int32).mul(257).to(torch.uint16)  # 255 -> 65535: the same intensities
    a, b = views(x, 2, gen(0)), views(wide, 2, gen(0))
    assert torch.allclose(a.raw, b.raw, atol=1e-5) and b.raw.std() > 0.01
    with pytest.raises(InputError, match="int64"):
        views(x.long(), 2, gen(0))


def test_densecl_queue_size_follows_the_training_pool():
    # The methods benchmark's 950 training images: a 4096 queue held ~4 keys of every image.
    assert queue_size_for(950, 4) == 950 // 8 == 118
    assert queue_size_for(950, 8) == 118
    assert queue_size_for(32_768, 8) == QUEUE_SIZE == 4096
    assert queue_size_for(1_000_000, 8) == QUEUE_SIZE
    assert queue_size_for(32_767, 8) < QUEUE_SIZE
    assert queue_size_for(20, 8) == 8  # never below the keys a step enqueues
    assert queue_size_for(1, 2) == 2
    with pytest.raises(ValueError, match="train_images"):
        queue_size_for(0, 4)


def test_densecl_resumes_a_checkpoint_with_another_queue_length():
    # A run saved with a 12-key queue resumes exactly in an objective built with another length
    # (older runs hold 4096 keys; the engine now sizes new queues from the pool).
    obj = build("densecl")
    x1, x2 = pool_pair(3, seed=3)
    for _ in range(2):
        obj(x1, x2, gen(0))
        obj.after_step()
    torch.manual_seed(0)
    fresh = DenseCLObjective(LDModel(dim=8, clusters=4), size=SIZE, modality="fundus", queue_size=4)
    fresh.load_state_dict(obj.state_dict())
    assert fresh.global_queue.shape == fresh.dense_queue.shape == (12, 128)
    assert torch.equal(fresh.global_queue, obj.global_queue)
    assert torch.equal(fresh(x1, x2, gen(1))["loss"], obj(x1, x2, gen(1))["loss"])
    fresh.after_step()
    obj.after_step()
    assert int(fresh.queue_ptr) == int(obj.queue_ptr) == (3 * 2 * BATCH) % 12


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
@pytest.mark.parametrize("n", range(1, 11))
def test_shuffle_bn_permutation_mixes_the_query_chunks(n, groups):
    # Every key chunk of 2+ rows holds rows of 2+ query chunks (grouped_forward's chunks).
    query_chunks = torch.arange(n).chunk(max(1, min(groups, n)))
    owner = torch.cat([torch.full((len(c),), i) for i, c in enumerate(query_chunks)])
    drawn = set()
    for seed in range(20):
        perm = shuffle_bn_permutation(n, groups, gen(seed))
        assert sorted(perm.tolist()) == list(range(n))
        drawn.add(tuple(perm.tolist()))
        for chunk in perm.chunk(len(query_chunks)):
            if len(query_chunks) > 1 and len(chunk) > 1:
                assert len(set(owner[chunk].tolist())) > 1, (perm, chunk)
    if max(map(len, query_chunks)) > 1:  # random, drawn from the generator
        assert len(drawn) > 1
        again = shuffle_bn_permutation(n, groups, gen(7))
        assert torch.equal(again, shuffle_bn_permutation(n, groups, gen(7)))


def test_grouped_forward_shuffles_the_chunks_and_returns_each_rows_output_in_its_row():
    # MoCo's shuffled batch norm: the chunks hold the permuted rows, the outputs come back in
    # the rows' order, so that DenseCL's key i is instance i's (the permutations of B = 2 are
    # their own inverses, which hid a missing inverse).
    x = torch.arange(8.0)[:, None]
    chunks: list[torch.Tensor] = []

    def identity(chunk: torch.Tensor) -> tuple[torch.Tensor]:
        chunks.append(chunk)
        return (chunk,)

    drawn = [shuffle_bn_permutation(8, 2, gen(seed)) for seed in range(3)]
    for perm in (torch.tensor([1, 2, 0, 3, 5, 6, 7, 4]), *drawn):
        chunks.clear()
        (out,) = grouped_forward(identity, x, 2, perm)
        assert torch.equal(out, x), perm
        assert torch.equal(torch.cat(chunks), x[perm]) and len(chunks) == 2


def test_densecl_shuffled_bn_key_chunks_mix_query_chunks(monkeypatch):
    # At B = 2 (4 instances, 2 chunks) a uniform permutation gave the key chunks the query
    # chunks' own image sets in 1/3 of the steps: no shuffling at all then.
    perms = []

    def recording(fn, x, groups, perm=None):
        if perm is not None:
            perms.append(perm.clone())
        return grouped_forward(fn, x, groups, perm)

    grouped_forward = densecl_module.grouped_forward
    monkeypatch.setattr(densecl_module, "grouped_forward", recording)
    obj = build("densecl")
    x1, x2 = pool_pair(3, seed=4)
    with torch.no_grad():
        for seed in range(12):
            obj(x1, x2, gen(seed))
    assert len(perms) == 12
    for perm in perms:
        assert sorted(perm.tolist()) == list(range(2 * BATCH))
        for chunk in perm.chunk(2):  # query chunks: instances {0, 1} and {2, 3}
            assert len({int(i) // BATCH for i in chunk}) == 2, perm


def test_every_objective_takes_the_run_progress():
    for name in sorted(PEER_METHODS):
        modality = "xray" if name == "genesis" else "fundus"
        obj = build(name, modality)
        x1, x2 = pool_pair(1 if modality == "xray" else 3, seed=1)
        obj(x1, x2, gen(0))
        obj.after_step(progress=0.25)
        obj.after_step(None)


def test_pixpro_momentum_follows_the_run_progress():
    # Under a time budget the step count K is a cap the run never reaches: the schedule must
    # follow the fraction of the run done that the engine passes, not k / K.
    obj = build("pixpro")
    obj.momentum_steps = 100_000
    assert obj.momentum_at(0.0) == pytest.approx(0.99)
    assert obj.momentum_at(0.5) == pytest.approx(0.995)
    assert obj.momentum_at(1.0) == pytest.approx(1.0)
    assert obj.momentum_at(1.5) == obj.momentum_at(1.0) and obj.momentum_at(-1) == 0.99
    x1, x2 = pool_pair(3, seed=1)
    obj(x1, x2, gen(0))["loss"].backward()
    torch.optim.Adam(obj.trainable_parameters(), lr=1e-2).step()
    online = [p.detach().clone() for p in obj.model.encoder.parameters()]
    target = [p.detach().clone() for p in obj.momentum_encoder.parameters()]
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    obj.after_step(progress=0.5)
    for t_new, t_old, o in zip(obj.momentum_encoder.parameters(), target, online, strict=True):
        torch.testing.assert_close(t_new, 0.995 * t_old + 0.005 * o)
    assert int(obj.step) == 1
    # Without progress: the step count, as before.
    assert obj.momentum == pytest.approx(obj.momentum_at(1 / 100_000))
    # Resume: the saved state and the same progress give the same update.
    fresh = build("pixpro", seed=5)
    fresh.momentum_steps = 100_000
    fresh.load_state_dict(state)
    fresh.after_step(progress=0.5)
    for a, b in zip(
        fresh.momentum_encoder.parameters(), obj.momentum_encoder.parameters(), strict=True
    ):
        assert torch.equal(a, b)
