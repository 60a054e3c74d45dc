"""Pre-training behaviour that a mutation review of ``engine/pretrain.py`` found untested: config
checks, the validation split, the pool comparison of a resume and what a run leaves behind."""

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_pretrain_config
from localdisc.engine.checkpoint import list_checkpoints, load_safetensors
from localdisc.engine.pretrain import _split_pool, pretrain, refuse_changed_pool
from localdisc.errors import CheckpointError, LocaldiscError


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def quiet(message: str) -> None:
    pass


# -- config checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"stage2_steps": -1}, "step counts must be >= 0"),  # it netted against stage 1's
        ({"stage1_steps": 0, "stage2_steps": 0}, "at least one training step is needed"),
        ({"pool_size": 0}, "pool_size must be >= 1, not 0"),
        ({"crop_scale": (0.9, 0.5)}, r"crop_scale must be 0 < min <= max <= 1"),
        ({"depth": 1}, "depth must be 2 to 5 encoder blocks, not 1"),
        ({"dim": 1}, "dim must be >= 2, not 1"),
        ({"val_images": -1}, "val_images must be >= 0, not -1"),
        ({"lr_halve_every": 0}, "lr_halve_every must be >= 1"),
    ],
)
def test_config_rejects_settings_a_run_cannot_use(overrides, message):
    """Each is refused when the config is made, not as a crash (or a silent oddity: a pool of
    no pixels, an empty crop range, the split flipped) after the pool has been decoded."""
    with pytest.raises(LocaldiscError, match=message):
        tiny_pretrain_config(**overrides)


def test_a_weight_of_zero_turns_a_term_off():
    """Weights are ``>= 0``: 0 is the ablation of a term (stage 2 without RD or entropy)."""
    config = tiny_pretrain_config(region_weight=0.0, entropy_weight=0.0, prior_weight=0.0)
    assert (config.region_weight, config.entropy_weight, config.prior_weight) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("size,pool_size", [(448, 512), (96, 112), (32, 32), (16, 16)])
def test_the_pool_side_is_the_size_times_8_7_rounded_to_16(size, pool_size):
    """The paper's 512 -> 448 crop at any size: rounded to the nearest multiple of 16, not down
    (a 96-px run pooled at 96 had no room for its random resized crop)."""
    assert tiny_pretrain_config(size=size, pool_size=None).resolved_pool_size == pool_size


# -- the validation split --------------------------------------------------------------------------


@pytest.mark.parametrize("n,held_out", [(19, 0), (20, 1), (100, 5), (999, 49), (5000, 50)])
def test_the_default_validation_split_is_5_percent_of_the_pool_at_most_50(n, held_out):
    """METHOD's hold-out: 5 % of the pool, at most 50 images; the rest trains."""
    train, val = _split_pool(n, tiny_pretrain_config(val_images=None))
    assert len(val) == held_out and len(train) == n - held_out
    assert sorted(train + val) == list(range(n))


def test_more_validation_images_than_the_pool_holds_leave_one_to_train_on(tmp_path, pool):
    """``val_images`` beyond the pool keeps one image for training, and the run trains."""
    train, val = _split_pool(6, tiny_pretrain_config(val_images=10))
    assert (len(train), len(val)) == (1, 5)
    config = tiny_pretrain_config(val_images=10, stage1_steps=1, stage2_steps=1)
    assert pretrain(config, tmp_path, pool=pool, log=quiet).steps == 2


# -- the pool compared on resume -------------------------------------------------------------------


def test_a_resume_on_other_files_of_the_same_count_is_refused():
    """A file replaced by another (same count, same validation names): the pool's files differ,
    and the resumed run would train on other images than its checkpoints."""
    saved = {"images": 4, "files": 4, "files_sha256": "a" * 64, "val_names": ["0.png"]}
    now = {**saved, "files_sha256": "b" * 64}
    with pytest.raises(CheckpointError, match=r"other files \(4 now, 4 then\)"):
        refuse_changed_pool(Path("run"), tiny_pretrain_config(), saved, now)
    refuse_changed_pool(Path("run"), tiny_pretrain_config(), saved, dict(saved))


def test_a_validation_name_that_only_ends_like_the_old_one_is_another_image():
    """``ab.png`` is not ``b.png`` given as a path: only a whole file name after a ``/`` is the
    same file (a name that two pool folders share became its path)."""
    saved = {"images": 4, "val_names": ["b.png"]}
    refuse_changed_pool(Path("run"), tiny_pretrain_config(), saved,
                        {"images": 4, "val_names": ["/data/x/b.png"]})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"'b.png' -> '/data/x/ab.png'"):
        refuse_changed_pool(Path("run"), tiny_pretrain_config(), saved,
                            {"images": 4, "val_names": ["/data/x/ab.png"]})  # fmt: skip


# -- what a run leaves behind ----------------------------------------------------------------------


def test_a_run_without_validation_images_still_writes_model_best(tmp_path, pool):
    """With no validation, model_best is the last model (segment and view load model_best)."""
    config = tiny_pretrain_config(val_images=0, stage1_steps=1, stage2_steps=1)
    pretrain(config, tmp_path, pool=pool, log=quiet)
    best = load_safetensors(tmp_path / "model_best.safetensors")
    last = load_safetensors(tmp_path / "model.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


def test_validation_leaves_the_model_as_training_left_it(pool):
    """Validation runs batch norm in eval mode: in training mode it updated the running
    statistics from the held-out images (they leaked into the saved model) and its loss
    depended on how the held-out images were batched."""
    from localdisc.data.views import LDViews
    from localdisc.engine.pretrain import validation_loss
    from localdisc.models.ld import LDConfig, LDModel

    torch.manual_seed(0)
    config = tiny_pretrain_config(modality="fundus")
    model = LDModel(LDConfig(width=4, dim=8, clusters=4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    views = LDViews(32, "fundus", crop_scale=tuple(config.crop_scale))
    loss = validation_loss(model, pool[:2], views, config, 2, partners=pool[2:4])
    assert model.training and loss == loss  # not NaN
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_config_without_a_modality_is_left_so_for_the_next_run(tmp_path, pool):
    """The run takes its data's modality into its own copy: the caller's config stays without
    one (a notebook reusing it for an X-ray pool next had it trained as fundus)."""
    config = tiny_pretrain_config(modality=None, stage1_steps=1, stage2_steps=1)
    pretrain(config, tmp_path, pool=pool, log=quiet)
    assert config.modality is None
    assert json.loads((tmp_path / "config.json").read_text())["pretrain"]["modality"] == "fundus"


def test_each_step_trains_and_logs_with_its_stage_s_learning_rate(tmp_path, pool, monkeypatch):
    """Adam's learning rate is set at every step (halved every 2 steps here, from lr again in
    stage 2), and a log row has its steps' stage and rate. Stage 1 is its 3 steps, not 4 taken
    from stage 2; its last figure has no cluster map (the clustering head is untrained)."""
    import csv

    used = []
    adam_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    config = tiny_pretrain_config(lr_halve_every=2, val_every=100, checkpoint_every=100,
                                  figure_every=3)  # fmt: skip
    pretrain(config, tmp_path, pool=pool, log=quiet)
    halved = [1e-3, 1e-3, 5e-4, 1e-3, 1e-3, 5e-4]
    assert used == halved
    rows = [r for r in csv.DictReader((tmp_path / "log.csv").read_text().splitlines()) if r["loss"]]
    assert [(int(r["step"]), int(r["stage"])) for r in rows] == [
        (1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]  # fmt: skip
    assert [float(r["lr"]) for r in rows] == halved
    assert all(not r["rd"] for r in rows[:3]) and all(r["rd"] for r in rows[3:])
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["clusters_00000006.png", "similarity_00000003.png",
                       "similarity_00000006.png"]  # fmt: skip


def test_a_run_resumed_from_a_checkpoint_without_its_seconds_has_no_total_time(tmp_path, pool):
    """A checkpoint of an older version does not record the seconds trained before it: the
    run's total time is then unknown (None), at its end and when the finished run is resumed,
    not the seconds of the later starts alone."""
    config = tiny_pretrain_config()
    pretrain(config, tmp_path, pool=pool, stop_at_step=2, log=quiet)
    (folder,) = list_checkpoints(tmp_path / "checkpoints")
    state = json.loads((folder / "state.json").read_text())
    del state["elapsed"]  # as an older version wrote it
    (folder / "state.json").write_text(json.dumps(state))
    assert pretrain(config, tmp_path, pool=pool, resume=True, log=quiet).elapsed is None
    again = pretrain(config, tmp_path, pool=pool, resume=True, log=quiet)
    assert again.already_finished and again.elapsed is None


def test_stage_two_weighs_its_terms_by_the_config(pool):
    """Stage 2's loss is L_PD + L_mix + region_weight L_RD + entropy_weight L_ent (METHOD 3),
    with the weights given, not the published 10 and 0.1 whatever the config says."""
    from localdisc.data.views import LDViews
    from localdisc.engine.pretrain import ld_losses
    from localdisc.models.ld import LDConfig, LDModel

    torch.manual_seed(0)
    config = tiny_pretrain_config(region_weight=3.0, entropy_weight=0.5, amp=False)
    model = LDModel(LDConfig(width=4, dim=8, clusters=4))
    views = LDViews(32, "fundus", crop_scale=tuple(config.crop_scale))
    batch = views(pool[:2], pool[2:4], generator=torch.Generator().manual_seed(0))
    terms = ld_losses(model, batch, 2, config)
    expected = terms.pd + terms.mix + 3.0 * terms.rd + 0.5 * terms.ent
    torch.testing.assert_close(terms.total, expected)
    assert terms.rd.item() > 0 and terms.ent.item() > 0


def test_a_resume_goes_on_counting_skipped_steps_and_non_finite_losses_in_a_row(
    tmp_path, pool, monkeypatch
):
    """Steps 1 and 2 non-finite, the run stopped between them: resumed, the result counts both
    skips and 4 steps trained, and the second is the second in a row (a diverging run resumed
    again and again never reached max_nonfinite)."""
    import localdisc.engine.pretrain as engine

    real, calls, lines = engine.ld_losses, [], []

    def nan_at_steps_1_and_2(model, batch, stage, config, **kwargs):
        terms = real(model, batch, stage, config, **kwargs)
        if model.training:
            calls.append(stage)
            if len(calls) in (2, 3):
                terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(engine, "ld_losses", nan_at_steps_1_and_2)
    config = tiny_pretrain_config(val_every=100)
    pretrain(config, tmp_path, pool=pool, stop_at_step=2, log=quiet)
    result = pretrain(config, tmp_path, pool=pool, resume=True, log=lines.append)
    assert (result.steps, result.trained_steps, result.skipped_steps) == (6, 4, 2)
    assert "step 2: non-finite loss, step skipped (2 in a row)" in lines
