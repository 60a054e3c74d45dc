"""The defaults of a pre-training are METHOD.md's published configuration (Chen et al., TPAMI
2023): `localdisc pretrain` has no option for the loss constants, so every run and every
recorded LD row takes them from here, and an edited default would pass for the method. The
peers' constants are pinned in tests/methods/test_paper_forwards.py."""

from __future__ import annotations

import pytest

from localdisc.data.views import LDViews
from localdisc.engine.pretrain import PretrainConfig
from localdisc.models.ld import LDConfig


def test_the_losses_and_schedule_default_to_method_md_s_published_values() -> None:
    config = PretrainConfig(data=["-"], modality="fundus")
    # Section 3: tau, the region softmax's 0.2, and stage 2's weights 10 L_RD + 0.1 L_ent.
    assert (config.tau, config.tau_region) == (0.1, 0.2)
    assert (config.region_weight, config.entropy_weight) == (10.0, 0.1)
    # Published schedule: Adam at 1e-3 halved every 10 000 steps, 20 000 + 80 000 steps, B = 4.
    assert (config.lr, config.lr_halve_every) == (1e-3, 10_000)
    assert (config.stage1_steps, config.stage2_steps, config.batch) == (20_000, 80_000, 4)
    assert config.lr_at(9_999) == 1e-3 and config.lr_at(10_000) == 5e-4
    # Section 2: S = 448 crops (scale 0.9-1.0) of 512 x 512 pool images.
    assert (config.size, config.resolved_pool_size, config.crop_scale) == (448, 512, (0.9, 1.0))
    # Section 1: K = 16 clusters, D = 32, the VGG16 encoder's five blocks of width 16.
    assert (config.clusters, config.dim, config.depth, config.width) == (16, 32, 5, 16)
    model = LDConfig()
    assert (model.clusters, model.dim, model.depth, model.width) == (16, 32, 5, 16)


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_the_views_default_to_method_md_s_published_augmentations(modality: str) -> None:
    views = LDViews(modality=modality)
    # Section 2: shared rotation U(-180, 180), flips p = 0.5, crops of scale 0.9-1.0 to 448.
    assert (views.size, views.rotation, views.flip_p) == (448, 180.0, 0.5)
    assert views.crop_scale == (0.9, 1.0)
    # Two photometric views: rotation U(-2, 2), jitter 0.4 / 0.4 / 0.4 / 0.02, grey p = 0.2.
    assert views.view_rotation == 2.0
    jitter = (views.brightness, views.contrast, views.saturation, views.hue)
    assert jitter == (0.4, 0.4, 0.4, 0.02)
    assert views.grayscale_p == 0.2
    # View 2's 180-degree flip (p = 0.5) and k * 90 rotation; the mix's lam ~ U(0.2, 0.8).
    assert (views.view2_flip_p, views.view2_rot90) == (0.5, True)
    assert views.lam_range == (0.2, 0.8)
