"""Each peer's forward feeds its loss the pairs its paper pairs: a loss tested alone passed with
the views crossed wrongly in the method (a reviewer's mutations of SimCLR, PixPro and DenseCL
survived every test). The networks' outputs are computed again here from the views the
forward drew, and compared with what reached the loss."""

from __future__ import annotations

import pytest
import torch

from helpers import generator
from localdisc.methods import PEER_METHODS
from localdisc.methods import densecl as densecl_module
from localdisc.methods import pixpro as pixpro_module
from localdisc.methods import simclr as simclr_module
from localdisc.methods.base import deepest_features, grouped_forward
from localdisc.models.ld import LDModel


def objective(name: str, **options):
    torch.manual_seed(0)
    model = LDModel(modality="fundus", dim=8, clusters=4)
    return PEER_METHODS[name](model, size=32, modality="fundus", amp=False, **options)


def run(obj, monkeypatch, module, loss_name: str):
    """The arguments ``module.loss_name`` got in one forward, and the views drawn for it."""
    calls, drawn = [], []
    real_loss, real_views = getattr(module, loss_name), obj.views

    def loss(*args, **kwargs):
        calls.append(args)
        return real_loss(*args, **kwargs)

    def views(*args, **kwargs):
        drawn.append(real_views(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(module, loss_name, loss)
    monkeypatch.setattr(obj, "views", views)
    g = generator(1)
    x = torch.randint(0, 256, (4, 3, 40, 40), generator=g, dtype=torch.uint8)
    obj(x[:2], x[2:], g)
    return calls[0], drawn[0]


def test_simclr_pairs_each_images_two_views(monkeypatch):
    obj = objective("simclr")
    (z, *_), batch = run(obj, monkeypatch, simclr_module, "nt_xent_loss")
    # NT-Xent's rows i and i + N are the two views of image i: the views' order.
    expected = obj.head(deepest_features(obj.model.encoder, batch.images))
    torch.testing.assert_close(z, expected)


def test_pixpro_matches_each_views_pixels_with_the_other_views_keys(monkeypatch):
    obj = objective("pixpro")
    (y1, k2, y2, k1, mask), batch = run(obj, monkeypatch, pixpro_module, "pixpro_consistency_loss")
    n = batch.images.shape[0] // 2
    with torch.no_grad():
        keys = obj.momentum_projector(deepest_features(obj.momentum_encoder, batch.images))
    y = obj.propagation(obj.projector(deepest_features(obj.model.encoder, batch.images)))
    torch.testing.assert_close(y1, y[:n])
    torch.testing.assert_close(y2, y[n:])
    torch.testing.assert_close(k2, keys[n:])  # view 1's pixels against view 2's keys
    torch.testing.assert_close(k1, keys[:n])


@pytest.mark.parametrize("groups", [1, 2])
def test_densecl_matches_query_cells_to_key_cells(monkeypatch, groups):
    obj = objective("densecl", queue_size=12, shuffle_bn_groups=groups)
    perms = []
    real_perm = densecl_module.shuffle_bn_permutation

    def permutation(*args, **kwargs):
        perms.append(real_perm(*args, **kwargs))
        return perms[-1]

    monkeypatch.setattr(densecl_module, "shuffle_bn_permutation", permutation)
    (f_query, f_key), batch = run(obj, monkeypatch, densecl_module, "dense_correspondence")
    n = batch.images.shape[0] // 2
    fq = grouped_forward(obj._query, batch.images[:n], groups)[0]
    fk = grouped_forward(obj._key, batch.images[n:], groups, perms[0])[0]
    torch.testing.assert_close(f_query, fq)  # the online network's cells ask
    torch.testing.assert_close(f_key, fk)  # the momentum network's answer
