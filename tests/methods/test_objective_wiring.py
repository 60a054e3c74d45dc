"""How the pre-training engine builds and drives a peer objective: DenseCL's queue from the
training pool, Models Genesis at the run's crop scale, PixPro's momentum over the run's progress
(its time budget included)."""

from __future__ import annotations

import pytest

from helpers import tiny_pretrain_config, torch_threads
from localdisc.data.pool import synthetic_pool
from localdisc.engine.checkpoint import load_latest_checkpoint
from localdisc.engine.pretrain import build_objective, pretrain
from localdisc.methods import PixProObjective
from localdisc.methods.densecl import QUEUE_SIZE, queue_size_for
from localdisc.models.ld import LDModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def peer_config(method: str, **overrides: object):
    modality = "xray" if method == "genesis" else "fundus"
    kw: dict = dict(method=method, modality=modality, stage1_steps=1, stage2_steps=0,
                    val_images=0, log_every=100, checkpoint_every=1000)  # fmt: skip
    kw.update(overrides)
    return tiny_pretrain_config(**kw)


def model_for(config) -> LDModel:
    return LDModel(modality=config.modality, dim=config.dim, clusters=config.clusters)


def test_densecl_queue_follows_the_training_pool(tmp_path):
    config = peer_config("densecl", batch=2)
    # the methods benchmark's 950 training images: 118 keys, not 4096 (~4 of every image)
    assert build_objective(config, model_for(config), train_images=950).global_queue.shape[0] == 118
    big = build_objective(config, model_for(config), train_images=40_000)
    assert big.global_queue.shape[0] == QUEUE_SIZE
    pretrain(config, tmp_path / "run", pool=synthetic_pool(40, "fundus", 48), log=lambda m: None)
    _, tensors = load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    queue = tensors["objective"]["global_queue"]  # 40 training images (val_images=0)
    assert queue.shape[0] == queue_size_for(40, 2 * config.batch) == 5


def test_genesis_views_take_the_run_crop_scale(tmp_path):
    config = peer_config("genesis", crop_scale=(0.2, 0.35))
    objective = build_objective(config, model_for(config))
    assert tuple(objective.views.ld.crop_scale) == (0.2, 0.35)
    default = peer_config("genesis")
    assert tuple(build_objective(default, model_for(default)).views.ld.crop_scale) == (0.9, 1.0)
    lines: list[str] = []
    pretrain(config, tmp_path / "run", pool=synthetic_pool(4, "xray", 48), log=lines.append)
    assert not [line for line in lines if "keeps the crops" in line]  # it does not: it takes them


@pytest.fixture
def recorded_progress(monkeypatch):
    """The ``progress`` of every PixPro after_step the engine makes."""
    seen: list[float | None] = []
    after_step = PixProObjective.after_step

    def recording(self, progress=None):
        seen.append(progress)
        return after_step(self, progress)

    monkeypatch.setattr(PixProObjective, "after_step", recording)
    return seen


def test_pixpro_progress_follows_the_steps(tmp_path, recorded_progress):
    config = peer_config("pixpro", stage1_steps=3)
    pretrain(config, tmp_path / "run", pool=synthetic_pool(4, "fundus", 48), log=lambda m: None)
    # the fraction before each step, as the step-count schedule had it (k / K, k = 0, 1, 2)
    assert recorded_progress == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_pixpro_progress_follows_a_time_budget(tmp_path, recorded_progress):
    # A budget ends the run long before its 100 000 steps: the momentum must still reach ~1.
    config = peer_config("pixpro", stage1_steps=100_000, stage1_seconds=1.5)
    pretrain(config, tmp_path / "run", pool=synthetic_pool(4, "fundus", 48), log=lambda m: None)
    steps = len(recorded_progress)
    assert 1 <= steps < 1000 and None not in recorded_progress
    assert recorded_progress == sorted(recorded_progress)
    assert all(p >= k / config.total_steps for k, p in enumerate(recorded_progress))
    assert 0.5 < recorded_progress[-1] <= 1.0
