"""A network taught by a vesselness filter: it must learn, and rank vessels above its teacher."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from localdisc.data.synthetic import paint_vessels, synthetic_fundus
from localdisc.errors import InputError, LocaldiscError
from localdisc.eval.metrics import auc_roc
from localdisc.tasks import self_training
from localdisc.tasks.self_training import (
    StudentConfig,
    label_shift,
    mean_rank,
    student_probability,
    student_training_set,
    train_student,
)
from localdisc.tasks.vesselness import eroded_fov, vesselness


def quiet(_: str) -> None:
    pass


def test_the_student_ranks_an_unseen_image_s_vessels_better_than_its_teacher():
    eyes = [synthetic_fundus(128, seed=s) for s in range(3)]
    config = StudentConfig(size=128, crop=64, depth=2, width=8, steps=300, lr=1e-2, device="cpu")
    model = train_student([e.image for e in eyes[:2]], [e.fov for e in eyes[:2]], 0.12, config,
                          log=quiet)  # fmt: skip
    unseen = eyes[2]
    prob = student_probability(model, unseen.image, unseen.fov)
    teacher = vesselness(unseen.image, unseen.fov, method=config.method)
    student_auc = auc_roc(prob, unseen.vessels, unseen.fov)
    teacher_auc = auc_roc(teacher, unseen.vessels, unseen.fov)
    # Over the whole FOV (the benchmark's AUC): the filter is blind on the FOV's rim, the
    # student is not; inside the eroded FOV it must have learnt vessels, not only the rim.
    assert student_auc > 0.85 and student_auc > teacher_auc + 0.05
    assert auc_roc(prob, unseen.vessels, eroded_fov(unseen.fov, config.erode_fov)) > 0.85


def test_student_probability_is_a_map_of_the_image_zero_off_the_fov():
    eye = synthetic_fundus(96, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, device="cpu")
    model = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    prob = student_probability(model, eye.image, eye.fov)
    assert prob.shape == eye.fov.shape and prob.dtype == np.float32
    assert prob.min() >= 0 and prob.max() <= 1 and not prob[~eye.fov].any()
    plain = student_probability(model, eye.image, eye.fov, flips=False)
    assert plain.shape == prob.shape and not np.allclose(plain, prob)
    # The same seed, the same network, whatever state the caller left torch's global RNG in.
    torch.manual_seed(1)
    again = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    np.testing.assert_array_equal(student_probability(again, eye.image, eye.fov), prob)
    torch.manual_seed(2)
    other = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    np.testing.assert_array_equal(student_probability(other, eye.image, eye.fov), prob)
    # A FOV mask as a PNG reads (0/255) is inside or outside, as vesselness takes it: it scaled
    # the probabilities to 255.
    byte_fov = eye.fov.astype(np.uint8) * 255
    np.testing.assert_array_equal(student_probability(model, eye.image, byte_fov), prob)


def test_the_map_of_a_flipped_photograph_is_its_map_flipped():
    """The mean over the four flips (the image as it is, flipped along each axis and both)
    makes the map flip with the photograph, which the network alone does not, at an image size
    other than the network's (resized back bilinearly): a mean over three flips, or a
    nearest-neighbour resize back, broke it."""
    eye = synthetic_fundus(96, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, device="cpu")
    model = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    prob = student_probability(model, eye.image, eye.fov)
    plain = student_probability(model, eye.image, eye.fov, flips=False)
    for axes in ((0,), (1,), (0, 1)):
        image, fov = (np.flip(a, axes).copy() for a in (eye.image, eye.fov))
        flipped = student_probability(model, image, fov)
        np.testing.assert_allclose(flipped, np.flip(prob, axes), rtol=0, atol=1e-5)
        alone = student_probability(model, image, fov, flips=False)
        assert np.abs(alone - np.flip(plain, axes)).max() > 1e-3


def test_painted_copies_teach_their_tree_as_sure_vessel_and_the_rest_as_the_teacher_does():
    eyes = [synthetic_fundus(96, seed=s) for s in range(2)]
    images, fovs = [e.image for e in eyes], [e.fov for e in eyes]
    teachers = [vesselness(e.image, e.fov) for e in eyes]
    plain = StudentConfig(size=96, crop=32, depth=2)
    xs, ys = student_training_set(images, fovs, teachers, 0.12, plain)
    assert xs.shape == (2, 3, 96, 96) and ys.shape == (2, 2, 96, 96)
    xp, yp = student_training_set(images, fovs, teachers, 0.12, replace(plain, painted=2))
    assert xp.shape == (6, 3, 96, 96) and yp.shape == (6, 2, 96, 96)
    # Each image first, as without painting, then its two painted copies.
    np.testing.assert_array_equal(xp[[0, 3]], xs)
    np.testing.assert_array_equal(yp[[0, 3]], ys)
    label, weight = ys[0].bool().numpy()
    for k, copy in enumerate((1, 2)):
        painted, tree = paint_vessels(eyes[0].image, eyes[0].fov, np.random.default_rng([0, 0, k]))
        np.testing.assert_array_equal(xp[copy].permute(1, 2, 0).numpy(), painted)
        got_label, got_weight = yp[copy].bool().numpy()
        assert got_label[tree].all() and got_weight[tree].all()  # the tree: sure vessel
        rim = ndi.binary_dilation(tree) & ~tree
        assert rim.any() and not got_weight[rim].any()  # its blurred rim: silent
        rest = ~ndi.binary_dilation(tree)
        np.testing.assert_array_equal(got_label[rest], label[rest])
        np.testing.assert_array_equal(got_weight[rest], weight[rest])
    with pytest.raises(ValueError, match="painted"):
        StudentConfig(painted=-1)


def test_label_shift_is_the_log_odds_the_painted_copies_add():
    # Two images (vessel share 0.1 of their weighted pixels), each with one painted copy
    # (share 0.3); silent pixels (weight 0) count for nothing.
    targets = torch.zeros(4, 2, 10, 10)
    targets[:, 1, :, :5] = 1.0
    targets[[0, 2], 0, :5, :1] = 1.0  # 5 of 50 weighted pixels
    targets[[1, 3], 0, :5, :3] = 1.0  # 15 of 50
    targets[:, 0, :, 9] = 1.0  # vessel, but silent
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert label_shift(targets, 1) == pytest.approx(logit(0.2) - logit(0.1))
    assert label_shift(targets[[0, 2]], 0) == 0.0


def test_a_student_with_painted_copies_has_its_head_moved_back_by_the_label_shift(monkeypatch):
    eye = synthetic_fundus(96, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, painted=1, device="cpu")
    shifts: list[float] = []

    def measured(*args: object) -> float:
        shifts.append(label_shift(*args))
        return shifts[-1]

    monkeypatch.setattr(self_training, "label_shift", measured)
    shifted = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    (shift,) = shifts
    assert shift > 0.1  # the tree adds vessel pixels
    monkeypatch.setattr(self_training, "label_shift", lambda *_: 0.0)
    raw = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    assert float((raw.head.bias - shifted.head.bias).detach()) == pytest.approx(shift, abs=1e-6)
    for name, value in raw.state_dict().items():  # nothing else moves
        if name != "head.bias":
            torch.testing.assert_close(value, shifted.state_dict()[name])


def test_mean_rank_fuses_scores_of_any_scale_inside_the_eroded_fov():
    rng = np.random.default_rng(0)
    fov = np.zeros((40, 40), dtype=bool)
    fov[5:35, 5:35] = True
    region = eroded_fov(fov, 2)
    score = rng.random((40, 40))
    rank = mean_rank([score], fov, 2)
    assert not rank[~region].any() and rank[region].min() > 0 and rank[region].max() == 1
    # Ranks ignore scale: a monotone map of a score changes nothing, nor does averaging it in.
    np.testing.assert_allclose(mean_rank([score, 100 * score**3], fov, 2), rank)
    other = rng.random((40, 40))
    both = mean_rank([score, other], fov, 2)
    np.testing.assert_allclose(both, (rank + mean_rank([other], fov, 2)) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        mean_rank([], fov)


def test_bad_settings_and_inputs_are_refused():
    for teacher in ("hessian", "sato+", "sato+meijering"):
        with pytest.raises(ValueError, match="unknown vesselness method"):
            StudentConfig(method=teacher)
    with pytest.raises(ValueError, match="crop"):
        StudentConfig(size=64, crop=128)
    with pytest.raises(ValueError, match="multiple"):
        StudentConfig(size=100, crop=64, depth=4)
    with pytest.raises(ValueError, match="speck_area"):
        StudentConfig(speck_area=-1e-4)
    # Zero steps or batch trained nothing (or failed deep in the loop) before.
    for bad in ({"steps": 0}, {"batch": 0}, {"lr": float("nan")}):
        with pytest.raises(InputError, match="invalid student config"):
            StudentConfig(**bad)
    eye = synthetic_fundus(64, seed=0)
    with pytest.raises(LocaldiscError, match="one FOV per image"):
        train_student([eye.image, eye.image], [eye.fov], 0.12, StudentConfig(size=64, crop=32))
    with pytest.raises(LocaldiscError, match="at least one image"):
        train_student([], [], 0.12)


def test_a_grey_photograph_is_taught_on_and_segmented_as_rgb():
    """A grey (red-free) photograph among colour ones used to crash the training set's stack,
    and alone the student's forward pass."""
    eye = synthetic_fundus(64, seed=0)
    grey = eye.image.mean(-1)
    config = StudentConfig(size=64, crop=32, depth=2, width=8, steps=1, batch=1, device="cpu")
    teachers = [vesselness(im, eye.fov, method=config.method) for im in (eye.image, grey)]
    xs, _ = student_training_set([eye.image, grey], [eye.fov] * 2, teachers, 0.12, config)
    assert xs.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(xs[1, 0], xs[1, 2])  # the grey level in every channel
    model = train_student([eye.image, grey], [eye.fov] * 2, 0.12, config, log=quiet)
    prob = student_probability(model, grey, eye.fov)
    np.testing.assert_allclose(prob, student_probability(model, grey[..., None], eye.fov))
    assert prob.shape == (64, 64)


def test_a_stopped_student_continues_from_its_checkpoint_to_the_same_network(tmp_path, monkeypatch):
    """A SIGINT (or SIGTERM) in the student's training ends the step, writes a checkpoint and
    stops; the same call goes on from it to the network of an uninterrupted one, bit for bit."""
    import os
    import signal

    from localdisc.engine import pseudo_label

    eye = synthetic_fundus(96, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=4, painted=1, device="cpu")
    straight = train_student([eye.image], [eye.fov], 0.12, config, log=quiet).state_dict()
    real, taken = pseudo_label.augment, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pseudo_label, "augment", augment)
    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt, match="after student step 3/4"):
        train_student([eye.image], [eye.fov], 0.12, config, log=quiet, checkpoint_dir=folder)
    said: list[str] = []
    again = train_student([eye.image], [eye.fov], 0.12, config, log=said.append,
                          checkpoint_dir=folder).state_dict()  # fmt: skip
    assert len(taken) == 4 and any("after student step 3/4" in line for line in said)
    for key, value in straight.items():  # the head's label shift and batch norm too
        assert torch.equal(again[key], value), key


def test_the_student_trains_on_rotated_flipped_crops_then_recomputes_its_batch_norm(monkeypatch):
    """Rotations of up to 180 degrees and flips are the student's noise (Noisy Student); once
    trained, its batch-norm statistics are those of every image it trained on, painted copies
    too (recomputed as :func:`recalibrate_batch_norm` does), not the last steps' moving average."""
    import copy

    from localdisc.engine import pseudo_label
    from localdisc.engine.batch_norm import recalibrate_batch_norm

    eye = synthetic_fundus(64, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, painted=1, device="cpu")
    real, asked = pseudo_label.augment, []

    def augment(x, y, **kwargs):
        asked.append((kwargs["rotation"], kwargs["flips"], x.shape[-1]))
        return real(x, y, **kwargs)

    monkeypatch.setattr(pseudo_label, "augment", augment)
    model = train_student([eye.image], [eye.fov], 0.12, config, log=quiet)
    assert asked == [(180.0, True, 32)] * 2
    teacher = vesselness(eye.image, eye.fov, method=config.method, erode_fov=config.erode_fov)
    xs, _ = student_training_set([eye.image], [eye.fov], [teacher], 0.12, config)
    assert len(xs) == 2  # the image and its painted copy
    by_hand = copy.deepcopy(model)
    recalibrate_batch_norm(by_hand, xs, batch=config.batch)
    for (name, value), recomputed in zip(model.named_buffers(), by_hand.buffers(), strict=True):
        assert torch.equal(value, recomputed), name


def test_the_batch_norm_recalibration_after_the_last_step_is_logged():
    """About 25 s of silence followed the last training step: the batch-norm recalibration, a
    pass over every image trained on (painted copies too), said nothing."""
    eye = synthetic_fundus(64, seed=0)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, painted=2, device="cpu")
    said: list[str] = []
    train_student([eye.image], [eye.fov], 0.12, config, log=said.append)
    line = "recalibrating batch norm over the 3 image(s) trained on ..."
    assert line in said, said
    assert said.index(line) > max(i for i, m in enumerate(said) if m.startswith("student step"))
