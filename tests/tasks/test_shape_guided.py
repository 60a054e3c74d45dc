import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import tiny_pretrain_config
from localdisc.cli import app
from localdisc.data.preprocess import resize_image
from localdisc.data.synthetic import synthetic_fundus
from localdisc.engine.pretrain import pretrain
from localdisc.errors import InputError, LocaldiscError
from localdisc.models.ld import LDModel
from localdisc.priors.atlas import fuse_atlases, intensity_posterior
from localdisc.tasks.shape_guided import (
    RefineConfig,
    ShapeGuidedMaps,
    _refine_network,
    refine,
    refine_size,
    refined_probability,
    run_size,
    segment,
    segment_all,
)

# The wall-clock time that starts each plain progress line (ProgressBar, not on a terminal).
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def spy_fit(monkeypatch) -> dict:
    """What the refinement trains on: ``x`` and ``y`` of its call of ``fit_pseudo_labels``."""
    import localdisc.tasks.shape_guided as shape_guided

    fitted: dict = {}
    real = shape_guided.fit_pseudo_labels

    def fit(network, x, y, **kwargs):
        fitted.update(x=x, y=y)
        return real(network, x, y, **kwargs)

    monkeypatch.setattr(shape_guided, "fit_pseudo_labels", fit)
    return fitted


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from localdisc.data.pool import synthetic_pool

    out = tmp_path_factory.mktemp("shape") / "run"
    config = tiny_pretrain_config(prior="simulated:vessels", prior_count=4, clusters=8)
    pretrain(config, out, pool=synthetic_pool(6, "fundus", 48), log=lambda m: None)
    return out


def test_segment_gives_both_outputs_inside_the_fov(run):
    model = LDModel.from_pretrained(run)
    fundus = synthetic_fundus(80, seed=5)
    maps = segment(model, fundus.image, fundus.fov, size=run_size(run))
    assert run_size(run) == 48
    for prob in (maps.prob_a, maps.prob_b):
        assert prob.shape == (80, 80) and prob.dtype == np.float32
        assert prob.min() >= 0 and prob.max() <= 1
        assert not prob[~fundus.fov].any()
    derived = segment(model, fundus.image)  # FOV from the image when not given
    assert not derived.prob_a[~derived.fov].any()


def test_segment_sees_a_fundus_image_as_the_pool_does_its_roi_resized(run, monkeypatch):
    # The whole frame was resized to the run's size: a retina in a wide black frame was
    # squashed across, at another scale than pre-training saw it (its pool crops the ROI).
    from localdisc.data.pool import prepare_pool_image

    model = LDModel.from_pretrained(run)
    fundus = synthetic_fundus(80, seed=5)
    wide = np.zeros((80, 140, 3), np.float32)
    wide[:, 30:110] = fundus.image
    seen = []
    real = model.embed_and_cluster
    monkeypatch.setattr(model, "embed_and_cluster", lambda x: seen.append(x) or real(x))
    maps = segment(model, wide, size=48)
    pooled = prepare_pool_image(wide, "fundus", 48).transpose(1, 2, 0) / 255
    assert seen[0].shape[:2] == (48, 48)
    assert np.abs(seen[0] - pooled).max() < 1 / 255 + 1e-6  # the pool's uint8 rounding
    assert maps.prob_a.shape == (80, 140) and not maps.prob_a[:, :14].any()  # outside the box


def test_pseudo_labels_trust_agreement_and_doubt_disagreement():
    fov = np.ones((1, 4), dtype=bool)
    maps = ShapeGuidedMaps(np.array([[1.0, 0.0, 1.0, 0.6]], dtype=np.float32),
                           np.array([[1.0, 0.0, 0.0, 0.6]], dtype=np.float32), fov)  # fmt: skip
    label, weight = maps.pseudo_label()
    assert label.tolist() == [[True, False, False, True]]
    np.testing.assert_allclose(weight, [[1.0, 1.0, 0.0, 0.2]], atol=1e-6)


def test_pseudo_labels_count_the_prior_frequency_as_one_vote():
    fov = np.ones((1, 3), dtype=bool)
    ld = np.array([[0.6, 0.4, 1.0]], dtype=np.float32)
    prior = np.array([[0.0, 1.0, 1.0]], dtype=np.float32)
    maps = ShapeGuidedMaps(ld, ld, fov, prior)
    # LD and the prior each weigh half: LD's unsure 0.6 where the prior never is falls to 0.3,
    # LD's 0.4 where the prior always is rises to 0.7; where both are sure, full weight.
    np.testing.assert_allclose(maps.consensus, [[0.3, 0.7, 1.0]], atol=1e-6)
    label, weight = maps.pseudo_label()
    assert label.tolist() == [[False, True, True]]
    np.testing.assert_allclose(weight, [[0.4, 0.4, 1.0]], atol=1e-6)
    # With the intensity posterior, three votes: LD, the prior, the grey level.
    intensity = np.array([[0.9, 0.1, 1.0]], dtype=np.float32)
    maps = ShapeGuidedMaps(ld, ld, fov, prior, intensity)
    np.testing.assert_allclose(maps.consensus, [[0.5, 0.5, 1.0]], atol=1e-6)


def test_prior_masks_only_for_a_prior_that_keeps_its_pose(tmp_path, run):
    from dataclasses import asdict

    from localdisc.priors import load_prior
    from localdisc.tasks.shape_guided import run_prior_masks

    assert run_prior_masks(run) is None  # a vessel tree, turned any way: says nothing of where

    def lung_run(name, **overrides):
        config = tiny_pretrain_config(prior="simulated:lungs", modality="xray", **overrides)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"pretrain": asdict(config)}))
        return folder

    assert run_prior_masks(lung_run("free", prior_pose="free")) is None
    masks = run_prior_masks(lung_run("kept", prior_pose="kept"))
    assert masks.shape == (200, 48, 48) and masks.dtype == bool  # at the run's pool size
    # The bank it trained against: 200 masks from its seed (3), not from seed 0.
    bank = load_prior("simulated:lungs", 48, count=200, seed=3)[:, 0].numpy()
    np.testing.assert_array_equal(masks, bank)
    frequency = masks.mean(0)
    assert frequency[24, 12] > 0.9 and frequency[24, 38] > 0.9  # inside both lungs, nearly always
    assert frequency[2, 2] == 0 and frequency[24, 24] < 0.1  # a corner, the mediastinum
    # Loaded once per prior and size (every seed's run shares them), and not to be written to.
    assert run_prior_masks(lung_run("again", prior_pose="kept")) is masks
    assert not masks.flags.writeable
    # segment() fuses those that best match LD's map onto it, carries them to the image's size
    # and adds the intensity posterior they mix, inside the FOV: the pseudo-labels' votes.
    model = LDModel.from_pretrained(run)
    fov = np.zeros((80, 80), bool)
    fov[:, :40] = True
    image = synthetic_fundus(80, seed=5).image
    maps = segment(model, image, fov, prior=masks)
    fused = fuse_atlases(masks, 0.5 * (maps.prob_a + maps.prob_b))[0]
    expected = resize_image(fused, 80) * fov
    np.testing.assert_allclose(maps.prior, expected, atol=1e-6)
    np.testing.assert_allclose(
        maps.intensity, intensity_posterior(image, expected) * fov, atol=1e-6
    )
    assert maps.prior.max() > 0.9 and not (maps.prior[~fov].any() or maps.intensity[~fov].any())


def test_prior_masks_are_the_bank_the_run_trained_against(tmp_path):
    """``--prior-count 16`` (the demo's) and the run's seed pick a simulated prior's masks:
    segmentation used to vote with load_prior's default 200 from seed 0 whatever the run
    trained with."""
    from dataclasses import asdict

    from localdisc.priors import load_prior
    from localdisc.tasks.shape_guided import run_prior_bank, run_prior_masks

    def lung_run(name, drop=(), **overrides):
        config = asdict(tiny_pretrain_config(prior="simulated:lungs", modality="xray",
                                             prior_pose="kept", **overrides))  # fmt: skip
        for key in drop:  # a config.json written before the setting existed
            del config[key]
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"pretrain": config}))
        return folder

    small = lung_run("small", prior_count=16, seed=5)
    assert run_prior_bank(small) == {"count": 16, "seed": 5}
    masks = run_prior_masks(small)
    trained = load_prior("simulated:lungs", 48, count=16, seed=5)[:, 0].numpy()
    assert masks.shape == (16, 48, 48)
    np.testing.assert_array_equal(masks, trained)
    # The cache keeps the banks apart: another seed of the same prior and size is another bank.
    other = run_prior_masks(lung_run("other", prior_count=16, seed=6))
    np.testing.assert_array_equal(other[:-1], masks[1:])  # masks 6..21 against 5..20
    assert not np.array_equal(other, masks)
    # A run whose config lacks the settings: PretrainConfig's defaults (200 from seed 0).
    old = lung_run("old", drop=("prior_count", "seed"))
    assert run_prior_bank(old) == {"count": 200, "seed": 0}
    np.testing.assert_array_equal(
        run_prior_masks(old), load_prior("simulated:lungs", 48)[:, 0].numpy()
    )


def test_masks_of_both_outputs_count_one_half_as_the_written_masks_do():
    from localdisc.tasks.predict import mask_png

    prob = np.array([[0.2, 0.5, 0.8]], dtype=np.float32)
    maps = ShapeGuidedMaps(prob, prob, np.ones((1, 3), bool))
    written = mask_png(prob) > 0
    assert maps.mask_a.tolist() == maps.mask_b.tolist() == written.tolist() == [[0, 1, 1]]


def test_segment_all_moves_a_kept_pose_run_sideways_before_the_votes(run, monkeypatch, capsys):
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.priors import load_prior
    from localdisc.priors.atlas import shift_sideways

    model = LDModel.from_pretrained(run)
    images = [synthetic_fundus(80, seed=s).image for s in range(2)]
    alone = [segment(model, im, size=48) for im in images]
    for got, want in zip(segment_all(model, images, size=48), alone, strict=True):
        np.testing.assert_array_equal(got.prob_a, want.prob_a)  # no prior: as segment()
        assert got.prior is None
    masks = load_prior("simulated:lungs", 48)[:, 0].numpy()
    seen = []

    def offset(images, maps):
        seen.append(maps)
        return 0.1  # right by 8 of 80 pixels

    monkeypatch.setattr(shape_guided, "sideways_offset", offset)
    moved = segment_all(model, images, size=48, prior=masks, log=lambda m: None, progress=True,
                        run_name="run-1")  # fmt: skip
    # A bar for each pass over the images, each whole line stamped (a log file showed none).
    printed = capsys.readouterr().out
    for title in ("segment run-1", "prior votes run-1"):
        assert re.search(rf"^{STAMP} {title}: image 2/2 \(100%\)", printed, re.M), printed
    np.testing.assert_allclose(seen[0][1], alone[1].consensus)  # estimated on LD's own maps
    for got, want, image in zip(moved, alone, images, strict=True):
        for prob, before in ((got.prob_a, want.prob_a), (got.prob_b, want.prob_b)):
            np.testing.assert_allclose(prob, shift_sideways(before, 8) * want.fov)
        votes = shape_guided.atlas_votes(image, got.prob_a, got.prob_b, got.fov, masks)
        np.testing.assert_allclose(got.prior, votes.prior)  # the votes follow the moved maps
    seen.clear()
    held = segment_all(model, images, size=48, prior=masks, offset=0.0, log=lambda m: None)
    assert not seen  # a given offset replaces the estimate
    for got, want in zip(held, alone, strict=True):
        np.testing.assert_allclose(got.prob_a, want.prob_a)
        assert got.prior is not None


def test_refinement_trains_on_pseudo_labels(run):
    model = LDModel.from_pretrained(run)
    images = [synthetic_fundus(48, seed=s).image for s in range(2)]
    maps = [segment(model, im) for im in images]
    config = RefineConfig(steps=2, size=32, device="cpu")
    network = refine(run, images, maps, config, log=lambda m: None)
    prob = refined_probability(network, images[0], maps[0].fov)
    assert prob.shape == (48, 48) and prob.min() >= 0 and prob.max() <= 1
    encoder = load_encoder(run)
    assert any(not torch.equal(v, network.encoder.state_dict()[k]) for k, v in encoder.items())


def test_the_refinement_sees_a_fundus_image_in_the_box_segment_gave_ld(run, monkeypatch):
    # After segment() took the ROI box, the refinement (LD's encoder) was still fed the whole
    # frame squashed to a square: a retina 3 times as wide in its frame at 0.35 of its width
    # (reviewer).
    import localdisc.tasks.shape_guided as shape_guided

    model = LDModel.from_pretrained(run)
    wide = np.zeros((48, 144, 3), np.float32)
    wide[:, 48:96] = synthetic_fundus(48, seed=1).image
    maps = [segment(model, wide, size=48)]
    fitted = spy_fit(monkeypatch)
    network = refine(run, [wide], maps, RefineConfig(steps=1, size=32, device="cpu"),
                     log=lambda m: None)  # fmt: skip
    y0, y1, x0, x1 = shape_guided.seen_box(wide, "fundus")
    assert x1 - x0 <= 48 + 2 * 16  # the retina's box (16 px of margin), not the frame
    expected = resize_image(wide[y0:y1, x0:x1], 32).transpose(2, 0, 1)
    assert np.allclose(fitted["x"][0].numpy(), expected)
    prob = refined_probability(network, wide, maps[0].fov)
    assert prob.shape == (48, 144) and not prob[:, :x0].any() and not prob[:, x1:].any()


def test_the_refinement_s_batch_norm_recalibration_is_logged_and_done(run, monkeypatch):
    """The batch-norm recalibration after the last refinement step, a pass over every image,
    said nothing; and the line alone was checked, not that the statistics are recomputed."""
    import copy

    from localdisc.engine.batch_norm import recalibrate_batch_norm

    model = LDModel.from_pretrained(run)
    images = [synthetic_fundus(48, seed=s).image for s in range(2)]
    maps = [segment(model, im) for im in images]
    fitted = spy_fit(monkeypatch)
    networks = {}
    for recalibrate, lines in ((True, 1), (False, 0)):
        said: list[str] = []
        config = RefineConfig(steps=1, size=32, device="cpu", recalibrate=recalibrate)
        networks[recalibrate] = refine(run, images, maps, config, log=said.append)
        line = "recalibrating batch norm over the 2 image(s) trained on ..."
        assert said.count(line) == lines, said
    # The same training (same seed): the recalibrated network's statistics are those of the
    # other's recomputed over the images it trained on, and differ from its moving averages.
    expected = copy.deepcopy(networks[False])
    recalibrate_batch_norm(expected, fitted["x"], batch=8)
    stats = [k for k in expected.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert stats
    got, moving = networks[True].state_dict(), networks[False].state_dict()
    for key in stats:
        torch.testing.assert_close(got[key], expected.state_dict()[key])
    assert any(not torch.allclose(got[key], moving[key]) for key in stats)


def test_the_refinement_takes_uint8_images_as_segment_does(run):
    # refine() and refined_probability() cast uint8 to float 0 to 255 (reviewer).
    model = LDModel.from_pretrained(run)
    eight = (synthetic_fundus(48, seed=2).image * 255).round().astype(np.uint8)
    scaled = eight.astype(np.float32) / 255
    maps = [segment(model, scaled)]
    config = RefineConfig(steps=1, size=32, device="cpu")
    a = refine(run, [eight], maps, config, log=lambda m: None)
    b = refine(run, [scaled], maps, config, log=lambda m: None)
    assert np.array_equal(refined_probability(a, eight, maps[0].fov),
                          refined_probability(b, scaled, maps[0].fov))  # fmt: skip


def test_refinement_sees_a_washed_out_radiograph_as_the_original(tmp_path):
    from localdisc.data.pool import synthetic_pool
    from localdisc.data.synthetic import synthetic_xray

    run = tmp_path / "xray"
    config = tiny_pretrain_config(modality="xray", prior="simulated:lungs", prior_count=4)
    pretrain(config, run, pool=synthetic_pool(4, "xray", 48), log=lambda m: None)
    model = LDModel.from_pretrained(run)
    image = synthetic_xray(48, seed=1).image
    washed_out = 0.84 + 0.16 * image  # as JSRT's worst 8-bit conversions
    maps = segment(model, image)

    def refined(train_on: np.ndarray, stretch: bool) -> list[np.ndarray]:
        """The network trained on ``train_on``, applied to the image and its washed-out copy."""
        config = RefineConfig(steps=2, size=32, device="cpu", stretch_contrast=stretch)
        network = refine(run, [train_on], [maps], config, log=lambda m: None)
        return [refined_probability(network, x, maps.fov, stretch=stretch)
                for x in (image, washed_out)]  # fmt: skip

    on_image, on_washed_out = refined(image, True)
    np.testing.assert_allclose(on_washed_out, on_image, atol=1e-5)
    # Trained on the copy: the same up to float noise, which Adam's first steps magnify.
    np.testing.assert_allclose(refined(washed_out, True)[0], on_image, atol=1e-2)
    on_image, on_washed_out = refined(image, False)
    assert np.abs(on_washed_out - on_image).max() > 0.1


def test_refine_config_rejects_an_unknown_schedule_and_counts_below_one():
    with pytest.raises(ValueError, match="schedule"):
        RefineConfig(schedule="step")
    for bad in ({"steps": -1}, {"batch": 0}, {"lr": 0.0}, {"size": 3}):
        with pytest.raises(InputError, match="invalid refinement config"):
            RefineConfig(**bad)


def load_encoder(run):
    from localdisc.engine.checkpoint import load_safetensors

    return load_safetensors(run / "encoder.safetensors")


def test_cli_trains_from_a_stage_one_run_and_segments(tmp_path, run):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        image = (synthetic_fundus(64, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"eye{i}.png")
    out = tmp_path / "sg"
    result = CliRunner().invoke(app, [
        "shape-guided", "train", "--data", str(folder), "--prior", "simulated:vessels",
        "--out", str(out), "--from", str(run), "--stage2-steps", "2", "--size", "32",
        "--batch", "1", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    # The log says which weights it started from and that the network is that run's.
    assert f"stage 2 from the weights of {run} (stage 1 skipped)" in result.output
    assert "modality fundus" in result.output and "depth 5" in result.output
    segmented = tmp_path / "masks"
    result = CliRunner().invoke(app, [
        "shape-guided", "segment", "--model", str(out), "--images", str(folder),
        "--out", str(segmented), "--refine-steps", "1", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = {p.name for p in segmented.iterdir()}
    for suffix in ("A_prob", "A_mask", "B_prob", "B_mask", "uncertainty", "refined_mask"):
        assert f"eye0_{suffix}.png" in names
    mask = np.asarray(Image.open(segmented / "eye1_A_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    # Again without refinement: the first call's refined maps do not stay as if they were its own.
    result = CliRunner().invoke(app, [
        "shape-guided", "segment", "--model", str(out), "--images", str(folder),
        "--out", str(segmented), "--refine-steps", "0", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not list(segmented.glob("*_refined_*")) and (segmented / "eye0_A_mask.png").is_file()


def test_cli_resume_of_a_run_from_another_does_not_read_that_run_again(tmp_path, run):
    # The checkpoint holds every weight, config.json the network: the --from run, moved away,
    # refused the resume ("no such folder"; reviewer).
    import shutil

    base, out = tmp_path / "base", tmp_path / "sg"
    shutil.copytree(run, base)
    args = ["shape-guided", "train", "--data", "synthetic_fundus:2", "--prior",
            "simulated:vessels", "--out", str(out), "--from", str(base), "--stage2-steps", "2",
            "--size", "32", "--pool-size", "48", "--batch", "1", "--device", "cpu",
            "--prior-count", "4"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    shutil.rmtree(base)
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "finished at step 2 already; nothing to do" in again.output


def test_cli_trains_a_small_network_at_the_scale_it_is_given(tmp_path):
    out = tmp_path / "sg"
    result = CliRunner().invoke(app, [
        "shape-guided", "train", "--data", "synthetic_fundus:2", "--prior", "simulated:vessels",
        "--out", str(out), "--stage1-steps", "1", "--stage2-steps", "1", "--size", "32",
        "--pool-size", "48", "--crop-scale", "0.5", "1.0", "--depth", "2", "--width", "8",
        "--batch", "1", "--device", "cpu", "--prior-count", "12", "--lr", "0.0005",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["pretrain"]
    assert config["pool_size"] == 48 and config["crop_scale"] == [0.5, 1.0]
    assert config["prior_count"] == 12
    assert config["lr"] == 0.0005  # a diverged run is told to lower --lr, which it lacked
    model = LDModel.from_pretrained(out)
    assert (model.config.depth, model.config.width) == (2, 8)


def test_cli_names_a_bad_prior(tmp_path):
    result = CliRunner().invoke(app, [
        "shape-guided", "train", "--data", "synthetic_fundus:4", "--prior", "simulated:spleen",
        "--out", str(tmp_path / "x"), "--stage1-steps", "1", "--stage2-steps", "1",
        "--size", "32", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code != 0
    assert "spleen" in str(result.exception) or "spleen" in result.output


def test_segment_holds_outputs_to_an_organ_prior_topology(tmp_path, monkeypatch, run):
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.data.pool import synthetic_pool
    from localdisc.data.synthetic import synthetic_xray
    from localdisc.tasks.shape_guided import segment_images

    heart = tmp_path / "heart"
    config = tiny_pretrain_config(prior="simulated:heart", prior_count=4, modality="xray")
    pretrain(config, heart, pool=synthetic_pool(4, "xray", 48), log=lambda m: None)
    Image.fromarray((synthetic_xray(64, 0).image[..., 0] * 255).astype("uint8")).save(
        tmp_path / "cxr.png"
    )
    # Output A as two pieces, the larger with a hole: one piece without holes is what a heart has.
    yy, xx = np.mgrid[:64, :64]
    big = (yy - 32) ** 2 + (xx - 20) ** 2 <= 12**2
    hole = (yy - 32) ** 2 + (xx - 20) ** 2 <= 3**2
    small = (yy - 32) ** 2 + (xx - 52) ** 2 <= 5**2
    prob = np.where(big & ~hole | small, 0.9, 0.1).astype(np.float32)
    fov = np.ones((64, 64), bool)
    monkeypatch.setattr(shape_guided, "segment", lambda *a, **k: ShapeGuidedMaps(prob, prob, fov))

    def a_mask(run_dir, out, **kw):
        logs = []
        segment_images(run_dir, [tmp_path / "cxr.png"], out, device="cpu", log=logs.append, **kw)
        return np.asarray(Image.open(out / "cxr_A_mask.png")) > 0, " ".join(logs)

    held, log = a_mask(heart, tmp_path / "held", refine_steps=1)
    assert (held == big).all() and "applied to A and refined: 1 piece, no holes" in log
    assert (tmp_path / "held" / "cxr_refined_mask.png").is_file()
    # Without refinement the log says only what was done (it said "A and refined" regardless).
    held, log = a_mask(heart, tmp_path / "plain")
    assert (held == big).all() and "applied to A: 1 piece, no holes" in log
    assert "and refined" not in log
    held, log = a_mask([heart, heart], tmp_path / "mean")
    assert (held == big).all() and "applied to the mean A: 1 piece, no holes" in log
    assert "and refined" not in log
    assert (a_mask(heart, tmp_path / "raw", topology=False)[0] == (prob > 0.5)).all()
    # A vessel prior (a tree, with loops) is left as it is.
    vessels, log = a_mask(run, tmp_path / "tree")
    assert (vessels == (prob > 0.5)).all() and "topology" not in log
    # An ensemble of a heart run and a vessel run would hold A to no one prior: refused, each
    # run's topology read plainly (it printed PriorTopology(components=1, holes=False)). The
    # vessel run as an X-ray one: runs of two modalities are refused before (their own test).
    import shutil

    tree = tmp_path / "tree_run"
    shutil.copytree(run, tree)
    record = json.loads((tree / "config.json").read_text())
    record["model"]["modality"] = "xray"
    (tree / "config.json").write_text(json.dumps(record))
    with pytest.raises(LocaldiscError, match="different topologies") as refused:
        a_mask([heart, tree], tmp_path / "mixed")
    message = str(refused.value)
    assert f"{heart}: 1 piece, no holes; {tree}: none held (no organ prior)" in message
    assert "PriorTopology" not in message and "--no-topology" in message


def test_segment_with_several_runs_writes_each_and_their_mean(tmp_path, monkeypatch, run):
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    # The first run finds the left half at 0.9, the second the top half at 0.7.
    yy, xx = np.mgrid[:32, :32]
    probs = iter([np.where(xx < 16, 0.9, 0.0), np.where(yy < 16, 0.7, 0.0)])
    fov = np.ones((32, 32), bool)

    def fake_segment(*args, **kwargs):
        prob = next(probs).astype(np.float32)
        return ShapeGuidedMaps(prob, prob, fov)

    monkeypatch.setattr(shape_guided, "segment", fake_segment)
    out = tmp_path / "ensemble"
    written = segment_images([run, run], [tmp_path / "eye.png"], out, device="cpu",
                             log=lambda m: None)  # fmt: skip
    assert {p.name for p in written} == {"eye_A_mask.png", "eye_B_mask.png"}

    def read(path):
        return np.asarray(Image.open(path)).astype(np.float32) / 65535  # 16-bit maps

    first, second = read(out / "run-0" / "eye_A_prob.png"), read(out / "run-1" / "eye_A_prob.png")
    assert first[0, 0] == pytest.approx(0.9, abs=1 / 255) and second[0, 31] == pytest.approx(
        0.7, abs=1 / 255
    )
    mean = read(out / "eye_A_prob.png")
    assert np.abs(mean - (first + second) / 2).max() <= 1 / 255
    # Only the top left, where both find it (mean 0.8), passes 0.5; where one run alone finds it
    # (0.45, 0.35) does not.
    assert (np.asarray(Image.open(out / "eye_A_mask.png")) > 127).sum() == 16 * 16  # 8-bit 0/255
    assert (out / "eye_uncertainty.png").is_file()


def test_an_ensemble_of_runs_of_two_modalities_is_refused_before_any_image(tmp_path, run):
    # A fundus and an X-ray run (both tree priors: one topology) were averaged without a word.
    import shutil

    from localdisc.tasks.shape_guided import segment_images

    xray = tmp_path / "xray_run"
    shutil.copytree(run, xray)
    record = json.loads((xray / "config.json").read_text())
    record["model"]["modality"] = "xray"
    (xray / "config.json").write_text(json.dumps(record))
    message = f"the runs are of different modalities ({run}: fundus; {xray}: xray)"
    image = tmp_path / "eye.png"
    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(image)
    with pytest.raises(LocaldiscError, match=re.escape(message)):
        segment_images([run, xray], [image], tmp_path / "out", device="cpu", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_the_ensemble_counts_the_runs_whose_prior_masks_vote(monkeypatch):
    import localdisc.tasks.shape_guided as shape_guided

    banks = {"a": np.zeros((2, 8, 8), bool), "b": None, "c": np.ones((1, 8, 8), bool)}
    monkeypatch.setattr(shape_guided, "run_prior_masks", lambda run, log, size: banks[run])
    said: list[str] = []
    masks = shape_guided.ensemble_prior_masks(["a", "b", "c"], said.append)
    assert masks.shape == (2, 8, 8)  # a's two masks are one (the same), c's
    assert said == ["the mean maps vote with the prior masks of 2 runs together: 2 masks"]


def test_segment_takes_a_uint8_image_at_a_working_size(run):
    # resize_image made it float 0 to 255, which the model refused, telling the caller to pass
    # the uint8 array itself (reviewer).
    model = LDModel.from_pretrained(run)
    fundus = synthetic_fundus(64, seed=3)
    eight = (fundus.image * 255).round().astype(np.uint8)
    as_uint8 = segment(model, eight, size=48)
    as_float = segment(model, eight.astype(np.float32) / 255, size=48)
    assert np.array_equal(as_uint8.prob_a, as_float.prob_a)
    assert np.array_equal(as_uint8.prob_b, as_float.prob_b)


def test_refine_size_rounds_up_to_the_segmenters_multiple():
    assert refine_size(74, 3) == 76 and refine_size(64, 3) == 64
    assert refine_size(40, 5) == 48 and refine_size(1, 5) == 16


def test_refinement_of_a_weight_file_takes_its_encoder_at_a_size_the_network_takes(run):
    weights = run / "stage1.safetensors"
    logs: list[str] = []
    network = _refine_network(weights, 40, logs.append)
    assert network.config.size == 48 and "refinement at 48 px, not 40" in logs[0]
    expected = LDModel.from_pretrained(weights).encoder.state_dict()
    assert all(torch.equal(v, network.encoder.state_dict()[k]) for k, v in expected.items())
    assert not all(torch.equal(v, load_encoder(run)[k]) for k, v in expected.items())


def test_segment_takes_a_weight_file_and_any_working_size(tmp_path, run):
    from localdisc.tasks.shape_guided import segment_images

    image = (synthetic_fundus(40, seed=1).image * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "eye.png")
    out = tmp_path / "masks"
    logs: list[str] = []
    # 40 is no multiple of 16: the refinement network works at 48 (it used to crash).
    segment_images(run / "model_best.safetensors", [tmp_path / "eye.png"], out, size=40,
                   refine_steps=1, device="cpu", log=logs.append)  # fmt: skip
    assert any("refinement at 48 px" in line for line in logs)
    mask = np.asarray(Image.open(out / "eye_refined_mask.png"))
    assert mask.shape == (40, 40)
    for size in (0, -8):
        with pytest.raises(LocaldiscError, match="--size must be at least 16 pixels"):
            segment_images(run, [tmp_path / "eye.png"], out, size=size, log=logs.append)


def test_segment_names_images_that_use_a_small_part_of_the_range(tmp_path, run):
    from localdisc.tasks.shape_guided import segment_images

    fundus = synthetic_fundus(40, seed=1).image
    Image.fromarray((fundus * 4095).astype("uint16")[..., 1]).save(tmp_path / "dim.png")
    logs: list[str] = []
    segment_images(run, [tmp_path / "dim.png"], tmp_path / "out", device="cpu",
                   log=logs.append)  # fmt: skip
    assert any(line.startswith("note: 1 image(s) use under 1/8 of the intensity range (dim)")
               for line in logs)  # fmt: skip


def test_segment_says_when_an_image_carries_an_exif_orientation(tmp_path, run):
    from localdisc.tasks.shape_guided import segment_images

    image = Image.fromarray((synthetic_fundus(40, seed=1).image * 255).astype("uint8"))
    exif = image.getexif()
    exif[274] = 8
    image.save(tmp_path / "eye.jpg", exif=exif)
    logs: list[str] = []
    segment_images(run, [tmp_path / "eye.jpg"], tmp_path / "out", device="cpu",
                   log=logs.append)  # fmt: skip
    assert any(line.startswith("note: 1 image(s) carry an EXIF orientation") and
               "masks are written in the pixels as stored" in line for line in logs)  # fmt: skip


@pytest.mark.parametrize("inside", [True, False])
def test_segment_into_the_image_folder_leaves_its_outputs_alone(tmp_path, run, inside):
    """An output folder in (or equal to) the image folder: a second call, and each run of an
    ensemble after the first, used to take the outputs for images (an ensemble crashed)."""
    from localdisc.tasks.shape_guided import segment_images

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        image = (synthetic_fundus(32, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"eye{i}.png")
    out = folder / "seg" if inside else folder
    for runs in ([run], [run, run], [run]):
        written = segment_images(runs, [folder], out, device="cpu", log=lambda m: None)
        assert sorted(p.name for p in written) == [
            f"eye{i}_{o}_mask.png" for i in range(2) for o in "AB"
        ]
    assert not list(folder.rglob("*_A_prob_A_prob.png"))


def test_refinement_takes_images_of_any_channel_count(run):
    """LD segments a grey fundus photograph (repeated to RGB); the refinement used to crash on
    it, or on a mix of grey and colour images."""
    model = LDModel.from_pretrained(run)
    colour = synthetic_fundus(48, seed=0).image
    grey = colour.mean(-1, keepdims=True)
    images = [colour, grey, grey[..., 0]]
    maps = [segment(model, im) for im in images]
    config = RefineConfig(steps=1, size=32, device="cpu")
    network = refine(run, images, maps, config, log=lambda m: None)
    probs = [refined_probability(network, im, m.fov) for im, m in zip(images, maps, strict=True)]
    assert all(p.shape == (48, 48) for p in probs)
    np.testing.assert_allclose(probs[1], probs[2], atol=1e-6)


def test_segment_refuses_a_negative_refinement_and_checks_every_run_first(tmp_path, run):
    """A negative --refine-steps used to write "refined" masks of a network that never
    trained; an ensemble's mistyped last run failed only after the others had segmented."""
    from localdisc.errors import CheckpointError
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    out = tmp_path / "masks"
    with pytest.raises(LocaldiscError, match="--refine-steps must be 0"):
        segment_images(run, [tmp_path / "eye.png"], out, refine_steps=-3, log=lambda m: None)
    for later in (tmp_path / "no-run", run / "no-such.safetensors"):
        missing = "no-run: no such folder|no-such.safetensors: weights file not found"
        with pytest.raises(CheckpointError, match=missing):
            segment_images([run, later], [tmp_path / "eye.png"], out, topology=False,
                           device="cpu", log=lambda m: None)  # fmt: skip
    assert not out.exists()  # refused before anything was written
    out.write_text("a file")  # it used to fail at the first write, after LD had segmented
    with pytest.raises(LocaldiscError, match="a file, not a folder"):
        segment_images(run, [tmp_path / "eye.png"], out, log=lambda m: None)


def test_segment_says_when_a_run_has_no_shape_prior(tmp_path, run):
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    plain = tmp_path / "plain"  # the shape-guided run's weights, its config without the prior
    plain.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["pretrain"] = {**config["pretrain"], "prior": None}
    (plain / "config.json").write_text(json.dumps(config))
    (plain / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    for folder, warned in ((plain, True), (run, False)):
        logs: list[str] = []
        segment_images(folder, [tmp_path / "eye.png"], tmp_path / folder.name, device="cpu",
                       log=logs.append)  # fmt: skip
        assert any("without a shape prior" in line for line in logs) == warned, logs


def test_segment_refuses_weights_whose_clustering_head_never_trained(tmp_path, run):
    """stage1.safetensors (and a model_best equal to it: stage 2 ended by its budget before its
    first validation, before e0fb86b) has the clustering head of its random init: outputs A and
    B came from random weights, silently (reviewer)."""
    from localdisc.errors import CheckpointError
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    old = tmp_path / "old"  # a run whose model_best is its stage-1 model
    old.mkdir()
    for name in ("config.json", "stage1.safetensors", "model.safetensors"):
        (old / name).write_bytes((run / name).read_bytes())
    (old / "model_best.safetensors").write_bytes((run / "stage1.safetensors").read_bytes())
    no_stage2 = tmp_path / "no_stage2"
    no_stage2.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["pretrain"] = {**config["pretrain"], "stage2_steps": 0}
    (no_stage2 / "config.json").write_text(json.dumps(config))
    (no_stage2 / "model.safetensors").write_bytes((run / "stage1.safetensors").read_bytes())
    in_stage1 = tmp_path / "in_stage1"  # stopped in stage 1: no stage1.safetensors yet
    in_stage1.mkdir()
    (in_stage1 / "config.json").write_bytes((run / "config.json").read_bytes())
    (in_stage1 / "model_best.safetensors").write_bytes((run / "stage1.safetensors").read_bytes())
    folder = "give the run folder or its model.safetensors"
    refused = {
        run / "stage1.safetensors": ("the weights at the end of stage 1", folder),
        old / "model_best.safetensors": ("the same weights as stage1.safetensors", folder),
        no_stage2: ("weights of a run without stage 2", "train its stage 2 first"),
        in_stage1 / "model_best.safetensors": ("a run still in stage 1", "let it finish"),
    }
    for weights, (what, hint) in refused.items():
        with pytest.raises(CheckpointError, match=f"{what}.*clustering head never trained.*{hint}"):
            segment_images(weights, [tmp_path / "eye.png"], tmp_path / "out", device="cpu",
                           log=lambda m: None)  # fmt: skip
        assert not (tmp_path / "out").exists()
    segment_images(run / "model_best.safetensors", [tmp_path / "eye.png"], tmp_path / "best",
                   device="cpu", log=lambda m: None)  # fmt: skip
    # A run started at stage 2 (`shape-guided train --from`) has no stage1.safetensors.
    from_run = tmp_path / "from_run"
    from_run.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["pretrain"] = {**config["pretrain"], "stage1_steps": 0}
    (from_run / "config.json").write_text(json.dumps(config))
    (from_run / "model_best.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    segment_images(from_run / "model_best.safetensors", [tmp_path / "eye.png"],
                   tmp_path / "from", device="cpu", log=lambda m: None)  # fmt: skip


def test_stage_two_has_no_model_best_before_its_first_validation(tmp_path):
    # It held stage 1's best, whose clustering head never trained: segment took it (reviewer).
    from localdisc.data.pool import synthetic_pool

    config = tiny_pretrain_config(stage1_steps=3, stage2_steps=3, val_every=3)
    pool = synthetic_pool(6, "fundus", 48)
    pretrain(config, tmp_path, pool=pool, stop_at_step=4, log=lambda m: None)
    assert (tmp_path / "stage1.safetensors").is_file()
    assert not (tmp_path / "model_best.safetensors").exists()
    pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)
    assert (tmp_path / "model_best.safetensors").is_file()


def test_ensemble_uncertainty_is_zero_outside_the_fov(tmp_path, monkeypatch):
    """An ensemble of kept-pose fundus runs (an optic disc prior) gave its mean maps the prior's
    votes outside the FOV too, so its uncertainty was not 0 there as one run's is."""
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.data.pool import synthetic_pool
    from localdisc.data.preprocess import fov_from_image
    from localdisc.tasks.shape_guided import segment_images

    disc = tmp_path / "disc"
    config = tiny_pretrain_config(prior="simulated:optic_disc", prior_pose="kept", prior_count=4)
    pretrain(config, disc, pool=synthetic_pool(4, "fundus", 48), log=lambda m: None)
    image = synthetic_fundus(48, seed=2).image
    Image.fromarray((image * 255).astype("uint8")).save(tmp_path / "eye.png")
    fov = fov_from_image(np.asarray(Image.open(tmp_path / "eye.png")) / 255.0)
    assert 0.3 < fov.mean() < 0.95
    # LD's maps: unsure everywhere inside the FOV, 0 outside it (as segment() gives them).
    prob = np.where(fov, 0.4, 0.0).astype(np.float32)
    monkeypatch.setattr(shape_guided, "segment", lambda *a, **k: ShapeGuidedMaps(prob, prob, fov))
    for runs, out in (([disc], tmp_path / "one"), ([disc, disc], tmp_path / "two")):
        segment_images(runs, [tmp_path / "eye.png"], out, device="cpu", log=lambda m: None)
        uncertainty = np.asarray(Image.open(out / "eye_uncertainty.png"))
        assert not uncertainty[~fov].any(), out.name
        assert uncertainty[fov].mean() > 50 / 255 * 65535  # 16 bits


def test_a_stopped_ensemble_goes_on_from_the_run_it_stopped_in(tmp_path, monkeypatch, run):
    """Each run of an ensemble (with its refinement) used to segment every image again on every
    call; a finished run's outputs are kept while its run, images and settings are the same."""
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.tasks.shape_guided import segment_images

    def save_eye(seed):
        image = (synthetic_fundus(32, seed=seed).image * 255).astype("uint8")
        Image.fromarray(image).save(tmp_path / "eye.png")

    save_eye(0)
    real, segmented = shape_guided._segment_run, []

    def spy(run_dir, files, out_dir, *args, **kwargs):
        segmented.append(out_dir.name)
        if out_dir.name == "run-1" and len(segmented) == 2:
            raise KeyboardInterrupt  # stopped in the second run
        return real(run_dir, files, out_dir, *args, **kwargs)

    monkeypatch.setattr(shape_guided, "_segment_run", spy)
    out = tmp_path / "ensemble"

    def ensemble(**kw):
        return segment_images([run, run], [tmp_path / "eye.png"], out, device="cpu",
                              log=lambda m: None, **kw)  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        ensemble()
    assert (out / "run-0" / "segment.json").is_file()
    assert not (out / "run-1" / "segment.json").exists()
    # Where and when it was made, which the check of the settings leaves aside (kept below).
    assert json.loads((out / "run-0" / "segment.json").read_text())["environment"]["device"]
    ensemble()
    assert segmented == ["run-0", "run-1", "run-1"]  # run-0 kept, run-1 done
    assert (out / "eye_A_mask.png").is_file()
    ensemble()
    assert segmented[3:] == []  # both kept
    ensemble(size=32)
    assert segmented[3:] == ["run-0", "run-1"]  # another working size
    save_eye(1)  # the image changed
    ensemble(size=32)
    assert segmented[5:] == ["run-0", "run-1"]


def test_ensemble_uncertainty_votes_with_the_prior_masks_of_every_run(tmp_path, monkeypatch, run):
    """An ensemble's mean maps voted with the first run's prior masks only, though runs of other
    seeds (or counts) trained against other masks (:func:`run_prior_bank`)."""
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.data.io import read_image
    from localdisc.data.preprocess import fov_from_image
    from localdisc.priors import load_prior
    from localdisc.tasks.predict import prob_png
    from localdisc.tasks.shape_guided import (
        atlas_votes,
        ensemble_prior_masks,
        mean_probability,
        run_prior_masks,
        segment_images,
    )

    def disc_run(name, **settings):
        """The vessel run's weights, its config with a kept-pose optic disc prior."""
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((run / "config.json").read_text())
        config["pretrain"] = {**config["pretrain"], "prior": "simulated:optic_disc",
                              "prior_pose": "kept", **settings}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
        return folder

    def bank(count, seed):
        return load_prior("simulated:optic_disc", 48, count=count, seed=seed)[:, 0].numpy()

    first, second = disc_run("first", seed=0, prior_count=2), disc_run("second", seed=10,
                                                                       prior_count=3)  # fmt: skip
    both = np.concatenate([bank(2, 0), bank(3, 10)])
    # A retina off-centre in a wide frame: its votes are in the ROI box LD saw (a reviewer
    # showed the ensemble's were over the whole frame while each run's were in the box).
    image = np.zeros((48, 120, 3), np.float32)
    image[:, 64:112] = synthetic_fundus(48, seed=2).image
    Image.fromarray((image * 255).astype("uint8")).save(tmp_path / "eye.png")
    fov = fov_from_image(np.asarray(Image.open(tmp_path / "eye.png")) / 255.0)
    yy, xx = np.mgrid[:48, :120]
    prob = np.where((yy - 24) ** 2 + (xx - 94) ** 2 <= 6**2, 0.7, 0.3) * fov
    prob = prob.astype(np.float32)
    monkeypatch.setattr(shape_guided, "segment", lambda *a, **k: ShapeGuidedMaps(prob, prob, fov))
    out = tmp_path / "ensemble"
    logs: list[str] = []
    segment_images([first, second], [tmp_path / "eye.png"], out, device="cpu", log=logs.append)
    # The uncertainty of the mean maps as they were averaged, with the votes of both banks.
    mean = [mean_probability([out / f"run-{k}" / f"eye_{o}_prob.png" for k in range(2)])
            for o in "AB"]  # fmt: skip
    grey = read_image(tmp_path / "eye.png")[0]

    box = shape_guided.seen_box(grey, "fundus")
    assert box[2] > 40  # not the whole frame

    def uncertainty(masks, box=box):
        maps = atlas_votes(grey, *mean, fov, masks, box=box)
        return prob_png(1 - maps.pseudo_label()[1])

    written = np.asarray(Image.open(out / "eye_uncertainty.png"))
    assert not np.array_equal(uncertainty(both), uncertainty(bank(2, 0)))  # the banks differ
    np.testing.assert_array_equal(written, uncertainty(both))
    assert not np.array_equal(written, uncertainty(both, box=None))  # the whole frame's differ
    assert any("prior masks of 2 runs together: 5 masks" in line for line in logs), logs

    # Runs that share a bank vote with that bank, the same array as one run's.
    same = disc_run("same", seed=0, prior_count=2)
    assert ensemble_prior_masks([first, same], log=lambda m: None) is run_prior_masks(first)
    # Banks of nearby seeds overlap (masks 0..1 and 1..3): each mask once, the first's first.
    near = disc_run("near", seed=1, prior_count=3)
    np.testing.assert_array_equal(ensemble_prior_masks([first, near], log=lambda m: None),
                                  bank(4, 0))  # fmt: skip
    # A run free of pose (or without a prior) adds no masks, wherever it stands; none: no votes.
    free = disc_run("free", seed=20, prior_count=2, prior_pose="free")
    np.testing.assert_array_equal(ensemble_prior_masks([free, first, second]), both)
    assert ensemble_prior_masks([free, run], log=lambda m: None) is None
    # A run trained at another scale: its bank at the first's size.
    big = disc_run("big", seed=10, prior_count=3, pool_size=64)
    np.testing.assert_array_equal(ensemble_prior_masks([first, big], log=lambda m: None), both)


def test_segment_again_into_an_out_removes_the_earlier_calls_other_outputs(tmp_path, run):
    """A second `shape-guided segment` into the same --out, of fewer images or with fewer runs,
    left the first call's outputs of the other images (and an ensemble's run-K folders) beside
    its own, nothing saying which were whose; nothing recorded what made the outputs."""
    from localdisc.tasks.shape_guided import segment_images

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        image = (synthetic_fundus(32, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"eye{i}.png")
    out, logs = tmp_path / "out", []
    segment_images(run, [folder], out, refine_steps=1, device="cpu", log=logs.append)
    (out / "mine_A_prob.png").write_bytes(b"")  # a user's, listed by no call: left alone
    record = json.loads((out / "segment.json").read_text())
    assert [e["name"] for e in record["images"]] == ["eye0", "eye1"]
    assert record["runs"][0]["run"] == str(run.resolve())
    assert record["runs"][0]["prior"] == "simulated:vessels" and record["refine_steps"] == 1
    assert "NAME_refined_mask.png" in record["outputs"] and record["environment"]["device"]
    assert any("segment.json" in line for line in logs)

    segment_images([run, run], [folder / "eye0.png"], out, device="cpu", log=logs.append)
    assert sorted(p.name for p in out.glob("eye1_*")) == []  # the first call's, removed
    assert (out / "run-1" / "eye0_A_mask.png").is_file()
    assert json.loads((out / "segment.json").read_text())["parts"] == ["run-0", "run-1"]

    segment_images(run, [folder / "eye0.png"], out, device="cpu", log=logs.append)
    assert not (out / "run-0").exists() and not (out / "run-1").exists()  # the ensemble's
    assert sorted(p.name for p in out.iterdir()) == [
        "eye0_A_mask.png", "eye0_A_prob.png", "eye0_B_mask.png", "eye0_B_prob.png",
        "eye0_uncertainty.png", "mine_A_prob.png", "segment.json",
    ]  # fmt: skip
    assert any("removed" in line and "earlier segment" in line for line in logs)


def test_a_segment_that_fails_keeps_the_earlier_calls_record_and_outputs(tmp_path, run):
    """The earlier call's segment.json and its outputs of images this call does not segment were
    removed before the model loaded: a call on fewer images with damaged weights, or a peer
    method's run (refused at its first image), lost them and then failed. They are removed once
    the model has loaded and its images are segmented, just before the first output is written."""
    import shutil

    from localdisc.tasks.shape_guided import segment_images

    folder, _ = eyes_with_masks(tmp_path, count=2, masked=())
    out, logs = tmp_path / "out", []

    def segment(model, images):
        segment_images(model, images, out, topology=False, device="cpu", log=logs.append)

    def files():
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    damaged, peer = tmp_path / "damaged", tmp_path / "peer"
    shutil.copytree(run, damaged)
    (damaged / "model.safetensors").write_bytes(b"\0" * 64)
    shutil.copytree(run, peer)
    config = json.loads((peer / "config.json").read_text())
    config["pretrain"]["method"] = "simclr"
    (peer / "config.json").write_text(json.dumps(config))
    for earlier in ([run], [run, run]):  # one run into OUT, an ensemble's parts too
        segment(earlier, [folder])
        before = files()
        # [run, damaged]: its weights are checked before run-0 segments (they were not)
        for model in ([damaged], [peer], [damaged, run], [run, peer], [run, damaged]):
            with pytest.raises(LocaldiscError, match=r"(damaged|peer)"):
                segment(model, [folder / "eye0.png"])
            assert files() == before, model
    segment([run], [folder / "eye0.png"])  # a good call removes them, as before
    assert not list(out.glob("eye1_*")) and not (out / "run-0").exists()
    assert [e["name"] for e in json.loads((out / "segment.json").read_text())["images"]] == ["eye0"]
    assert any("removed" in line and "earlier segment" in line for line in logs)


def test_cli_segment_shows_progress_lines_in_a_log_file(tmp_path, run):
    """`shape-guided segment > log` printed no progress at all, where `predict` prints whole
    lines with the date and time: each run's images, the refinement's steps and the refined
    maps, and the ensemble's mean maps now have a bar (plain lines when not a terminal)."""
    for i in range(2):
        image = (synthetic_fundus(32, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(tmp_path / f"eye{i}.png")
    result = CliRunner().invoke(app, [
        "shape-guided", "segment", "--model", str(run), "--model", str(run),
        "--images", str(tmp_path / "eye0.png"), "--images", str(tmp_path / "eye1.png"),
        "--out", str(tmp_path / "out"), "--refine-steps", "1", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    for line in ("segment run-0: image 2/2", "refine: step 1/1", "refined run-0: image 2/2",
                 "segment run-1: image 2/2", "refined run-1: image 2/2",
                 "ensemble mean: image 2/2"):  # fmt: skip
        assert re.search(rf"^{STAMP} {line} \(100%\)", result.output, re.M), result.output
    result = CliRunner().invoke(app, [
        "shape-guided", "segment", "--model", str(run), "--images", str(tmp_path / "eye0.png"),
        "--out", str(tmp_path / "one"), "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(rf"^{STAMP} segment: image 1/1 \(100%\)", result.output, re.M)


# --- the refinement's checkpoint: a stopped call continues it -----------------------------------
def signal_in_step(monkeypatch, step: int, signum: int) -> list[int]:
    """Send ``signum`` to this process in refinement step ``step`` (counted from 1 over the
    call, every run's refinement), before its forward pass; returns the steps taken."""
    import os

    from localdisc.engine import pseudo_label

    real, taken = pseudo_label.augment, []

    def augment(*args, **kwargs):
        taken.append(len(taken) + 1)
        if taken[-1] == step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(pseudo_label, "augment", augment)
    return taken


def test_a_stopped_refinement_continues_from_its_checkpoint_to_the_same_network(
    tmp_path, monkeypatch, run
):
    import signal

    model = LDModel.from_pretrained(run)
    images = [synthetic_fundus(48, seed=s).image for s in range(2)]
    maps = [segment(model, im) for im in images]
    config = RefineConfig(steps=4, size=32, device="cpu")
    straight = refine(run, images, maps, config, log=lambda m: None).state_dict()
    taken = signal_in_step(monkeypatch, 2, signal.SIGINT)
    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt, match="after refine step 2/4"):
        refine(run, images, maps, config, log=lambda m: None, checkpoint_dir=folder)
    logs: list[str] = []
    again = refine(run, images, maps, config, log=logs.append, checkpoint_dir=folder)
    assert taken == [1, 2, 3, 4]  # 2 before the stop, 2 after
    assert f"from its checkpoint ({folder}): after refine step 2/4" in logs[0]
    for key, value in straight.items():  # batch-norm statistics too
        assert torch.equal(again.state_dict()[key], value), key


def test_segment_keeps_a_stopped_refinement_s_checkpoint_until_its_maps_are_written(
    tmp_path, monkeypatch, run
):
    """A stopped `shape-guided segment --refine-steps N` refined from step 0 again; now it goes
    on from OUT/refine-checkpoint (an ensemble's run: OUT/run-K/refine-checkpoint) to the maps
    of an uninterrupted call, and the folder is gone once they are written."""
    import signal

    from localdisc.tasks.shape_guided import segment_images

    image = (synthetic_fundus(32, seed=0).image * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "eye.png")
    # No topology: reading the prior's takes seconds, and it has nothing to do with checkpoints.
    options = dict(refine_steps=3, topology=False, device="cpu", log=lambda m: None)

    def outputs(out):
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}

    segment_images(run, [tmp_path / "eye.png"], tmp_path / "straight", **options)
    # One run stopped in its step 2 of 3; an ensemble in its second run's (step 5 of the call).
    for runs, stop_at, kept in ((run, 2, "refine-checkpoint"),
                                ([run, run], 5, "run-1/refine-checkpoint")):  # fmt: skip
        out = tmp_path / kept.replace("/", "-")
        taken = signal_in_step(monkeypatch, stop_at, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt, match="after refine step 2/3"):
            segment_images(runs, [tmp_path / "eye.png"], out, **options)
        assert [p.relative_to(out).as_posix() for p in out.rglob("refine-checkpoint")] == [kept]
        taken.clear()
        logs: list[str] = []
        segment_images(runs, [tmp_path / "eye.png"], out, **{**options, "log": logs.append})
        assert len(taken) == 1  # the step after the stop, none again (nor an ensemble's run-0)
        assert any("continuing the interrupted training" in line for line in logs)
        assert not list(out.rglob("refine-checkpoint"))
        monkeypatch.undo()
    assert outputs(tmp_path / "refine-checkpoint") == outputs(tmp_path / "straight")


def test_segment_s_maps_for_a_refinement_come_from_deterministic_cudnn(tmp_path, monkeypatch, run):
    """The pseudo-labels a refinement's checkpoint hashes are computed again by a rerun: on a
    GPU, a non-deterministic cuDNN algorithm could change them and start the training over."""
    from torch.backends import cudnn

    from localdisc.tasks import shape_guided

    image = (synthetic_fundus(32, seed=0).image * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "eye.png")
    real, seen = shape_guided.segment, []

    def segment(*args, **kwargs):
        seen.append((cudnn.deterministic, cudnn.benchmark))
        return real(*args, **kwargs)

    monkeypatch.setattr(shape_guided, "segment", segment)
    kept = cudnn.deterministic, cudnn.benchmark
    shape_guided.segment_images(run, [tmp_path / "eye.png"], tmp_path / "out", refine_steps=1,
                                topology=False, device="cpu", log=lambda m: None)  # fmt: skip
    assert seen == [(True, False)]
    assert (cudnn.deterministic, cudnn.benchmark) == kept


def test_cli_segment_stopped_by_sigterm_in_its_refinement_continues_with_the_same_command(
    tmp_path, monkeypatch, run, sigterm_handler
):
    import signal

    image = (synthetic_fundus(32, seed=0).image * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "eye.png")
    out = tmp_path / "out"
    args = ["shape-guided", "segment", "--model", str(run), "--images", str(tmp_path / "eye.png"),
            "--out", str(out), "--refine-steps", "3", "--device", "cpu",
            "--no-topology"]  # fmt: skip
    taken = signal_in_step(monkeypatch, 2, signal.SIGTERM)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 143, result.output
    assert taken == [1, 2]  # the step went on, no other began
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"interrupted by SIGTERM: the refinement's checkpoint is kept in "
        f"{out / 'refine-checkpoint'} (after refine step 2/3); run the same command again (same "
        "--out) to continue from there"
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "continuing the interrupted training from its checkpoint" in result.output
    assert taken == [1, 2, 3] and (out / "eye_refined_mask.png").is_file()
    assert not (out / "refine-checkpoint").exists()


# --- scores against a researcher's own true masks (--masks) ------------------------------------
def eyes_with_masks(tmp_path, count: int = 3, masked=(0, 1)):
    """``count`` photographs ``eyeK.png`` in ``images/`` and the true vessels of those ``masked``
    in ``truth/`` (0/255, named as the images)."""
    folder, truth = tmp_path / "images", tmp_path / "truth"
    folder.mkdir()
    truth.mkdir()
    for i in range(count):
        fundus = synthetic_fundus(32, seed=i)
        Image.fromarray((fundus.image * 255).astype("uint8")).save(folder / f"eye{i}.png")
        if i in masked:
            Image.fromarray((fundus.vessels * 255).astype("uint8")).save(truth / f"eye{i}.png")
    return folder, truth


def scores_by_hand(out, folder, truth, name: str, output: str) -> dict[str, float]:
    """:func:`segmentation_metrics` of the written ``NAME_OUTPUT`` maps inside the FOV found in
    the photograph, clDice too (the fixture's prior is a tree)."""
    from localdisc.data.io import read_image, read_mask
    from localdisc.data.preprocess import fov_from_image
    from localdisc.eval.metrics import segmentation_metrics

    prob = read_image(out / f"{name}_{output}_prob.png")[0][..., 0]
    mask = read_mask(out / f"{name}_{output}_mask.png")
    assert np.array_equal(mask, prob >= 0.5)  # the mask written is its probability map's
    fov = fov_from_image(read_image(folder / f"{name}.png")[0], modality="fundus")
    return segmentation_metrics(prob, read_mask(truth / f"{name}.png"), fov, topology=True)


def test_segment_scores_every_output_against_true_masks(tmp_path, run):
    """A researcher with true masks for some images had no way to score `shape-guided segment`
    on them (only `benchmark shape-guided`, on built-in sets): `masks` scores A, B and refined
    into metrics.json as `predict --masks` does, images without a mask named, not scored."""
    from localdisc.tasks.shape_guided import segment_images

    folder, truth = eyes_with_masks(tmp_path)
    out, logs = tmp_path / "out", []
    segment_images(run, [folder], out, refine_steps=1, topology=False, device="cpu",
                   log=logs.append, masks=truth)  # fmt: skip
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text)
    assert text == json.dumps(metrics, indent=2)  # the format written, keys in this order:
    assert list(metrics) == ["command", "runs", "masks", "threshold", "fov", "summary",
                             "per_image", "masks_used", "unscored", "environment"]  # fmt: skip
    assert metrics["command"] == "shape-guided segment" and metrics["masks"] == str(truth)
    assert metrics["runs"] == [str(run.resolve())] and metrics["fov"] == "found in each image"
    assert list(metrics["per_image"]) == list(metrics["summary"]) == ["A", "B", "refined"]
    for output, rows in metrics["per_image"].items():
        assert [row["image"] for row in rows] == ["eye0", "eye1"]
        for row in rows:
            expected = scores_by_hand(out, folder, truth, row.pop("image"), output)
            assert row == pytest.approx(expected, nan_ok=True)
        dice = [row["dice"] for row in rows]
        assert metrics["summary"][output]["dice"] == pytest.approx(
            {"mean": np.mean(dice), "std": np.std(dice), "n": 2}
        )
        assert set(metrics["summary"][output]) >= {"f1", "auc", "sensitivity", "cldice"}
    assert metrics["unscored"] == [str(folder / "eye2.png")]
    assert metrics["masks_used"] == {f"eye{i}": str(truth / f"eye{i}.png") for i in (0, 1)}
    assert any("1 image(s) without a mask" in line and "eye2.png" in line for line in logs)
    table = next(line for line in logs if line.startswith("output")).splitlines()
    assert table[0].split() == ["output", "n", "dice", "auc", "sensitivity", "cldice"]
    dice = metrics["summary"]["refined"]["dice"]
    assert table[3].split()[:4] == ["refined", "2", f"{dice['mean']:.4f}", "+-"]
    record = json.loads((out / "segment.json").read_text())
    assert record["masks"] == str(truth)


def test_segment_checks_the_true_masks_before_any_work(tmp_path, run):
    from localdisc.tasks.shape_guided import segment_images

    folder, truth = eyes_with_masks(tmp_path, masked=())
    out = tmp_path / "out"

    def segment(masks):
        segment_images(run, [folder], out, topology=False, device="cpu", log=lambda m: None,
                       masks=masks)  # fmt: skip

    with pytest.raises(LocaldiscError, match=r"missing: no such folder of masks"):
        segment(tmp_path / "missing")
    with pytest.raises(LocaldiscError, match=r"truth: no image has a mask there"):
        segment(truth)
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(truth / "eye1.png")
    with pytest.raises(LocaldiscError, match=r"eye1.png: mask is 32x20, its image .* is 32x32"):
        segment(truth)
    assert not out.exists()  # nothing was segmented, nor written
    (out / "metrics.json").parent.mkdir()
    (out / "metrics.json").write_text(json.dumps({"summary": {}, "phases": []}))
    with pytest.raises(LocaldiscError, match=r"out: holds metrics.json, not one `shape-guided"):
        segment(truth)


def test_segment_again_without_masks_removes_the_earlier_scores(tmp_path, run):
    """Scores left in OUT by an earlier call would sit beside outputs they are not of; a call
    that fails before it segments (its masks, its model's weights) keeps them."""
    import shutil

    from localdisc.tasks.shape_guided import segment_images

    folder, truth = eyes_with_masks(tmp_path, count=2, masked=(0,))
    out, logs = tmp_path / "out", []
    segment_images(run, [folder], out, topology=False, device="cpu", log=logs.append,
                   masks=truth)  # fmt: skip
    before = (out / "metrics.json").read_text()
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "model.safetensors").write_bytes(b"\0" * 64)
    for model, masks in ((run, tmp_path / "missing"), (damaged, None), (damaged, truth)):
        with pytest.raises(LocaldiscError):
            segment_images(model, [folder], out, topology=False, device="cpu",
                           log=logs.append, masks=masks)  # fmt: skip
        assert (out / "metrics.json").read_text() == before
    segment_images(run, [folder], out, topology=False, device="cpu", log=logs.append)
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "segment.json").read_text())["masks"] is None
    assert any(f"removed {out / 'metrics.json'}" in line for line in logs), logs
    other = {"summary": {}, "phases": []}  # another command's: left alone without --masks
    (out / "metrics.json").write_text(json.dumps(other))
    segment_images(run, [folder], out, topology=False, device="cpu", log=logs.append)
    assert json.loads((out / "metrics.json").read_text()) == other


def test_cli_segment_with_masks_scores_the_ensemble_mean_and_prints_a_table(tmp_path, run):
    """`--masks` scores the outputs in OUT (an ensemble's mean maps) and prints the summary."""
    folder, truth = eyes_with_masks(tmp_path, count=2, masked=(0, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "shape-guided", "segment", "--model", str(run), "--model", str(run),
        "--images", str(folder), "--out", str(out), "--masks", str(truth), "--device", "cpu",
        "--no-topology",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["summary"]) == ["A", "B"]
    row = metrics["per_image"]["B"][1]
    assert row.pop("image") == "eye1"
    assert row == pytest.approx(scores_by_hand(out, folder, truth, "eye1", "B"), nan_ok=True)
    summary = metrics["summary"]
    for output in ("A", "B"):
        dice, auc = summary[output]["dice"], summary[output]["auc"]
        assert re.search(rf"^{output} +2 +{dice['mean']:.4f} \+- {dice['std']:.4f} +"
                         rf"{auc['mean']:.4f} ", result.output, re.M), result.output  # fmt: skip
    assert f"per image in {out / 'metrics.json'}" in result.output


# --- --skip-bad: unreadable images among the inputs ---------------------------------------------
def test_segment_skips_unreadable_images_on_request_and_removes_their_earlier_outputs(
    tmp_path, run
):
    """A truncated PNG or text named .png among the images stopped `shape-guided segment`, with
    no way to go on; skip_bad leaves them out, listed in segment.json, with an earlier call's
    outputs of them (in OUT and an ensemble's run-K) removed."""
    from localdisc.tasks.shape_guided import segment_images

    folder, _ = eyes_with_masks(tmp_path, count=3, masked=())
    out, logs = tmp_path / "out", []

    def segment(models, **kw):
        return segment_images(models, [folder], out, topology=False, device="cpu",
                              log=logs.append, **kw)  # fmt: skip

    segment([run, run])
    assert (out / "run-1" / "eye2_A_mask.png").is_file()
    broken = folder / "eye2.png"
    broken.write_bytes(broken.read_bytes()[:120])
    (folder / "notes.png").write_text("not an image")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(LocaldiscError) as error:
        segment([run, run])
    assert str(error.value) == (
        f"{broken}: cannot decode as image: OSError: image file is truncated; --skip-bad skips "
        "unreadable images"
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    written = segment([run, run], skip_bad=True)
    assert sorted({p.name.split("_")[0] for p in written}) == ["eye0", "eye1"]
    assert not list(out.rglob("eye2_*")) and not list(out.rglob("notes_*"))
    record = json.loads((out / "segment.json").read_text())
    assert [e["name"] for e in record["images"]] == ["eye0", "eye1"]
    assert [(e["name"], e["path"]) for e in record["skipped"]] == [
        ("eye2", str(broken.resolve())), ("notes", str((folder / "notes.png").resolve()))
    ]  # fmt: skip
    assert written.skipped == record["skipped"]  # returned: the CLI need not read it back
    assert f"skipped {broken}: cannot decode as image: OSError: image file is truncated" in logs
    assert logs[-1].endswith(
        f"; 2 unreadable image(s) skipped, listed under skipped in {out / 'segment.json'}"
    )
    # Run again: the ensemble's runs are kept (the same images read), and so are the outputs.
    logs.clear()
    segment([run, run], skip_bad=True)
    assert sum("kept as they are" in line for line in logs) == 2
    # Every image unreadable: refused before any model.
    with pytest.raises(LocaldiscError, match=r"every image was skipped as unreadable \(2; "):
        segment_images(run, [broken, folder / "notes.png"], tmp_path / "none", skip_bad=True,
                       log=logs.append)  # fmt: skip
    assert not (tmp_path / "none").exists()


def test_cli_segment_skip_bad_says_how_many_it_skipped(tmp_path, run):
    folder, _ = eyes_with_masks(tmp_path, count=1, masked=())
    (folder / "notes.png").write_text("not an image")
    args = ["shape-guided", "segment", "--model", str(run), "--images", str(folder),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--skip-bad"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"skipped {folder / 'notes.png'}: content is not a PNG" in output
    assert (
        f"2 mask(s) written to {tmp_path / 'out'}; 1 unreadable image(s) skipped, listed under "
        f"skipped in {tmp_path / 'out' / 'segment.json'}" in output
    )


def test_cli_segment_says_what_segment_images_returned(tmp_path, monkeypatch):
    """The command's last line counted the images skipped in segment.json read back from
    --out: it says what segment_images returned (with no file to read, as here)."""
    from localdisc.tasks import shape_guided
    from localdisc.tasks.predict import Written

    written = Written([tmp_path / "a_A_mask.png", tmp_path / "a_B_mask.png"], [{"name": "b"}])
    monkeypatch.setattr(shape_guided, "segment_images", lambda *args, **kw: written)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["shape-guided", "segment", "--model", str(tmp_path),
                                      "--images", str(tmp_path), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == (
        f"2 mask(s) written to {out}; 1 unreadable image(s) skipped, listed under skipped in "
        f"{out / 'segment.json'}"
    )


def test_segment_and_the_refinement_put_the_box_s_maps_where_the_box_lies(run, monkeypatch):
    # A map over the whole box must land on the box, not be stretched over the frame; and the
    # refinement must train on the box's pseudo-labels (a reviewer's mutants passed before).
    import localdisc.tasks.shape_guided as shape_guided

    model = LDModel.from_pretrained(run)
    wide = np.zeros((48, 144, 3), np.float32)
    wide[:, 80:128] = synthetic_fundus(48, seed=1).image  # off-centre: the box is not the middle
    y0, y1, x0, x1 = shape_guided.seen_box(wide, "fundus")
    inside = np.zeros((48, 144), bool)
    inside[y0:y1, x0:x1] = True
    assert x0 > 40 and not inside.all()

    def cluster_zero_everywhere(x):
        a = torch.zeros(model.config.clusters, *x.shape[:2])
        a[0] = 1
        return torch.nn.functional.normalize(torch.randn(model.config.dim, *x.shape[:2]), dim=0), a

    monkeypatch.setattr(model, "embed_and_cluster", cluster_zero_everywhere)
    whole = np.ones((48, 144), bool)
    maps = segment(model, wide, whole, size=48)
    assert np.array_equal(maps.prob_a > 0.5, inside)
    fitted = spy_fit(monkeypatch)
    network = refine(run, [wide], [maps], RefineConfig(steps=1, size=32, device="cpu"),
                     log=lambda m: None)  # fmt: skip
    assert fitted["y"][0, 0].min() == 1  # the box's labels, all foreground
    monkeypatch.setattr(
        shape_guided, "predict_batch", lambda net, x, batch: torch.ones(1, 1, 32, 32)
    )
    assert np.array_equal(refined_probability(network, wide, whole) > 0.5, inside)


def test_segment_images_takes_one_folder_alone_with_its_masks(tmp_path, run):
    # A folder given alone was found, but its true masks were matched against its letters
    # ("no image has a mask there": reviewer).
    from helpers import save
    from localdisc.tasks.shape_guided import segment_images

    rng = np.random.default_rng(0)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 255
    for part in ("p1", "p2"):
        save(tmp_path / "d" / part / "x.png", (rng.random((48, 48, 3)) * 255).astype(np.uint8))
        save(tmp_path / "m" / part / "x.png", mask)
    segment_images(run, str(tmp_path / "d"), tmp_path / "out", masks=str(tmp_path / "m"),
                   device="cpu", log=lambda m: None)  # fmt: skip
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_score_table_gives_no_std_over_one_image_and_counts_metrics_of_fewer_images():
    # "+- 0.0000" over one image read as images that agreed; an AUC over 1 of 2 images sat
    # under n 2 unmarked (undefined on an image of one class)
    from localdisc.tasks.shape_guided import score_table

    def v(mean: float, std: float, n: int) -> dict[str, float]:
        return {"mean": mean, "std": std, "n": n}

    table = score_table({
        "A": {"dice": v(0.5, 0.0, 1), "auc": v(0.9, 0.0, 1)},
        "refined": {"dice": v(0.6, 0.1, 2), "auc": v(0.8, 0.0, 1)},
    }).splitlines()  # fmt: skip
    assert table[0].split() == ["output", "n", "dice", "auc"]
    assert table[1].split() == ["A", "1", "0.5000", "0.9000"]
    assert table[2].split() == ["refined", "2", "0.6000", "+-", "0.1000", "0.8000", "(n=1)"]
    assert len({len(line) for line in table}) == 1  # the columns line up


def test_a_stopped_segment_s_outputs_are_no_images_of_the_folder_holding_them(
    tmp_path, monkeypatch, run
):
    # segment.json was written last: a call stopped after its first outputs left them with no
    # record, and `pretrain --data D` (D holding OUT) pooled NAME_A_prob.png and the others.
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.data.datasets import folder_image_files
    from localdisc.tasks.shape_guided import segment_images

    image = (synthetic_fundus(32, seed=0).image * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "eye.png")
    real = shape_guided.write_png

    def stop_after_one(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise KeyboardInterrupt  # stopped after its first output

    monkeypatch.setattr(shape_guided, "write_png", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        segment_images([run], [tmp_path / "eye.png"], tmp_path / "seg", device="cpu",
                       log=lambda m: None)  # fmt: skip
    assert [p.name for p in (tmp_path / "seg").glob("*.png")] == ["eye_A_prob.png"]
    assert folder_image_files(tmp_path) == [tmp_path / "eye.png"]
    record = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert record == {"images": [{"name": "eye"}], "parts": [], "finished": False}
    monkeypatch.setattr(shape_guided, "write_png", real)
    segment_images([run], [tmp_path / "eye.png"], tmp_path / "seg", device="cpu",
                   log=lambda m: None)  # fmt: skip
    assert "finished" not in json.loads((tmp_path / "seg" / "segment.json").read_text())


def stub_model(v: torch.Tensor, a: torch.Tensor, modality: str = "xray"):
    """An LD model whose embeddings ``v`` (D x H x W) and assignments ``a`` (K x H x W) are given,
    whatever the image: an X-ray one sees the whole image, its FOV too."""
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(modality=modality),
                           embed_and_cluster=lambda x: (v, a))  # fmt: skip


def test_output_b_is_the_softmax_of_the_embeddings_to_the_regions_at_temperature_0_2():
    # METHOD.md section 5: output B = channel 0 of softmax_k(v(p) . z_k / 0.2). Regions of one
    # embedding each (hard assignments), so z_k is that embedding: (1, 0), (0, 1), (0.6, 0.8).
    z = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    region = np.repeat([0, 1, 2, 0], 3)[None].repeat(4, 0)  # 4 x 12: which region each pixel is
    v = torch.from_numpy(z[region].transpose(2, 0, 1).copy())  # [2, 4, 12]
    a = torch.from_numpy((region[None] == np.arange(3)[:, None, None]).astype(np.float32))
    maps = segment(stub_model(v, a), np.zeros((4, 12, 1), np.float32))
    logits = np.einsum("dhw,kd->khw", v.numpy(), z) / 0.2
    expected = np.exp(logits)[0] / np.exp(logits).sum(0)
    np.testing.assert_allclose(maps.prob_b, expected, atol=1e-5)
    assert maps.prob_b[0, 0] > 0.85 and maps.mask_b[:, :3].all()  # e^5 / (e^5 + 1 + e^3)
    np.testing.assert_array_equal(maps.prob_a, a[0].numpy())


def test_segment_all_moves_a_wide_image_s_maps_by_the_offset_times_its_width():
    # offset is a fraction of the width: on a 16 x 48 image 0.25 is 12 pixels (not 4, a
    # quarter of its height).
    h, w = 16, 48
    ramp = np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))
    a = torch.from_numpy(np.stack([ramp, 1 - ramp]))
    v = torch.nn.functional.normalize(
        torch.rand(2, h, w, generator=torch.Generator().manual_seed(0)), dim=0
    )
    model = stub_model(v, a)
    image = np.random.default_rng(0).random((h, w, 1)).astype(np.float32)
    alone = segment(model, image)
    masks = np.zeros((2, 16, 16), bool)
    masks[:, 4:12, 2:14] = True
    moved = segment_all(model, [image], prior=masks, offset=0.25, log=lambda m: None)[0]
    for got, before in ((moved.prob_a, alone.prob_a), (moved.prob_b, alone.prob_b)):
        expected = np.concatenate([np.repeat(before[:, :1], 12, axis=1), before[:, :-12]], 1)
        np.testing.assert_allclose(got, expected)


def test_refined_probability_is_zero_outside_a_fov_smaller_than_the_box():
    from localdisc.models.segmenter import Segmenter, SegmenterConfig

    torch.manual_seed(0)
    network = Segmenter(SegmenterConfig(modality="xray", width=4, depth=2, size=16))
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    fov = np.zeros((20, 30), bool)  # an X-ray's box is the whole image; the FOV its left third
    fov[:, :10] = True
    prob = refined_probability(network, image, fov)
    assert prob.shape == (20, 30) and prob[fov].min() > 0
    assert not prob[~fov].any()


def stub_maps(monkeypatch, prob: np.ndarray) -> None:
    """segment_images' runs find ``prob`` as output A and B of every image (FOV: all of it)."""
    import localdisc.tasks.shape_guided as shape_guided

    def found(model, images, **kwargs):
        fov = np.ones(prob.shape, bool)
        return [ShapeGuidedMaps(prob.copy(), prob.copy(), fov) for _ in images]

    monkeypatch.setattr(shape_guided, "segment_all", found)


def read_mask_png(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_segment_s_masks_of_one_run_are_its_maps_at_or_above_one_half(tmp_path, monkeypatch, run):
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    prob = np.tile(np.array([0.1, 0.45, 0.5, 0.52, 0.55, 0.59, 0.6, 0.9], np.float32), (32, 4))
    stub_maps(monkeypatch, prob)
    segment_images(run, [tmp_path / "eye.png"], tmp_path / "out", topology=False, device="cpu",
                   log=lambda m: None)  # fmt: skip
    for output in ("A", "B"):
        mask = read_mask_png(tmp_path / "out" / f"eye_{output}_mask.png")
        np.testing.assert_array_equal(mask, prob >= 0.5, err_msg=output)


def test_an_ensemble_s_mean_b_is_not_held_to_the_organ_topology(tmp_path, monkeypatch, run):
    # As for one run, A (and the refined maps) keep the prior's one piece; B keeps what it found.
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.priors.topology import PriorTopology
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(48, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    prob = np.zeros((48, 48), np.float32)
    prob[5:20, 5:20], prob[35:40, 35:40] = 0.9, 0.8  # two pieces: a large and a small one
    stub_maps(monkeypatch, prob)
    monkeypatch.setattr(
        shape_guided, "run_topology", lambda run, log=print: PriorTopology(1, False)
    )
    out = tmp_path / "out"
    segment_images([run, run], [tmp_path / "eye.png"], out, device="cpu", log=lambda m: None)
    large = np.zeros((48, 48), bool)
    large[5:20, 5:20] = True
    np.testing.assert_array_equal(read_mask_png(out / "eye_A_mask.png"), large)
    np.testing.assert_array_equal(read_mask_png(out / "eye_B_mask.png"), prob >= 0.5)


def test_the_refinement_trains_with_its_rotation_and_by_default_a_cosine_schedule(run, monkeypatch):
    # README (shape-guided segment): "No label can pick a step, so its learning rate decays to
    # zero"; benchmarks/RESULTS.md, "The refinement ends settled: cosine decay ...".
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.engine.finetune import AUGMENTATION

    trained: list[dict] = []
    monkeypatch.setattr(shape_guided, "fit_pseudo_labels",
                        lambda network, x, y, **kwargs: trained.append(kwargs))  # fmt: skip
    images = [synthetic_fundus(48, seed=0).image]
    maps = [ShapeGuidedMaps(*np.full((2, 48, 48), 0.7, np.float32), np.ones((48, 48), bool))]
    assert RefineConfig().schedule == "cosine"
    for settings in ({}, {"rotation": 7.5}, {"rotation": 0.0, "schedule": "constant"}):
        config = RefineConfig(steps=1, size=32, device="cpu", **settings)
        refine(run, images, maps, config, log=lambda m: None)
    assert [(t["rotation"], t["cosine"]) for t in trained] == [
        (AUGMENTATION["fundus"][0], True), (7.5, True), (0.0, False)
    ]  # fmt: skip


def test_segment_without_refinement_removes_an_earlier_call_s_refined_maps(tmp_path, run):
    # They would sit beside this call's A and B as if of the same call (one run; an ensemble's
    # in test_segment_again_into_an_out_removes_the_earlier_calls_other_outputs). The prior's
    # topology (a vessel tree: none held) is not read, for speed.
    from localdisc.tasks.shape_guided import segment_images

    Image.fromarray((synthetic_fundus(32, seed=0).image * 255).astype("uint8")).save(
        tmp_path / "eye.png"
    )
    out, quick = tmp_path / "out", {"topology": False, "device": "cpu", "log": lambda m: None}
    segment_images(run, [tmp_path / "eye.png"], out, refine_steps=1, **quick)
    refined = ["eye_refined_mask.png", "eye_refined_prob.png"]
    assert sorted(p.name for p in out.glob("*refined*")) == refined
    segment_images(run, [tmp_path / "eye.png"], out, **quick)
    assert not list(out.glob("*refined*"))
    assert (out / "eye_A_mask.png").is_file()


def test_the_prior_s_votes_are_zero_outside_a_fov_smaller_than_the_box():
    # An X-ray's box is the whole image; its FOV a disc inside it. Masks that fill their frame
    # vote everywhere in the box: outside the FOV neither the prior nor the intensity may.
    from localdisc.tasks.shape_guided import atlas_votes

    yy, xx = np.mgrid[:32, :32]
    fov = np.hypot(yy - 15.5, xx - 15.5) < 12
    prob = np.where(fov, 0.7, 0.0).astype(np.float32)
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    maps = atlas_votes(image, prob, prob, fov, np.ones((3, 16, 16), np.float32))
    assert maps.prior[fov].min() > 0.5
    assert not maps.prior[~fov].any() and not maps.intensity[~fov].any()


def test_the_refinement_weighs_each_pixel_by_how_sure_its_pseudo_label_is(run, monkeypatch):
    # The weight channel is the pseudo-labels' |2 * consensus - 1| in the box, resized as the
    # image is: unsure pixels (A and B near 0.5, or at odds) count less.
    model = LDModel.from_pretrained(run)
    images = [synthetic_fundus(48, seed=s).image for s in range(2)]
    maps = [segment(model, im) for im in images]
    rng = np.random.default_rng(0)
    for m in maps:  # A and B at odds in places
        m.prob_b = np.where(rng.random(m.prob_b.shape) < 0.3, 1 - m.prob_a, m.prob_a) * m.fov
    fitted = spy_fit(monkeypatch)
    refine(run, images, maps, RefineConfig(steps=1, size=32, device="cpu"), log=lambda m: None)
    for k, m in enumerate(maps):
        y0, y1, x0, x1 = m.box
        weight = m.pseudo_label()[1][y0:y1, x0:x1]
        expected = resize_image(weight, 32)
        np.testing.assert_allclose(fitted["y"][k, 1].numpy(), expected, atol=1e-6)
        assert expected.min() < 0.5
