import re

import pytest
import torch
from monai.losses import DiceLoss

import localdisc.engine.finetune as finetune_engine
from helpers import signal_at_step, signal_in_checkpoint_writes, squares
from localdisc.engine.finetune import FinetuneConfig, augment, finetune, mean_dice
from localdisc.errors import DivergedError, LocaldiscError
from localdisc.models.segmenter import Segmenter


def test_paper_dice_loss_is_monai_dice_loss_minus_one():
    # METHOD.md 4: -2 sum(y p) / (sum y + sum p + 1) over the batch.
    logits = torch.randn(2, 1, 8, 8)
    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    p = torch.sigmoid(logits)
    paper = -2 * (y * p).sum() / (y.sum() + p.sum() + 1)
    monai = DiceLoss(sigmoid=True, batch=True, smooth_nr=0.0, smooth_dr=1.0)(logits, y)
    assert torch.allclose(monai - 1, paper, atol=1e-6)


def test_mean_dice_by_hand():
    prob = torch.tensor([[[[0.9, 0.9], [0.1, 0.1]]], [[[0.1, 0.1], [0.1, 0.1]]]])
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # Image 0: tp 1, |P| 2, |T| 2 -> 0.5; image 1: both empty -> 1.
    assert mean_dice(prob, masks) == pytest.approx(0.75)


def test_augmentation_moves_image_and_mask_together():
    images, masks = squares(8, 48)
    g = torch.Generator().manual_seed(1)
    x, y = augment(images, masks, rotation=180, flips=True, generator=g)
    assert not torch.equal(y, masks)  # something moved
    # The bright square is still where the mask is (bilinear edges aside).
    bright = x[:, :1] > 0.5
    agreement = (bright == (y > 0.5)).float().mean()
    assert agreement > 0.97
    same_x, same_y = augment(images, masks, rotation=0, flips=False, generator=g)
    assert torch.equal(same_x, images) and torch.equal(same_y, masks)


def test_frozen_phase_keeps_the_encoder_and_its_batch_norm_statistics():
    torch.manual_seed(0)
    model = Segmenter(size=32)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    data = squares(4)
    config = FinetuneConfig(frozen_epochs=2, epochs=0, device="cpu", progress=False)
    result = finetune(model, data, data, config, pretrained=True, log=lambda m: None)
    assert [p.name for p in result.phases] == ["frozen"]
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and running stats alike
    assert result.frozen_state is not None
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_training_learns_an_easy_task_keeps_the_best_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = Segmenter(size=32)
        config = FinetuneConfig(frozen_epochs=3, epochs=12, device="cpu", progress=False, seed=5)
        train, val = squares(4, seed=1), squares(2, seed=2)
        return finetune(model, train, val, config, pretrained=True, log=lambda m: None), model

    result, model = run()
    frozen, full = result.phases
    assert (frozen.name, full.name) == ("frozen", "finetune")
    history = full.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert full.best_val_dice == max(row["val_dice"] for row in history)
    assert full.best_val_dice > 0.6
    # The model ends with the best epoch's weights.
    from localdisc.engine.finetune import predict_batch

    val = squares(2, seed=2)
    assert mean_dice(predict_batch(model, val[0], 2), val[1]) == pytest.approx(full.best_val_dice)
    again, _ = run()
    for key, value in result.state.items():
        assert torch.equal(value, again.state[key]), key


def test_from_scratch_is_one_phase_and_bad_configs_are_refused():
    model = Segmenter(size=32)
    data = squares(2)
    config = FinetuneConfig(frozen_epochs=5, epochs=1, device="cpu", progress=False)
    result = finetune(model, data, data, config, pretrained=False, log=lambda m: None)
    assert [(p.name, p.epochs) for p in result.phases] == [("scratch", 1)]
    with pytest.raises(LocaldiscError, match="batch must be >= 1"):
        FinetuneConfig(batch=0)
    with pytest.raises(LocaldiscError, match="nothing to train"):
        finetune(model, data, data, FinetuneConfig(epochs=0, progress=False), pretrained=False)


def test_an_epoch_is_one_pass_or_the_asked_number_of_steps():
    from localdisc.engine.finetune import _epoch_batches

    g = torch.Generator().manual_seed(0)
    one_pass = _epoch_batches(5, FinetuneConfig(batch=2), g)
    assert [len(b) for b in one_pass] == [2, 2, 1]
    assert sorted(torch.cat(one_pass).tolist()) == [0, 1, 2, 3, 4]
    longer = _epoch_batches(2, FinetuneConfig(batch=2, steps_per_epoch=7), g)
    assert len(longer) == 7 and all(sorted(b.tolist()) == [0, 1] for b in longer)
    with pytest.raises(LocaldiscError, match="steps_per_epoch"):
        FinetuneConfig(steps_per_epoch=0)


def test_the_progress_bar_counts_the_epochs_of_both_phases(capsys):
    data = squares(4)
    config = FinetuneConfig(frozen_epochs=2, epochs=1, device="cpu", progress=True)
    finetune(Segmenter(size=32), data, data, config, pretrained=True, log=lambda _: None)
    shown = capsys.readouterr().out
    assert "finetune" in shown and "3/3" in shown and "val Dice" in shown


def test_the_progress_lines_name_the_phases_and_show_the_soft_dice(capsys):
    # A log file read "finetune finetune: step 4/6 ..., loss -0.1412 val Dice 0.1830": the phase
    # named as the title, epochs called steps, and a loss that is minus the soft Dice.
    data = squares(4)
    config = FinetuneConfig(frozen_epochs=1, epochs=1, device="cpu", progress=True)
    logged: list[str] = []
    result = finetune(Segmenter(size=32), data, data, config, pretrained=True, log=logged.append)
    # Each plain line starts with the date and time ("2026-12-05 14:20:31 "): 20 characters.
    lines = [line[20:] for line in capsys.readouterr().out.splitlines()]
    assert [line.split(":")[0] for line in lines] == [
        "finetune frozen encoder",
        "finetune whole network",
    ]
    row = result.phases[1].history[0]
    assert row["loss"] < 0  # history.csv keeps the paper's loss, minus the soft Dice
    assert lines[1].startswith("finetune whole network: epoch 2/2 (100%)")
    assert lines[1].endswith(f"train soft Dice {-row['loss']:.4f}, val Dice {row['val_dice']:.4f}")
    assert logged[1].startswith("whole network: best validation Dice")
    config = FinetuneConfig(epochs=1, device="cpu", progress=True)
    finetune(Segmenter(size=32), data, data, config, pretrained=False, log=logged.append)
    assert capsys.readouterr().out[20:].startswith("finetune from scratch: epoch 1/1 (100%)")


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf"), float("-inf")])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(lr):
    with pytest.raises(LocaldiscError, match=f"lr must be > 0 and finite, not {lr}"):
        FinetuneConfig(lr=lr)


def test_uint8_images_and_bool_masks_train_as_their_float_form():
    # grid_sample has no bool or uint8 kernel: such inputs failed deep inside augmentation.
    def run(images, masks):
        torch.manual_seed(0)
        model = Segmenter(size=32)
        config = FinetuneConfig(frozen_epochs=1, epochs=1, device="cpu", progress=False)
        result = finetune(model, (images, masks), (images, masks), config, pretrained=True)
        return result.state

    images, masks = squares(2)
    as_bytes = (images * 255).round().to(torch.uint8)
    expected = run(as_bytes.float() / 255, masks)
    got = run(as_bytes, masks.bool())
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_training_tensors_of_the_wrong_shape_are_named():
    images, masks = squares(2)
    model, config = Segmenter(size=32), FinetuneConfig(epochs=1, progress=False)
    with pytest.raises(LocaldiscError, match=r"fine-tuning train: images must be \[N, C, S, S\]"):
        finetune(model, (images[0], masks), (images, masks), config, pretrained=False)
    with pytest.raises(LocaldiscError, match="fine-tuning val: .* differ in number or size"):
        finetune(model, (images, masks), (images, masks[:1]), config, pretrained=False)


# --- checkpoints: stopped by a signal, continued by the same call -----------------------------
#: frozen 1 + whole network 2 epochs of 2 steps: 6 steps in all.
RESUMABLE = dict(frozen_epochs=1, epochs=2, steps_per_epoch=2, device="cpu", progress=False)


def resumable_run(folder=None, log=None, **changes):
    """A tiny pre-trained fine-tuning (the same model each time) into ``folder``'s checkpoints."""
    torch.manual_seed(0)
    model = Segmenter(size=32)
    config = FinetuneConfig(**{**RESUMABLE, **changes})
    train, val = squares(4, seed=1), squares(2, seed=2)
    return finetune(model, train, val, config, pretrained=True, log=log or (lambda m: None),
                    checkpoint_dir=folder)  # fmt: skip


def same_results(a, b) -> None:
    for key, value in a.state.items():
        torch.testing.assert_close(b.state[key], value, rtol=0, atol=0, msg=key)
    for key, value in a.frozen_state.items():
        torch.testing.assert_close(b.frozen_state[key], value, rtol=0, atol=0, msg=key)
    drop = lambda p: {**p.__dict__, "seconds": None}  # noqa: E731
    assert [drop(p) for p in b.phases] == [drop(p) for p in a.phases]


@pytest.fixture(scope="module")
def straight():
    return resumable_run()


@pytest.mark.parametrize(
    "step,continues_at",
    [
        # inside an epoch of the frozen phase
        (1, "frozen encoder epoch 1/1 (epoch 1/3 in all), step 2/2"),
        # inside a later epoch of the next phase
        (5, "whole network epoch 2/2 (epoch 3/3 in all), step 2/2"),
        # the frozen phase's last step: its epoch ends first
        (2, "whole network epoch 1/2 (epoch 2/3 in all)"),
    ],
)
def test_a_signal_ends_the_step_checkpoints_it_and_the_same_call_continues_exactly(
    tmp_path, monkeypatch, straight, step, continues_at
):
    import signal

    from localdisc.engine.finetune import checkpoint_position

    taken = signal_at_step(monkeypatch, finetune_engine, step, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, checkpoint_seconds=float("inf"))  # checkpoints at a signal only
    assert len(taken) == step  # the step went on, the next one did not start
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert checkpoint_position(tmp_path) == continues_at
    monkeypatch.undo()
    taken = signal_at_step(monkeypatch, finetune_engine, 0, [])

    bars: list[float] = []  # the time before, as each progress bar was given it
    real_bar = finetune_engine.ProgressBar
    monkeypatch.setattr(
        finetune_engine,
        "ProgressBar",
        lambda *a, **k: bars.append(k.get("before", 0.0)) or real_bar(*a, **k),
    )
    logged: list[str] = []
    again = resumable_run(tmp_path, log=logged.append)
    assert len(taken) == 6 - step  # nothing redone
    # Elapsed counts the time before the stop, as the epochs count those before it.
    assert bars == [again.earlier_seconds]
    assert logged[0].startswith("continuing the interrupted fine-tuning from its checkpoint")
    assert logged[0].endswith(continues_at)
    same_results(straight, again)
    assert again.earlier_seconds > 0


def test_a_stop_asked_for_while_it_diverges_is_a_stop_not_a_divergence(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM in the last step of an epoch whose weights turned NaN ended as a
    DivergedError, which benchmark transfer skips, going on to its next run: the stop was lost."""
    import signal

    signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])  # epoch 1's last step
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, lr=1e30, checkpoint_seconds=float("inf"), log=logged.append)
    assert logged[-1].startswith("the fine-tuning diverged (frozen encoder, epoch 1)")
    assert logged[-1].endswith("[stopped by SIGINT]")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_inside_an_epoch_whose_weights_turned_nan_keeps_the_checkpoint_before(
    tmp_path, monkeypatch
):
    """A signal inside an epoch checkpointed that step's NaN weights over the good checkpoint
    before it (one is kept), and "the same call continues from there" raised DivergedError."""
    import math
    import signal

    from localdisc.engine.checkpoint import list_checkpoints, load_latest_checkpoint

    taken = signal_at_step(monkeypatch, finetune_engine, 3, [signal.SIGINT])  # epoch 2, step 1
    real = finetune_engine.DiceLoss

    class NanAtStep3(real):
        def forward(self, *args, **kwargs):
            loss = super().forward(*args, **kwargs)
            return loss * math.nan if len(taken) == 3 else loss

    monkeypatch.setattr(finetune_engine, "DiceLoss", NanAtStep3)
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, checkpoint_seconds=0, log=logged.append)
    assert logged[-1].endswith("[stopped by SIGINT]")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]  # epoch 1's end
    _, tensors = load_latest_checkpoint(tmp_path)
    assert all(v.isfinite().all() for v in tensors["model"].values() if v.is_floating_point())


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    import signal

    taken = signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, checkpoint_seconds=float("inf"))
    assert len(taken) == 2 and not list(tmp_path.iterdir())  # stopped inside step 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_checkpoint_folder_a_signal_stops_at_once(monkeypatch):
    import signal

    taken = signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run()
    assert len(taken) == 2


def test_checkpoints_are_written_atomically_every_so_often_and_continued_from(
    tmp_path, monkeypatch, straight
):
    """A write that fails (a full disk, a kill) leaves the previous checkpoint, which the same
    call continues from; a killed write's temporary folder is ignored."""
    import localdisc.engine.checkpoint as checkpoint
    from localdisc.engine.checkpoint import list_checkpoints, verify_checkpoint

    real, written = checkpoint._write_file, []

    def write_file(path, data):
        written.append(path.name)
        if written.count("model.safetensors") == 3 and path.name == "optimizer.safetensors":
            raise OSError("the disk failed")  # in the third checkpoint, after its weights
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", write_file)
    with pytest.raises(OSError, match="the disk failed"):
        resumable_run(tmp_path, checkpoint_seconds=0)  # at every epoch's end
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step_00000004"]  # the second epoch's, whole
    verify_checkpoint(kept[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004"]
    (tmp_path / ".tmp-killed").mkdir()  # what a SIGKILL in a write leaves
    (tmp_path / ".tmp-killed" / "model.safetensors").write_bytes(b"half")
    monkeypatch.undo()
    logged: list[str] = []
    again = resumable_run(tmp_path, log=logged.append)
    assert logged[0].endswith("whole network epoch 2/2 (epoch 3/3 in all)")
    same_results(straight, again)
    # The last epoch's checkpoint, though less than checkpoint_seconds after the one before: a
    # stop while the caller evaluates the model then retrains nothing.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006"]
    logged.clear()
    resumable_run(tmp_path, log=logged.append)
    assert logged[0].endswith("the end of the training")


def test_a_checkpoint_of_other_images_or_settings_is_refused_and_a_corrupt_one_redone(
    tmp_path, monkeypatch, straight
):
    import signal

    from localdisc.engine.checkpoint import list_checkpoints
    from localdisc.errors import CheckpointError

    signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"another fine-tuning \(its settings differ"):
        resumable_run(tmp_path, lr=2e-3)
    model, config = Segmenter(size=32), FinetuneConfig(**RESUMABLE)
    with pytest.raises(CheckpointError, match="its images differ.*delete the folder"):
        finetune(model, squares(4, seed=3), squares(2, seed=2), config, pretrained=True,
                 checkpoint_dir=tmp_path)  # fmt: skip
    # The refusals deleted nothing; a damaged checkpoint is said, dropped and the run redone.
    assert len(list_checkpoints(tmp_path)) == 1
    (list_checkpoints(tmp_path)[0] / "model.safetensors").write_bytes(b"damaged")
    logged: list[str] = []
    same_results(straight, resumable_run(tmp_path, log=logged.append))
    assert any("starting the fine-tuning over" in m for m in logged)


def test_a_checkpoint_of_a_diverged_fine_tuning_is_refused(tmp_path, monkeypatch):
    """NaN weights that a diverging training checkpointed (with valid checksums) were continued
    silently: the epochs after scored 0 and the best model was quietly the one before."""
    import signal

    from localdisc.engine.checkpoint import load_latest_checkpoint, save_checkpoint
    from localdisc.errors import CheckpointError

    signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, checkpoint_seconds=float("inf"))
    monkeypatch.undo()
    state, tensors = load_latest_checkpoint(tmp_path)
    model = dict(tensors["model"])
    key = next(k for k, v in model.items() if v.is_floating_point())
    tensors["model"][key] = torch.full_like(model[key], float("nan"))
    save_checkpoint(tmp_path, state["step"], tensors, state)
    with pytest.raises(DivergedError) as caught:  # which a benchmark skips, going on
        resumable_run(tmp_path)
    assert isinstance(caught.value, CheckpointError)  # as it was
    assert str(caught.value) == (
        f"{tmp_path / 'step_00000002' / 'model.safetensors'}: weights hold NaN or inf values (in "
        f"1 tensor: {key}); the training diverged before this checkpoint was written; delete "
        f"{tmp_path} to start the fine-tuning over (a lower learning rate may keep it from "
        "diverging again)"
    )
    # The best weights too: they are the result.
    tensors["model"], tensors["best"][key] = model, torch.full_like(model[key], float("inf"))
    save_checkpoint(tmp_path, state["step"], tensors, state)
    with pytest.raises(CheckpointError, match=r"best.safetensors: weights hold NaN or inf"):
        resumable_run(tmp_path)


def test_where_a_fine_tuning_continues_counts_the_epochs_as_its_progress_lines_do():
    """Progress lines count the epochs of both phases ("whole network: epoch 4/5"); stopped
    there, the run said it continues at "whole network epoch 2/3", as if it had gone back."""
    from localdisc.engine.finetune import _position

    two = {"finetune": {"phases": [["frozen", 2], ["finetune", 3]]}, "steps_per_epoch": 30}
    state = {**two, "phase": 1, "epoch": 2, "epoch_step": 25}
    assert _position(state) == "whole network epoch 2/3 (epoch 4/5 in all), step 26/30"
    assert _position({**two, "phase": 0, "epoch": 3, "epoch_step": 0}) == (
        "whole network epoch 1/3 (epoch 3/5 in all)"
    )
    assert _position({**two, "phase": 1, "epoch": 4, "epoch_step": 0}) == "the end of the training"
    one = {"finetune": {"phases": [["scratch", 4]]}, "steps_per_epoch": 30}
    assert _position({**one, "phase": 0, "epoch": 3, "epoch_step": 25}) == (
        "from scratch epoch 3/4, step 26/30"
    )


def test_a_second_signal_while_the_stops_checkpoint_is_written_waits_for_it(
    tmp_path, monkeypatch, straight
):
    """A second Ctrl-C in the checkpoint the first asked for cut its write: the folder was left
    empty, and the same call redid the whole fine-tuning. The write now ends first."""
    import signal

    from localdisc.engine.finetune import checkpoint_position

    signal_at_step(monkeypatch, finetune_engine, 5, [signal.SIGINT])
    written = signal_in_checkpoint_writes(monkeypatch, [signal.SIGINT])
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path, log=logged.append, checkpoint_seconds=float("inf"))
    assert "state.json" in written  # the write went on to its end
    assert not [m for m in logged if "not written" in m]
    assert checkpoint_position(tmp_path) == "whole network epoch 2/2 (epoch 3/3 in all), step 2/2"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    taken = signal_at_step(monkeypatch, finetune_engine, 0, [])
    same_results(straight, resumable_run(tmp_path))
    assert len(taken) == 1  # nothing redone


def test_a_third_signal_drops_that_checkpoint_keeps_the_one_before_and_says_so(
    tmp_path, monkeypatch, straight
):
    """A write that hangs can still be stopped: a third signal drops it, whole, and says what
    is kept; the same call continues from that."""
    import signal

    from localdisc.engine.checkpoint import list_checkpoints

    logged: list[str] = []
    thrice = [signal.SIGINT, signal.SIGINT]
    signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])
    signal_in_checkpoint_writes(monkeypatch, thrice)
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path / "a", log=logged.append, checkpoint_seconds=float("inf"))
    assert logged[-1] == (
        f"{tmp_path / 'a'}: the checkpoint of whole network epoch 1/2 (epoch 2/3 in all) was not "
        "written (stopped again while writing it); none is kept"
    )
    assert not list_checkpoints(tmp_path / "a")
    monkeypatch.undo()
    # Every epoch's end checkpointed (step 2), then a stop at step 3 whose write is dropped.
    signal_at_step(monkeypatch, finetune_engine, 3, [signal.SIGINT])
    signal_in_checkpoint_writes(monkeypatch, thrice, nth=2)
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path / "b", log=logged.append, checkpoint_seconds=0)
    assert logged[-1].endswith(
        "the checkpoint of whole network epoch 1/2 (epoch 2/3 in all), step 2/2 was not written "
        "(stopped again while writing it); the one before is kept (whole network epoch 1/2 "
        "(epoch 2/3 in all))"
    )
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000002"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step_00000002"]
    monkeypatch.undo()
    same_results(straight, resumable_run(tmp_path / "b"))


def test_a_stop_says_where_the_same_call_continues_as_the_pseudo_label_loop_does(
    tmp_path, monkeypatch
):
    """The first signal's stop, and a second one's held until the checkpoint is written, both
    name the checkpoint and where it continues (the KeyboardInterrupt said nothing)."""
    import signal

    def where(folder) -> str:
        return (rf"in {re.escape(str(folder))} \(whole network epoch 2/2 \(epoch 3/3 in all\), "
                r"step 2/2\): the same call continues from there")  # fmt: skip

    signal_at_step(monkeypatch, finetune_engine, 5, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt, match=where(tmp_path / "a")):
        resumable_run(tmp_path / "a", checkpoint_seconds=float("inf"))
    monkeypatch.undo()
    signal_at_step(monkeypatch, finetune_engine, 5, [signal.SIGINT])
    signal_in_checkpoint_writes(monkeypatch, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt, match=where(tmp_path / "b")):
        resumable_run(tmp_path / "b", checkpoint_seconds=float("inf"))


def test_a_random_init_stopped_by_a_signal_continues_with_other_frozen_epochs(
    tmp_path, monkeypatch
):
    """--init random trains one phase of --epochs, so tasks.transfer takes a run folder stopped
    with --frozen-epochs 100 as "the same settings" with 5; its checkpoint was refused (another
    fine-tuning: delete the folder). It is continued now, to the weights of an uninterrupted run;
    with a frozen phase, other frozen_epochs are still another fine-tuning."""
    import signal

    from localdisc.errors import CheckpointError

    def scratch_run(folder=None, log=None, **changes):
        torch.manual_seed(0)
        model = Segmenter(size=32)
        config = FinetuneConfig(**{**RESUMABLE, "epochs": 2, **changes})
        train, val = squares(4, seed=1), squares(2, seed=2)
        return finetune(model, train, val, config, pretrained=False,
                        log=log or (lambda m: None), checkpoint_dir=folder)  # fmt: skip

    straight = scratch_run(frozen_epochs=7)
    signal_at_step(monkeypatch, finetune_engine, 3, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        scratch_run(tmp_path, frozen_epochs=100, checkpoint_seconds=float("inf"))
    monkeypatch.undo()
    taken = signal_at_step(monkeypatch, finetune_engine, 0, [])
    logged: list[str] = []
    again = scratch_run(tmp_path, log=logged.append, frozen_epochs=5)
    assert logged[0].startswith("continuing the interrupted fine-tuning from its checkpoint")
    assert logged[0].endswith("from scratch epoch 2/2, step 2/2")
    assert len(taken) == 1  # nothing redone
    for key, value in straight.state.items():
        torch.testing.assert_close(again.state[key], value, rtol=0, atol=0, msg=key)
    drop = lambda p: {**p.__dict__, "seconds": None}  # noqa: E731
    assert [drop(p) for p in again.phases] == [drop(p) for p in straight.phases]
    # Continued again (finished: nothing to train), with yet another value.
    logged.clear()
    scratch_run(tmp_path, log=logged.append, frozen_epochs=0)
    assert logged[0].endswith("the end of the training")

    pretrained = tmp_path / "pretrained"
    signal_at_step(monkeypatch, finetune_engine, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        resumable_run(pretrained)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"another fine-tuning \(its settings and phases"):
        resumable_run(pretrained, frozen_epochs=2)


@pytest.mark.parametrize(
    "which,masks,shown",
    [
        ("train", (squares(2)[1] * 255).to(torch.uint8), r"0, 255 \(torch.uint8\)"),
        ("val", squares(2)[1] * 255, r"0, 255 \(torch.float32\)"),
        ("train", squares(2)[1] * 0.5, r"0, 0.5 \(torch.float32\)"),
        ("val", torch.full((2, 1, 32, 32), float("nan")), r"nan \(torch.float32\)"),
    ],
)
def test_masks_other_than_0_and_1_are_refused_naming_them(which, masks, shown):
    """A 0/255 mask (a PNG as PIL or numpy reads it) was only made float: the soft Dice loss
    took 255 as its target (a train soft Dice of 1.86 logged)."""
    from localdisc.errors import InputError

    images, good = squares(2)
    pairs = {"train": (images, good), "val": (images, good), which: (images, masks)}
    config = FinetuneConfig(epochs=1, device="cpu", progress=False)
    with pytest.raises(InputError, match=rf"fine-tuning's {which} masks .* values {shown}: pass "
                       r"masks > 0 for 0/255 masks"):  # fmt: skip
        finetune(Segmenter(size=32), pairs["train"], pairs["val"], config, pretrained=False)


def test_masks_of_0_and_1_of_any_type_train_as_bool_masks():
    from localdisc.engine.finetune import _training_pair

    images, masks = squares(2)
    for dtype in (torch.bool, torch.uint8, torch.int64, torch.float16, torch.float64):
        got = _training_pair((images, masks.to(dtype)), "train", "fundus")[1]
        assert got.dtype == torch.float32 and torch.equal(got, masks), dtype


@pytest.mark.parametrize(
    "which,images,problem",
    [
        ("train", torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.int32), "is int32, whose full"),
        ("val", torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.int16), "is int16, whose full"),
        ("train", torch.randint(0, 256, (2, 3, 32, 32)).float(), r"holds values in \[0, 255\]"),
        # standardised (ImageNet statistics)
        ("val", (squares(2)[0] - 0.45) / 0.226, r"holds values in \[-[\d.]+, [\d.]+\], not"),
        ("train", torch.full((2, 3, 32, 32), float("nan")), "contains NaN"),
    ],
)
def test_images_are_taken_as_prediction_takes_them_or_refused_naming_them(which, images, problem):
    """int16 and int32 images were divided by 65535 and floats of any range trained on, where
    Segmenter.predict (data.preprocess.as_raw_image) refuses them: a model could train on
    other intensities than it is given later."""
    from localdisc.errors import InputError

    data = squares(2)
    pairs = {"train": data, "val": data, which: (images, data[1])}
    config = FinetuneConfig(epochs=1, device="cpu", progress=False)
    with pytest.raises(InputError, match=rf"fine-tuning's {which} images tensor {problem}"):
        finetune(Segmenter(size=32), pairs["train"], pairs["val"], config, pretrained=False)


def test_training_images_have_the_values_prediction_gives_them():
    from localdisc.data.preprocess import as_raw_image
    from localdisc.engine.finetune import _training_pair

    g = torch.Generator().manual_seed(0)
    masks = squares(2)[1]
    for images in (
        torch.randint(0, 256, (2, 3, 32, 32), generator=g).to(torch.uint8),
        torch.randint(0, 65536, (2, 3, 32, 32), generator=g).to(torch.uint16),
        torch.rand(2, 3, 32, 32, generator=g) > 0.5,
        torch.rand(2, 3, 32, 32, generator=g) * 1.2 - 0.1,  # resampling's overshoot
        torch.rand(2, 3, 32, 32, generator=g).to(torch.bfloat16),
    ):
        got = _training_pair((images, masks), "train", "fundus")[0]
        assert got.dtype == torch.float32 and got.shape == images.shape
        for image, trained in zip(images, got, strict=True):
            expected = torch.from_numpy(as_raw_image(image)).permute(2, 0, 1)
            assert torch.equal(trained, expected), images.dtype


def test_a_fine_tuning_that_diverges_stops_saying_so():
    """At a learning rate too high the loss and weights turned NaN: the epochs went on scoring a
    validation Dice of 0, and the NaN model was returned (its test scoring failed later with
    "prob contains NaN")."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.7).float()
    config = FinetuneConfig(frozen_epochs=0, epochs=3, lr=1e30, batch=2, device="cpu",
                            progress=False)  # fmt: skip
    model = Segmenter(modality="fundus", size=32)
    with pytest.raises(DivergedError) as caught:  # which a benchmark skips, going on
        finetune(model, (x, y), (x, y), config, pretrained=False, log=lambda m: None)
    assert re.match(
        r"the fine-tuning diverged \(from scratch, epoch 1\): its weights hold NaN or inf \(in "
        r"\d+ tensors: encoder\.blocks\.0\.0\.0\.weight, .*; loss NaN\); a learning rate lower "
        r"than 1e\+30 \(finetune --lr\) may keep it from diverging$",
        str(caught.value),
    )


def test_images_of_the_other_channel_count_train_as_prediction_takes_them(monkeypatch):
    # A grey batch for a fundus model passed the checks and failed inside the network, after
    # training had started, as a plain ValueError; the encoder was left frozen (reviewer).
    from localdisc.data.preprocess import to_modality_channels
    from localdisc.engine import finetune as engine
    from localdisc.engine.finetune import _training_pair

    images, masks = squares(2)
    grey = images[:, :1]
    for given, modality in ((grey, "fundus"), (images, "xray")):
        got = _training_pair((given, masks), "train", modality)[0]
        expected = to_modality_channels(given[0].permute(1, 2, 0).numpy(), modality)
        assert torch.allclose(got[0].permute(1, 2, 0), torch.from_numpy(expected), atol=1e-6)
    config = FinetuneConfig(frozen_epochs=1, epochs=1, device="cpu", progress=False)
    model = Segmenter(modality="fundus", size=32, width=4, depth=2)
    finetune(model, (grey, masks), (grey, masks), config, pretrained=True)
    with pytest.raises(LocaldiscError, match="images of 2 channels"):
        _training_pair((images[:, :2], masks), "train", "fundus")

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped in the frozen phase")

    monkeypatch.setattr(engine, "augment", stopped)
    with pytest.raises(RuntimeError):
        finetune(model, (grey, masks), (grey, masks), config, pretrained=True)
    assert all(p.requires_grad for p in model.encoder.parameters())
    # The caller's own flags come back, a layer frozen on purpose too, and it is not trained
    # in the whole-network phase (reviewer).
    first = next(model.encoder.parameters())
    first.requires_grad_(False)
    with pytest.raises(RuntimeError):
        finetune(model, (grey, masks), (grey, masks), config, pretrained=True)
    flags = [p.requires_grad for p in model.encoder.parameters()]
    assert flags[0] is False and all(flags[1:])
    monkeypatch.undo()
    kept = first.detach().clone()
    finetune(model, (grey, masks), (grey, masks), config, pretrained=True)
    assert torch.equal(first, kept) and first.requires_grad is False


def test_the_whole_network_phase_starts_from_the_best_frozen_model(monkeypatch):
    # METHOD.md 4: fine-tuning everything starts from the best frozen model. Starting from the
    # last frozen epoch passed every test (reviewer's mutation).
    from localdisc.engine import finetune as engine

    real, seen = engine._phase, {}

    def phase(run, name, *args, **kwargs):
        seen[name] = {k: v.clone() for k, v in run.model.state_dict().items()}
        return real(run, name, *args, **kwargs)

    monkeypatch.setattr(engine, "_phase", phase)
    dice = iter([0.9, 0.5, 0.4, 0.3, 0.2])  # the first frozen epoch is the best
    monkeypatch.setattr(engine, "mean_dice", lambda *args: next(dice))
    images, masks = squares(4)
    config = FinetuneConfig(frozen_epochs=4, epochs=1, device="cpu", progress=False)
    model = Segmenter(modality="fundus", size=32, width=4, depth=2)
    result = finetune(model, (images, masks), (images[:2], masks[:2]), config, pretrained=True)
    assert result.phases[0].best_epoch == 1
    for k, v in result.frozen_state.items():
        assert torch.equal(seen["finetune"][k], v), k


def test_a_checkpoint_of_other_caller_frozen_parameters_is_refused_naming_them(tmp_path):
    # Its optimizer held other parameters: the resume ended in a bare ValueError (reviewer).
    from localdisc.errors import CheckpointError

    images, masks = squares(2)
    config = FinetuneConfig(frozen_epochs=1, epochs=1, device="cpu", progress=False)
    model = Segmenter(modality="fundus", size=32, width=4, depth=2)
    folder = tmp_path / "ckpt"
    finetune(model, (images, masks), (images, masks), config, pretrained=True,
             checkpoint_dir=folder)  # fmt: skip
    first = next(model.encoder.named_parameters())[0]
    next(model.encoder.parameters()).requires_grad_(False)
    message = f"other encoder parameters frozen by its caller \\(none; now {re.escape(first)}\\)"
    with pytest.raises(CheckpointError, match=message):
        finetune(model, (images, masks), (images, masks), config, pretrained=True,
                 checkpoint_dir=folder)  # fmt: skip
    # And the other way: a checkpoint of a frozen set, resumed with none.
    frozen_first = tmp_path / "frozen"
    finetune(model, (images, masks), (images, masks), config, pretrained=True,
             checkpoint_dir=frozen_first)  # fmt: skip
    next(model.encoder.parameters()).requires_grad_(True)
    with pytest.raises(CheckpointError, match=f"\\({re.escape(first)}; now none\\)"):
        finetune(model, (images, masks), (images, masks), config, pretrained=True,
                 checkpoint_dir=frozen_first)  # fmt: skip
    finetune(
        model, (images, masks), (images, masks), config, pretrained=True, checkpoint_dir=folder
    )  # the same set as its checkpoint's: continued (finished)
