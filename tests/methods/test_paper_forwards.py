"""Each peer objective's loss recomputed by hand from its paper's forward, with the objective's
own modules, after the online weights have moved away from the momentum copies.

A reviewer's mutations survived every earlier test: keys from the online network instead of the
momentum encoder (the two are equal at construction), DenseCL's EMA rate inverted, tau and lambda
changed, the dense queue filled with global keys, PixPro's gamma and value transform dropped,
Models Genesis restoring the clean view or regressing the corrupted one, no sigmoid, and the
views' colour jitter dropped. The constants are written out here as the papers give them, so that
a changed default fails rather than being recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import generator, torch_threads
from localdisc.data.views import normalize
from localdisc.losses.pixpro import pixpro_positive_mask
from localdisc.methods import PEER_METHODS, PeerViews, PretrainObjective
from localdisc.methods import genesis as genesis_module
from localdisc.models.ld import LDModel

SIZE = 32
gen = generator


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def objective(name: str, modality: str = "fundus", **options: object) -> PretrainObjective:
    """A tiny objective in float32 (no autocast), its online weights moved off the momentum
    copies (as after training steps), so that keys from the wrong network give other values."""
    torch.manual_seed(0)
    model = LDModel(modality=modality, dim=8, clusters=4)
    obj = PEER_METHODS[name](model, size=SIZE, modality=modality, amp=False, **options)
    g = gen(99)
    with torch.no_grad():
        for p in obj.trainable_parameters():
            scale = 0.2 * p.detach().abs().mean().clamp_min(0.01)
            p.add_(scale * torch.randn(p.shape, generator=g))
    return obj


def instances(channels: int = 3, n: int = 4, seed: int = 1) -> Tensor:
    """``n`` uint8 pool images (the ``2B`` instances of a step)."""
    return torch.randint(0, 256, (n, channels, 40, 40), generator=gen(seed), dtype=torch.uint8)


def step(obj: PretrainObjective, x: Tensor, seed: int) -> dict[str, Tensor]:
    """The objective's forward on instances ``x`` (split as the engine's ``x1, x2``)."""
    half = x.shape[0] // 2
    return obj(x[:half], x[half:], gen(seed))


def info_nce(logits_pos: Tensor, logits_neg: Tensor, tau: float) -> Tensor:
    """``mean -log(exp(l+ / tau) / (exp(l+ / tau) + sum exp(l- / tau)))`` over the rows."""
    all_logits = torch.cat([logits_pos[:, None], logits_neg], 1) / tau
    return (torch.logsumexp(all_logits, 1) - logits_pos / tau).mean()


# --- SimCLR (Chen et al., ICML 2020) ---------------------------------------------------------


def test_simclr_loss_is_nt_xent_at_tau_0_2_over_the_heads_outputs():
    # Guards SimCLR's forward: z = g(f(view)), NT-Xent (Eq. 1) with the 2N - 2 other views as
    # negatives at the temperature this package chose (0.2).
    obj = objective("simclr")
    x = instances()
    got = step(obj, x, seed=3)["loss"]
    batch = obj.views(x, 2, gen(3))
    with torch.no_grad():
        h = obj.model.encoder(batch.images)[-1].mean(dim=(2, 3))
        z = F.normalize(obj.head.mlp(h), dim=1)
    m = z.shape[0]
    sim = z @ z.T / 0.2
    sim.fill_diagonal_(float("-inf"))
    partner = (torch.arange(m) + m // 2) % m  # view 1 of image i <-> view 2 of image i
    want = (torch.logsumexp(sim, 1) - sim[torch.arange(m), partner]).mean()
    torch.testing.assert_close(got.detach(), want)
    assert obj.tau == 0.2


# --- DenseCL (Wang et al., CVPR 2021) --------------------------------------------------------


def densecl_by_hand(obj: nn.Module, x: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """DenseCL's loss (Eq. 1-3, lambda = 0.5, tau = 0.2) from the views the forward draws:
    queries from the online network on view 1, keys from the MOMENTUM network on view 2; also
    the global keys and pooled dense keys that the step should enqueue."""
    n = x.shape[0]
    batch = obj.views(x, 2, gen(seed))
    with torch.no_grad():
        fq = obj.model.encoder(batch.images[:n])[-1]
        fk = obj.momentum_encoder(batch.images[n:])[-1]
        q = F.normalize(obj.global_head.mlp(fq.mean(dim=(2, 3))), dim=1)
        k = F.normalize(obj.momentum_global_head.mlp(fk.mean(dim=(2, 3))), dim=1)
        r_raw, t_raw = obj.dense_head.net(fq), obj.momentum_dense_head.net(fk)
    tau, lam = 0.2, 0.5
    global_loss = info_nce((q * k).sum(1), q @ obj.global_queue.T, tau)
    r = F.normalize(r_raw.flatten(2), dim=1).transpose(1, 2)  # [n, S, D]
    t = F.normalize(t_raw.flatten(2), dim=1).transpose(1, 2)
    # Sec. 3.3: each query cell's positive is the key cell of most similar backbone feature.
    backbone_sim = F.normalize(fq.flatten(2), dim=1).transpose(1, 2) @ F.normalize(
        fk.flatten(2), dim=1
    )
    match = backbone_sim.argmax(dim=2)  # [n, S]
    positives = t[torch.arange(n)[:, None], match]  # [n, S, D]
    cells = r.reshape(-1, r.shape[2])
    dense_loss = info_nce((r * positives).sum(2).reshape(-1), cells @ obj.dense_queue.T, tau)
    pooled = F.normalize(t_raw.mean(dim=(2, 3)), dim=1)  # the dense queue's entries
    return (1 - lam) * global_loss + lam * dense_loss, k, pooled


def test_densecl_loss_matches_the_papers_forward_with_momentum_keys():
    # Guards: keys from the momentum encoder and heads (not the online ones), tau = 0.2,
    # lambda = 0.5, dense positives by backbone similarity, negatives from both queues.
    obj = objective("densecl", queue_size=12, shuffle_bn_groups=1)
    online = next(obj.model.encoder.parameters())
    assert not torch.allclose(online, next(obj.momentum_encoder.parameters()))
    x = instances()
    got = step(obj, x, seed=3)["loss"]
    want, _, _ = densecl_by_hand(obj, x, seed=3)
    torch.testing.assert_close(got.detach(), want)
    assert (obj.tau, obj.dense_weight, obj.momentum) == (0.2, 0.5, 0.999)


def test_densecl_weighs_its_dense_loss_by_lambda():
    # Eq. 4, L = (1 - lambda) L_global + lambda L_dense: at the default lambda = 0.5 the two
    # weights swapped gave the same loss.
    obj = objective("densecl", queue_size=12, dense_weight=0.2)
    terms = step(obj, instances(), seed=3)
    assert abs(float(terms["global"] - terms["dense"])) > 0.1
    torch.testing.assert_close(terms["loss"].detach(), 0.8 * terms["global"] + 0.2 * terms["dense"])


def test_the_projection_heads_have_the_papers_layers_at_the_encoders_width():
    # DenseCL (MoCo v2's heads, 2048 -> 2048 -> 128): global and dense heads 128 -> 128 -> 128
    # at the encoder's 128 channels, without batch norm; PixPro (BYOL's head, 2048 -> 4096 ->
    # 256): 128 -> 256 -> 128 with batch norm after the first layer.
    def layers(head: nn.Module) -> list[tuple]:
        found: list[tuple] = []
        for m in head.modules():
            if isinstance(m, nn.Linear):
                found.append(("linear", m.in_features, m.out_features))
            elif isinstance(m, nn.Conv2d):
                found.append(("conv", m.in_channels, m.out_channels))
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                found.append(("batch norm", m.num_features))
        return found

    densecl, pixpro = objective("densecl", queue_size=12), objective("pixpro")
    assert densecl.model.encoder.channels[-1] == 128
    assert layers(densecl.global_head) == [("linear", 128, 128), ("linear", 128, 128)]
    assert layers(densecl.dense_head) == [("conv", 128, 128), ("conv", 128, 128)]
    assert layers(pixpro.projector) == [("conv", 128, 256), ("batch norm", 256), ("conv", 256, 128)]


def test_densecl_enqueues_normalised_global_keys_and_pooled_dense_keys():
    # Guards the queues' contents (Sec. 3.2): the global queue takes the step's unit global keys,
    # the dense queue the L2-normalised mean of each key image's dense vectors.
    obj = objective("densecl", queue_size=12, shuffle_bn_groups=1)
    x = instances()
    _, keys, pooled = densecl_by_hand(obj, x, seed=3)
    step(obj, x, seed=3)
    obj.after_step()
    n = x.shape[0]
    assert int(obj.queue_ptr) == n
    torch.testing.assert_close(obj.global_queue[:n], keys)
    torch.testing.assert_close(obj.dense_queue[:n], pooled)
    assert not torch.allclose(pooled, keys, atol=1e-3)  # the two kinds of key differ


def test_densecl_momentum_networks_move_by_one_thousandth_towards_the_online_ones():
    # Guards MoCo's EMA, theta_k <- 0.999 theta_k + 0.001 theta_q (He et al., CVPR 2020, Eq. 2),
    # for the encoder and both heads; an inverted rate also "changed the parameters".
    obj = objective("densecl", queue_size=12)
    pairs = [
        (obj.model.encoder, obj.momentum_encoder),
        (obj.global_head, obj.momentum_global_head),
        (obj.dense_head, obj.momentum_dense_head),
    ]
    before = [
        [
            (o.detach().clone(), t.detach().clone())
            for o, t in zip(a.parameters(), b.parameters(), strict=True)
        ]
        for a, b in pairs
    ]
    obj.after_step()
    for (_, target), old in zip(pairs, before, strict=True):
        for p, (o, t) in zip(target.parameters(), old, strict=True):
            torch.testing.assert_close(p, 0.999 * t + 0.001 * o)


# --- PixPro (Xie et al., CVPR 2021) ----------------------------------------------------------


def test_pixpro_loss_matches_the_papers_forward_with_momentum_keys():
    # Guards: y = PPM(online projection) with gamma = 2 and a one-layer linear g whose outputs
    # are L2-normalised (the authors' code), keys x' from the MOMENTUM encoder and projector,
    # L = -cos(y_i, x'_j) - cos(y_j, x'_i) over the pairs within 0.7 bin diagonals (Eq. 1-5).
    obj = objective("pixpro")
    ppm = obj.propagation
    assert [type(m) for m in ppm.transform] == [nn.Conv2d]  # g: one linear layer (Table 3)
    assert ppm.transform[0].kernel_size == (1, 1)
    assert ppm.transform[0].in_channels == ppm.transform[0].out_channels == 128
    assert not torch.allclose(
        next(obj.projector.parameters()), next(obj.momentum_projector.parameters())
    )
    x = instances()
    n = x.shape[0]
    terms = step(obj, x, seed=3)
    got = terms["loss"]
    batch = obj.views(x, 2, gen(3))
    with torch.no_grad():
        proj = obj.projector(obj.model.encoder(batch.images)[-1])
        keys = obj.momentum_projector(obj.momentum_encoder(batch.images)[-1])
        values = F.normalize(ppm.transform[0](proj).flatten(2), dim=1)  # g(x_j) / |g(x_j)|
    unit = F.normalize(proj.flatten(2), dim=1)
    s = (unit.transpose(1, 2) @ unit).clamp(min=0) ** 2  # s(x_i, x_j), Eq. 4
    y = F.normalize(values @ s.transpose(1, 2), dim=1)  # y_i = sum_j s_ij g_j, unit
    k = F.normalize(keys.flatten(2), dim=1)
    grid = tuple(keys.shape[2:])
    mask = pixpro_positive_mask(batch.theta[:n], batch.theta[n:], grid, batch.image_hw, 0.7)
    assert mask.sum(dim=(1, 2)).min() > 0
    cos = y[:n].transpose(1, 2) @ k[n:] + k[:n].transpose(1, 2) @ y[n:]  # [n, i in 1, j in 2]
    m = mask.float()
    want = -((cos * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2))).mean()
    torch.testing.assert_close(got.detach(), want)
    assert ppm.gamma == 2.0 and obj.threshold == 0.7 and obj.base_momentum == 0.99
    # The log's "positives": the positive pairs per image.
    torch.testing.assert_close(terms["positives"], mask.sum(dim=(1, 2)).float().mean())


# --- Models Genesis (Zhou et al., MICCAI 2019; MedIA 2021) -----------------------------------


def test_genesis_restores_the_clean_view_from_its_corrupted_copy_through_a_sigmoid(
    monkeypatch: pytest.MonkeyPatch,
):
    # Guards the restoration task: the network sees T(x), never x itself; the MSE target is the
    # uncorrupted view x; the output ends in a sigmoid (intensities in [0, 1]).
    obj = objective("genesis", modality="xray")
    seen: list[tuple[Tensor, Tensor]] = []
    real_loss = genesis_module.restoration_loss

    def recording(reconstruction: Tensor, target: Tensor) -> Tensor:
        seen.append((reconstruction.detach(), target.detach()))
        return real_loss(reconstruction, target)

    monkeypatch.setattr(genesis_module, "restoration_loss", recording)
    inputs: list[Tensor] = []
    real_restore = obj.restore

    def restore(corrupted: Tensor) -> Tensor:
        inputs.append(corrupted.detach())
        return real_restore(corrupted)

    monkeypatch.setattr(obj, "restore", restore)
    x = instances(channels=1)
    got = step(obj, x, seed=3)["loss"]
    # The same draws by hand: the view, then the corruption, from one generator.
    g = gen(3)
    clean = obj.views(x, 1, g).raw
    corrupted = obj.corruption(clean, g)
    assert (corrupted - clean).abs().flatten(1).amax(1).gt(0.05).all()  # every image corrupted
    with torch.no_grad():
        logits = obj.reconstruction_head(obj.model.backbone(normalize(corrupted, "xray")))
    restored = torch.sigmoid(logits)
    ((reconstruction, target),) = seen
    (net_input,) = inputs
    torch.testing.assert_close(net_input, corrupted)  # the network sees T(x) ...
    torch.testing.assert_close(target, clean)  # ... and regresses x
    torch.testing.assert_close(reconstruction, restored)
    torch.testing.assert_close(got.detach(), ((restored - clean) ** 2).mean())


def test_genesis_objective_corrupts_with_the_published_probabilities():
    # Guards the authors' configuration (local_rate 0.5, nonlinear_rate 0.9, paint_rate 0.9,
    # outpaint_rate 0.8, i.e. in-painting 0.2, and a decreasing curve with probability 0.5).
    corruption = objective("genesis", modality="xray").corruption
    assert corruption.shuffle_p == 0.5 and corruption.nonlinear_p == 0.9
    assert corruption.paint_p == 0.9 and corruption.outpaint_p == 0.8
    assert corruption.invert_p == 0.5


def test_genesis_restores_colour_jittered_views_unless_jitter_is_off():
    # The restoration target is LD's view at the same setting, its colour jitter included;
    # jitter=False keeps the geometry only. A constant X-ray image (its views pad with the
    # border) stays 128 under any geometry: only the jitter moves it.
    x = torch.full((8, 1, 40, 40), 128, dtype=torch.uint8)
    jittered = objective("genesis", modality="xray").views(x, 1, gen(0)).raw
    plain = objective("genesis", modality="xray", jitter=False).views(x, 1, gen(0)).raw
    torch.testing.assert_close(plain, torch.full_like(plain, 128 / 255))
    assert (jittered - plain).abs().amax() > 0.05


# --- Views -----------------------------------------------------------------------------------


def test_peer_views_jitter_colours_and_grayscale_the_crops():
    # Guards LD's photometric family on the peers' views (colour jitter 0.4/0.4/0.4/0.02,
    # grayscale p = 0.2): the same draws without jitter give the same geometry, other pixels.
    x = instances()
    jittered = PeerViews(SIZE, "fundus")(x, 2, gen(4))
    plain = PeerViews(SIZE, "fundus", jitter=False)(x, 2, gen(4))
    assert torch.equal(jittered.theta, plain.theta)
    changed = (jittered.raw - plain.raw).abs().flatten(1).amax(1)
    assert (changed > 0.02).all(), changed
    gray = PeerViews(SIZE, "fundus", grayscale_p=1.0)(x, 2, gen(4)).raw
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    torch.testing.assert_close(gray[:, 1], gray[:, 2])
    assert not torch.allclose(plain.raw[:, 0], plain.raw[:, 1])


def test_peer_views_draw_brightness_and_contrast_factors_over_0_6_to_1_4():
    # Guards the strengths of the peers' jitter, not only that pixels change: a weaker default
    # (0.1 in LDViews) passed the test above. Every peer objective's views keep LD's
    # 0.4/0.4/0.4/0.02 and grayscale p = 0.2; on one-channel views (no saturation, hue or
    # grayscale) a view's factors are read off its pixels: brightness scales the mean and,
    # times contrast, the spread about it (the values stay inside [0, 1], so nothing clamps).
    for name in ("simclr", "densecl", "pixpro"):
        for modality in ("fundus", "xray"):
            ld = objective(name, modality).views.ld
            got = (ld.brightness, ld.contrast, ld.saturation, ld.hue, ld.grayscale_p)
            assert got == (0.4, 0.4, 0.4, 0.02, 0.2), (name, modality, got)
    x = torch.randint(77, 153, (128, 1, 40, 40), generator=gen(5), dtype=torch.uint8)
    views = objective("simclr", "xray").views
    jittered = views(x, 4, gen(6)).raw.flatten(1).double()
    plain = PeerViews(SIZE, "xray", jitter=False)(x, 4, gen(6)).raw.flatten(1).double()
    assert jittered.min() > 0 and jittered.max() < 1  # no clamping
    brightness = jittered.mean(1) / plain.mean(1)
    contrast = jittered.std(1) / plain.std(1) / brightness
    for factors in (brightness, contrast):  # 512 draws of U(0.6, 1.4)
        assert factors.min() > 0.6 - 1e-4 and factors.max() < 1.4 + 1e-4
        assert factors.min() < 0.63 and factors.max() > 1.37, (factors.min(), factors.max())
        assert abs(factors.mean() - 1.0) < 0.05


def test_peer_views_turn_the_hue_of_a_coloured_image_by_up_to_0_02_turns():
    # Guards the hue step of the peers' jitter (hue U(-0.02, 0.02) turns of the colour
    # circle): views that never applied it passed, since brightness, contrast and saturation
    # alone change the pixels. With those three off and no grayscale, a red image's views come
    # out with their hue turned (HSV hue of a red-dominant pixel: (g - b) / (max - min) / 6).
    red = torch.tensor([204, 51, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(64, 3, 40, 40)
    options = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "grayscale_p": 0.0}
    plain = PeerViews(SIZE, "fundus", jitter=False)(red, 2, gen(7)).raw
    hued = PeerViews(SIZE, "fundus", **options)(red, 2, gen(7)).raw
    turns = []
    for view in (plain, hued):
        r, g, b = view.double().unbind(1)
        delta = view.double().amax(1) - view.double().amin(1)
        coloured = delta > 0.1  # not the black padding (hue kept at the blended edges)
        assert (view.double().amax(1)[coloured] == r[coloured]).all()  # red stays dominant
        hue = torch.where(coloured, (g - b) / delta.clamp_min(1e-9) / 6, 0.0)
        turns.append(hue.flatten(1).sum(1) / coloured.flatten(1).sum(1))
    unturned, turned = turns
    assert unturned.abs().max() < 1e-4
    # 128 draws of U(-0.02, 0.02): within the range, and spread over it.
    assert turned.abs().max() < 0.02 + 1e-4
    assert turned.min() < -0.017 and turned.max() > 0.017, (turned.min(), turned.max())
