"""The loop that trains a segmenter on pseudo-labels: it must learn what the sure pixels say,
ignore the silent ones, and repeat with its seed."""

from __future__ import annotations

import math
import re
import shutil

import pytest
import torch

from helpers import signal_at_step, signal_in_checkpoint_writes
from localdisc.data.views import normalize
from localdisc.engine import pseudo_label
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.pseudo_label import fit_pseudo_labels
from localdisc.models.segmenter import Segmenter


def quiet(_: str) -> None:
    pass


def bright_spots(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with bright squares, labelled as foreground with full weight."""
    gen = torch.Generator().manual_seed(0)
    images = 0.2 * torch.rand(n, 3, size, size, generator=gen)
    label = torch.zeros(n, 1, size, size)
    for k in range(n):
        i, j = (int(v) for v in torch.randint(size - 8, (2,), generator=gen))
        label[k, :, i : i + 8, j : j + 8] = 1
    images = images + 0.6 * label
    return images, torch.cat([label, torch.ones_like(label)], 1)


def fit(images, targets, width: int = 4, **kwargs) -> Segmenter:
    torch.manual_seed(0)
    model = Segmenter(width=width, depth=2, size=images.shape[-1])
    options = dict(steps=60, batch=2, lr=1e-2, rotation=0.0, flips=True, log=quiet) | kwargs
    return fit_pseudo_labels(model, images, targets, **options)


def test_the_network_learns_the_pseudo_labels():
    images, targets = bright_spots()
    model = fit(images, targets, steps=100)
    recalibrate_batch_norm(model, images, batch=2)
    with torch.no_grad():
        prob = torch.sigmoid(model.eval()(normalize(images, "fundus")))
    label = targets[:, :1].bool()
    assert prob[label].mean() > 0.8 and prob[~label].mean() < 0.1


def test_the_learning_rate_anneals_by_cosine_or_stays_as_asked(monkeypatch):
    # RefineConfig(schedule="constant") asks for a constant rate: a scheduler stepped whatever
    # ``cosine`` passed every test (reviewer's mutation)
    rates: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    images, targets = bright_spots(2, 16)
    fit(images, targets, steps=6, cosine=False)
    assert rates == [1e-2] * 6
    rates.clear()
    fit(images, targets, steps=6)
    assert rates == pytest.approx([1e-2 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)])


def test_crops_are_windows_of_the_images_and_their_labels(monkeypatch):
    images, targets = bright_spots()
    seen = []

    def spy(x, y, **kwargs):
        seen.append((x, y))
        return x, y

    monkeypatch.setattr(pseudo_label, "augment", spy)
    fit(images, targets, steps=2, crop=32)  # a crop of the images' size: the whole images
    assert len(seen) == 2
    for x, y in seen:
        (k,) = [k for k in range(len(images)) if torch.equal(images[k], x[0])]
        assert torch.equal(targets[k], y[0])
    seen.clear()
    fit(images, targets, steps=3, crop=16)
    for x, y in seen:
        assert x.shape == (2, 3, 16, 16) and y.shape == (2, 2, 16, 16)
        # each crop is a window of one of the images, its labels the same window
        hits = [(k, i, j) for k in range(len(images)) for i in range(17) for j in range(17)
                if torch.equal(images[k, :, i : i + 16, j : j + 16], x[0])]  # fmt: skip
        assert len(hits) == 1
        k, i, j = hits[0]
        assert torch.equal(targets[k, :, i : i + 16, j : j + 16], y[0])


def test_every_image_is_drawn_and_augmented_with_the_rotation_and_flips_asked(monkeypatch):
    images, targets = bright_spots(n=3, size=16)
    seen = []
    real = pseudo_label.augment

    def spy(x, y, **kwargs):
        seen.append((x, kwargs["rotation"], kwargs["flips"]))
        return real(x, y, **kwargs)

    monkeypatch.setattr(pseudo_label, "augment", spy)
    fit(images, targets, steps=20, rotation=30.0, flips=True)
    assert {(rotation, flips) for _, rotation, flips in seen} == {(30.0, True)}
    # 40 draws of 3 images: the last one among them too.
    drawn = {k for x, _, _ in seen for row in x for k in range(3) if torch.equal(row, images[k])}
    assert drawn == {0, 1, 2}
    seen.clear()
    fit(images, targets, steps=2, rotation=0.0, flips=False)
    assert [(rotation, flips) for _, rotation, flips in seen] == [(0.0, False)] * 2


def test_silent_pixels_teach_nothing_and_a_seed_repeats_the_run():
    images, targets = bright_spots()
    silent = targets.clone()
    silent[:, 1] = 0
    torch.manual_seed(0)
    before = Segmenter(width=4, depth=2, size=32).state_dict()
    after = fit(images, silent, steps=5).state_dict()
    for name, value in before.items():
        if "running" not in name and "num_batches" not in name:  # batch norm still counts
            torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    first, again = fit(images, targets, steps=5, crop=16), fit(images, targets, steps=5, crop=16)
    for name, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=0, atol=0)


def test_a_progress_bar_counts_the_steps_and_shows_the_loss(capsys):
    images, targets = bright_spots(n=2, size=16)
    logged: list[str] = []
    fit(images, targets, steps=5, name="student step", progress=True, log=logged.append)
    shown = capsys.readouterr().out
    assert "student: step 5/5" in shown and "loss" in shown  # not "student step: step"
    # Not a terminal: the last plain line shows the last step's loss, as its log line does (it
    # showed the loss of the log point before).
    loss = re.search(r"student step 5/5: loss (\S+)", logged[-1]).group(1)
    assert re.search(rf"student: step 5/5 .*loss {loss}$", shown, re.M), shown
    fit(images, targets, steps=5)  # off by default: nothing shown
    assert capsys.readouterr().out == ""


# --- checkpoints: stopped by a signal, continued by the same call -----------------------------
#: 6 steps of crops, rotations and flips, the learning rate decaying: every state there is.
RESUMABLE = dict(steps=6, crop=16, rotation=30.0, name="refine step")


def same_weights(a: Segmenter, b: Segmenter) -> None:
    """Bit for bit, batch-norm statistics (and their step counts) included."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert torch.equal(sb[key], value), key


def test_a_signal_ends_the_step_checkpoints_it_and_the_same_call_continues_exactly(
    tmp_path, monkeypatch
):
    import signal

    from localdisc.engine.checkpoint import list_checkpoints

    images, targets = bright_spots()
    straight = fit(images, targets, **RESUMABLE)
    taken = signal_at_step(monkeypatch, pseudo_label, 4, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt, match=r"after refine step 4/6.*same call continues"):
        # checkpoints at the signal only
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path, checkpoint_seconds=math.inf)
    assert taken == [1, 2, 3, 4]  # the step went on, the next one did not start
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]
    assert pseudo_label.checkpoint_position(tmp_path) == "after refine step 4/6"
    monkeypatch.undo()
    taken = signal_at_step(monkeypatch, pseudo_label, 0, [])
    bars: list[tuple] = []  # the step and the time before, as each progress bar was given them
    real_bar = pseudo_label.ProgressBar

    def bar(*args, **kwargs):
        bars.append((args[1], kwargs["before"]))
        return real_bar(*args, **kwargs)

    monkeypatch.setattr(pseudo_label, "ProgressBar", bar)
    logged: list[str] = []
    torch.manual_seed(1)  # other first weights: the checkpoint's replace them
    model = Segmenter(width=4, depth=2, size=32)
    options = dict(batch=2, lr=1e-2, flips=True, log=logged.append, **RESUMABLE)
    again = fit_pseudo_labels(model, images, targets, checkpoint_dir=tmp_path, **options)
    assert taken == [1, 2]  # steps 5 and 6, nothing redone
    same_weights(straight, again)
    assert logged[0] == (f"continuing the interrupted training from its checkpoint ({tmp_path}): "
                         "after refine step 4/6")  # fmt: skip
    assert logged[-1].startswith("refine step 6/6: loss")
    assert bars[0][0] == 4 and bars[0][1] > 0  # the bar goes on from step 4, and its time


def test_a_checkpoint_is_written_every_so_often_and_after_the_last_step(tmp_path, monkeypatch):
    """The last step's checkpoint too: a stop while the caller uses the network (refinement's
    maps of many images) trains nothing again."""
    from localdisc.engine import checkpoint
    from localdisc.engine.checkpoint import list_checkpoints

    images, targets = bright_spots()
    saved: list[int] = []
    real = checkpoint.save_checkpoint

    def save_checkpoint(folder, step, *args, **kwargs):
        saved.append(step)
        return real(folder, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)  # save_resumable's
    straight = fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path, checkpoint_seconds=0)
    assert saved == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006"]  # the newest only
    saved.clear()
    taken = signal_at_step(monkeypatch, pseudo_label, 0, [])
    logged: list[str] = []
    again = fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path, log=logged.append)
    assert taken == [] and saved == [] and logged[0].endswith("after refine step 6/6")
    same_weights(straight, again)
    # 60 s apart by default: a short run writes only its last step's.
    fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path / "other")
    assert saved == [6]


def test_a_checkpoint_of_other_settings_images_or_labels_is_said_removed_and_redone(
    tmp_path, monkeypatch
):
    import signal

    from localdisc.engine.checkpoint import list_checkpoints

    images, targets = bright_spots()
    other_targets = targets.clone()
    other_targets[0, 1, :4] = 0
    for changed, differ in (
        ({"lr": 2e-2}, "settings"),
        ({"crop": None}, "settings"),
        ({"rotation": 0.0}, "settings"),
        ({"flips": False}, "settings"),
        ({"seed": 1}, "settings"),
        ({"batch": 3}, "settings"),
        ({"cosine": False}, "settings"),
        ({"bf16": True}, "settings"),
        ({"images": images.flip(-1)}, "images"),
        ({"targets": other_targets}, "pseudo-labels"),
        ({"width": 8}, "layers"),
    ):
        signal_at_step(monkeypatch, pseudo_label, 2, [signal.SIGINT])
        with pytest.raises(KeyboardInterrupt):
            fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path)
        monkeypatch.undo()
        assert len(list_checkpoints(tmp_path)) == 1
        options = {"images": images, "targets": targets, **RESUMABLE, **changed}
        logged: list[str] = []
        redone = fit(**options, checkpoint_dir=tmp_path, log=logged.append)
        assert logged[0] == (f"{tmp_path}: its checkpoint is of another training (its {differ} "
                             "differ from this one's): starting over")  # fmt: skip
        same_weights(fit(**options), redone)
        assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006"]
        for stale in list_checkpoints(tmp_path):
            shutil.rmtree(stale)
    # A damaged one is said, dropped and the training redone.
    signal_at_step(monkeypatch, pseudo_label, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    (list_checkpoints(tmp_path)[0] / "model.safetensors").write_bytes(b"damaged")
    logged = []
    redone = fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path, log=logged.append)
    same_weights(fit(images, targets, **RESUMABLE), redone)
    assert any("starting the training over" in m for m in logged), logged


def test_a_checkpoint_of_a_diverged_training_is_refused_not_continued(tmp_path):
    """NaN weights that a diverging training checkpointed (with valid checksums) were continued
    silently, and the network made nothing of the images."""
    from localdisc.engine.checkpoint import (
        list_checkpoints,
        load_latest_checkpoint,
        save_checkpoint,
    )
    from localdisc.errors import CheckpointError

    images, targets = bright_spots()
    fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path)  # its last step's checkpoint
    state, tensors = load_latest_checkpoint(tmp_path)
    for key, value in (("encoder.blocks.0.0.0.weight", math.nan), ("head.bias", math.inf)):
        tensors["model"][key] = torch.full_like(tensors["model"][key], value)
    save_checkpoint(tmp_path, state["step"], tensors, state)
    with pytest.raises(CheckpointError) as caught:
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'step_00000006' / 'model.safetensors'}: weights hold NaN or inf values (in "
        "2 tensors: encoder.blocks.0.0.0.weight, head.bias); the training diverged before this "
        f"checkpoint was written; delete {tmp_path} to start the training over (a lower "
        "learning rate may keep it from diverging again)"
    )
    assert len(list_checkpoints(tmp_path)) == 1  # kept, as it was
    # Other settings start over, as ever.
    logged: list[str] = []
    fit(images, targets, **{**RESUMABLE, "lr": 1e-3}, checkpoint_dir=tmp_path, log=logged.append)
    assert logged[0].endswith("differ from this one's): starting over")


def test_a_training_that_diverges_stops_and_checkpoints_no_nan_weights(tmp_path):
    """A learning rate far too high turned the weights NaN: the training went on silently,
    checkpointed them, and its network predicted NaN maps (scored far from here, or resumed
    into the refusal above). It stops at the first check, naming where and what to change."""
    from localdisc.engine.checkpoint import list_checkpoints, load_latest_checkpoint
    from localdisc.errors import DivergedError

    images, targets = bright_spots()
    with pytest.raises(DivergedError, match=r"^the training diverged by step 2/10: its weights "
                       r"hold NaN or inf \(in \d+ tensors: .*\); a learning rate lower than "
                       r"1e\+30 may keep it from diverging$"):  # fmt: skip
        fit(images, targets, steps=10, lr=1e30)
    # With a checkpoint at every step: the last one written is the last finite one.
    logged: list[str] = []
    with pytest.raises(DivergedError, match=r"by refine step 2/6"):
        fit(images, targets, **RESUMABLE, lr=1e30, checkpoint_dir=tmp_path,
            checkpoint_seconds=0, log=logged.append)  # fmt: skip
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    _, tensors = load_latest_checkpoint(tmp_path)
    assert all(v.isfinite().all() for v in tensors["model"].values() if v.is_floating_point())
    # Between log points (every 4 of 20 steps): the checkpoint's own check stops it.
    shutil.rmtree(tmp_path)
    with pytest.raises(DivergedError, match=r"by refine step 2/20"):
        fit(images, targets, **{**RESUMABLE, "steps": 20}, lr=1e30, checkpoint_dir=tmp_path,
            checkpoint_seconds=0)  # fmt: skip
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]


def test_weights_that_turn_nan_at_the_last_step_are_refused_too(monkeypatch):
    """The last of 11 steps is no log point (every 2): the end's own check stops it."""
    from localdisc.errors import DivergedError

    real, calls = pseudo_label.pseudo_label_loss, []

    def nan_at_the_end(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.nan if len(calls) == 11 else loss

    monkeypatch.setattr(pseudo_label, "pseudo_label_loss", nan_at_the_end)
    images, targets = bright_spots()
    with pytest.raises(DivergedError, match=r"^the training diverged by step 11/11: "):
        fit(images, targets, steps=11)


def test_a_stop_asked_for_while_it_diverges_is_a_stop_not_a_divergence(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM in a step whose weights turn NaN ended as a DivergedError, which
    benchmark shape-guided skips, going on to the next seed: the stop was lost."""
    import signal

    signal_at_step(monkeypatch, pseudo_label, 3, [signal.SIGINT])
    images, targets = bright_spots()
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        fit(images, targets, **{**RESUMABLE, "steps": 20}, lr=1e30, checkpoint_dir=tmp_path,
            checkpoint_seconds=float("inf"), log=logged.append)  # fmt: skip
    assert any(m.startswith("the training diverged by refine step ") for m in logged), logged
    assert logged[-1].endswith("[stopped by SIGINT]")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_checkpoint_folder_a_signal_stops_at_once(monkeypatch):
    import signal

    images, targets = bright_spots()
    taken = signal_at_step(monkeypatch, pseudo_label, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt) as stopped:
        fit(images, targets, **RESUMABLE)
    assert taken == [1, 2] and str(stopped.value) == ""  # in step 2, before its forward pass


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    import signal

    images, targets = bright_spots()
    taken = signal_at_step(monkeypatch, pseudo_label, 2, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path)
    assert taken == [1, 2] and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert pseudo_label.checkpoint_position(tmp_path) is None


def test_a_bad_checkpoint_interval_is_refused(tmp_path):
    from localdisc.errors import LocaldiscError

    images, targets = bright_spots()
    with pytest.raises(LocaldiscError, match="checkpoint_seconds must be >= 0"):
        fit(images, targets, steps=1, checkpoint_dir=tmp_path, checkpoint_seconds=math.nan)


def test_a_second_signal_while_the_stops_checkpoint_is_written_waits_and_says_where(
    tmp_path, monkeypatch
):
    """As the first signal does, and as fine-tuning's: the KeyboardInterrupt of the held second
    one said nothing of the checkpoint it had waited for."""
    import signal

    images, targets = bright_spots()
    straight = fit(images, targets, **RESUMABLE)
    signal_at_step(monkeypatch, pseudo_label, 4, [signal.SIGINT])
    written = signal_in_checkpoint_writes(monkeypatch, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt, match=r"after refine step 4/6.*same call continues"):
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path, checkpoint_seconds=math.inf)
    assert "state.json" in written  # the write went on to its end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert pseudo_label.checkpoint_position(tmp_path) == "after refine step 4/6"
    monkeypatch.undo()
    taken = signal_at_step(monkeypatch, pseudo_label, 0, [])
    same_weights(straight, fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path))
    assert taken == [1, 2]  # nothing redone


def test_a_third_signal_drops_that_checkpoint_keeps_the_one_before_and_says_so(
    tmp_path, monkeypatch
):
    """As fine-tuning says it: nothing was logged, and the checkpoint seemed written."""
    import signal

    from localdisc.engine.checkpoint import list_checkpoints

    images, targets = bright_spots()
    thrice, logged = [signal.SIGINT, signal.SIGINT], []
    signal_at_step(monkeypatch, pseudo_label, 2, [signal.SIGINT])
    signal_in_checkpoint_writes(monkeypatch, thrice)
    with pytest.raises(KeyboardInterrupt):
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path / "a", log=logged.append,
            checkpoint_seconds=math.inf)  # fmt: skip
    assert logged[-1] == (
        f"{tmp_path / 'a'}: the checkpoint of refine step 2/6 was not written (stopped again "
        "while writing it); none is kept"
    )
    assert not list_checkpoints(tmp_path / "a")
    monkeypatch.undo()
    # Every step checkpointed, then a stop at step 3 whose write is dropped.
    signal_at_step(monkeypatch, pseudo_label, 3, [signal.SIGINT])
    signal_in_checkpoint_writes(monkeypatch, thrice, nth=3)
    with pytest.raises(KeyboardInterrupt):
        fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path / "b", log=logged.append,
            checkpoint_seconds=0)  # fmt: skip
    assert logged[-1] == (
        f"{tmp_path / 'b'}: the checkpoint of refine step 3/6 was not written (stopped again "
        "while writing it); the one before is kept (after refine step 2/6)"
    )
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step_00000002"]
    monkeypatch.undo()
    same_weights(fit(images, targets, **RESUMABLE),
                 fit(images, targets, **RESUMABLE, checkpoint_dir=tmp_path / "b"))  # fmt: skip


def test_deterministic_cudnn_sets_the_flags_and_restores_them_even_on_an_error():
    """cuDNN may pick a non-deterministic algorithm: pseudo-labels a bit off on a rerun did not
    match the checkpoint's hash, and a GPU's refinement started over."""
    from torch.backends import cudnn

    from localdisc.engine.pseudo_label import deterministic_cudnn

    kept = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        with pytest.raises(ValueError), deterministic_cudnn():
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
            raise ValueError
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = kept
