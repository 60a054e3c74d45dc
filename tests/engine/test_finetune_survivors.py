"""Fine-tuning behaviours that a mutation review of engine.finetune (and tensor_digest) found
untested: what a checkpoint must match, the best model kept, the loss reported, the caller's
frozen parameters and the steps of an epoch."""

import math
import signal

import pytest
import torch

import localdisc.engine.finetune as engine
from helpers import signal_at_step, squares
from localdisc.engine.checkpoint import list_checkpoints, load_latest_checkpoint, tensor_digest
from localdisc.engine.finetune import FinetuneConfig, checkpoint_position, finetune
from localdisc.errors import CheckpointError
from localdisc.models.segmenter import Segmenter

#: A tiny schedule: from scratch, 3 epochs of 2 steps, on the CPU.
TINY = dict(frozen_epochs=0, epochs=3, steps_per_epoch=2, device="cpu", progress=False)


def tiny_model() -> Segmenter:
    """The same small segmenter each time."""
    torch.manual_seed(0)
    return Segmenter(modality="fundus", size=32, width=4, depth=2)


def run(folder=None, train=None, val=None, *, pretrained=False, log=None, **changes):
    """A tiny fine-tuning of :func:`tiny_model` (``changes`` to :data:`TINY`)."""
    config = FinetuneConfig(**{**TINY, **changes})
    train = squares(4, seed=1) if train is None else train
    val = squares(2, seed=2) if val is None else val
    return finetune(tiny_model(), train, val, config, pretrained=pretrained,
                    log=log or (lambda m: None), checkpoint_dir=folder)  # fmt: skip


def spy_validation(monkeypatch, dice) -> list[dict[str, torch.Tensor]]:
    """Validation scores ``dice(epoch_index)`` (counted from 0 in this call); returns the
    model's weights at each validation, as they grow."""
    snapshots: list[dict[str, torch.Tensor]] = []
    real = engine.predict_batch

    def predict_batch(model, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(engine, "predict_batch", predict_batch)
    monkeypatch.setattr(engine, "mean_dice", lambda *args: dice(len(snapshots) - 1))
    return snapshots


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# --- 1. a checkpoint of other data is not continued -------------------------------------------
def one_pixel_flipped(masks: torch.Tensor) -> torch.Tensor:
    changed = masks.clone()
    changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
    return changed


@pytest.mark.parametrize("which", ["train masks", "val images", "val masks"])
def test_a_checkpoint_of_the_same_training_images_but_other_masks_or_val_is_refused(
    tmp_path, which
):
    """The record hashes all four tensors: a fine-tuning with the same training images but
    other masks (or other validation data) is another fine-tuning, refused (CheckpointError),
    not continued as if finished; hashing only the first tensor continued it silently."""
    train, val = squares(4, seed=1), squares(2, seed=2)
    run(tmp_path, train, val, epochs=1, steps_per_epoch=1)  # finished: its checkpoint written
    kept = [p.name for p in list_checkpoints(tmp_path)]
    logged: list[str] = []
    run(tmp_path, train, val, epochs=1, steps_per_epoch=1, log=logged.append)  # the same data
    assert logged[0].endswith("the end of the training")
    changed = {
        "train masks": ((train[0], one_pixel_flipped(train[1])), val),
        "val images": (train, (val[0].flip(-1), val[1])),
        "val masks": (train, (val[0], one_pixel_flipped(val[1]))),
    }[which]
    with pytest.raises(CheckpointError, match=r"its images differ from this one's\); delete"):
        run(tmp_path, *changed, epochs=1, steps_per_epoch=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == kept  # refused, nothing removed


def test_tensor_digest_depends_on_every_tensor_its_shape_and_bytes():
    a, b = torch.zeros(2, 3), torch.ones(4)
    digest = tensor_digest(a, b)
    assert digest == tensor_digest(a.clone(), b.clone())
    assert digest != tensor_digest(a, b + 1)  # the second tensor counts
    assert digest != tensor_digest(a, b, b)  # and a third
    assert digest != tensor_digest(a.reshape(3, 2), b)  # the same bytes in another shape


# --- 2. to 4. the best model kept -------------------------------------------------------------
def test_a_resumed_phase_keeps_the_checkpoints_best_model_not_the_one_at_resume(
    tmp_path, monkeypatch
):
    """Stopped inside epoch 2 after epoch 1 scored best: the resumed run must end with epoch 1's
    weights, which the checkpoint kept as its best, not the weights it resumed with (a best
    restarted from them is a model no validation chose)."""
    scores = iter([0.9, 0.1, 0.1])  # epoch 1 is the best, over both calls
    snapshots = spy_validation(monkeypatch, lambda _: next(scores))
    signal_at_step(monkeypatch, engine, 3, [signal.SIGINT])  # epoch 2, step 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, checkpoint_seconds=float("inf"))
    assert checkpoint_position(tmp_path) == "from scratch epoch 2/3, step 2/2"
    epoch1 = snapshots[0]
    _, tensors = load_latest_checkpoint(tmp_path)
    assert not all(torch.equal(tensors["model"][k], v) for k, v in epoch1.items())  # they differ
    monkeypatch.undo()
    spy_validation(monkeypatch, lambda _: next(scores))
    result = run(tmp_path)
    (phase,) = result.phases
    assert (phase.best_epoch, phase.best_val_dice) == (1, 0.9)
    assert_same_weights(result.state, epoch1)


def test_a_tie_keeps_the_earlier_epoch(monkeypatch):
    """Only a better validation Dice replaces the best model: on a tie the earlier epoch stays
    (the model that reached the score first, with less training)."""
    snapshots = spy_validation(monkeypatch, lambda _: 0.5)
    result = run()
    (phase,) = result.phases
    assert (phase.best_epoch, phase.best_val_dice) == (1, 0.5)
    assert [row["val_dice"] for row in phase.history] == [0.5, 0.5, 0.5]
    assert len(snapshots) == 3
    assert_same_weights(result.state, snapshots[0])
    assert not torch.equal(snapshots[0]["head.weight"], snapshots[2]["head.weight"])


@pytest.mark.parametrize("pretrained", [False, True])
def test_a_phase_that_scores_zero_every_epoch_still_keeps_its_first_epoch(monkeypatch, pretrained):
    """A validation Dice of 0 is a score: the phase records epoch 1 as its best (not epoch 0,
    "none") and keeps that epoch's model, not the untrained one it started from."""
    initial = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    snapshots = spy_validation(monkeypatch, lambda _: 0.0)
    frozen = 2 if pretrained else 0
    result = run(pretrained=pretrained, frozen_epochs=frozen, epochs=2)
    for phase in result.phases:
        assert (phase.best_epoch, phase.best_val_dice) == (1, 0.0), phase.name
    assert_same_weights(result.state, snapshots[frozen])  # the last phase's first epoch
    assert not torch.equal(result.state["head.weight"], initial["head.weight"])
    if pretrained:
        assert_same_weights(result.frozen_state, snapshots[0])


# --- 5. the soft Dice loss, as history reports it ---------------------------------------------
@pytest.mark.parametrize(
    "logit,boxes",
    [
        # p = 0.5: masks of other sizes tell the whole batch's Dice from a mean of per-image
        # ones, and the +1 of the denominator shows (1 in about 1170)
        (0.0, [(0, 12), (20, 2)]),
        # p ~ 2e-9 and one mask pixel: the loss is ~0, so a numerator term shows
        (-20.0, [(5, 1), (0, 0)]),
    ],
)
def test_the_reported_loss_is_the_papers_soft_dice_over_the_whole_batch(logit, boxes):
    """METHOD.md 4: the loss is -2 sum(y p) / (sum y + sum p + 1) over the whole batch (history
    keeps that value: the training loss minus 1). A head of zero weights and bias ``logit``
    makes p = sigmoid(logit) everywhere in the first step, so the value is known by hand."""
    masks = torch.zeros(2, 1, 32, 32)
    for i, (corner, side) in enumerate(boxes):
        masks[i, :, corner : corner + side, corner : corner + side] = 1
    images = (0.2 + 0.6 * masks).repeat(1, 3, 1, 1)
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(logit)
    # One step of both images, without augmentation (no flip, no rotation: identity).
    config = FinetuneConfig(frozen_epochs=0, epochs=1, steps_per_epoch=1, batch=2, rotation=0,
                            flips=False, amp=False, device="cpu", progress=False)  # fmt: skip
    result = finetune(model, (images, masks), (images, masks), config, pretrained=False)
    p = torch.sigmoid(torch.tensor(logit, dtype=torch.float32)).double().item()
    y = masks.sum().item()
    expected = -2 * p * y / (y + p * masks.numel() + 1)
    (row,) = result.phases[0].history
    assert row["loss"] == pytest.approx(expected, abs=3e-7)


def test_the_phase_builds_the_papers_soft_dice(monkeypatch):
    """The loss object a phase trains with is 1 plus the paper's soft Dice on any batch, small
    sums included, where a smoothing term of MONAI's default (1e-5) is no longer negligible."""
    built = []
    real = engine.DiceLoss

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(engine, "DiceLoss", Spy)
    run(epochs=1, steps_per_epoch=1)
    (loss_fn,) = built

    def paper(logits, y):
        p = torch.sigmoid(logits.double())
        return -2 * (y * p).sum() / (y.sum() + p.sum() + 1)

    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.randn(2, 1, 8, 8, generator=g) * 3, (torch.rand(2, 1, 8, 8, generator=g) > 0.5)),
        # one image almost all foreground, one almost empty: whole batch vs per image
        (torch.randn(2, 1, 4, 4, generator=g), torch.arange(32).reshape(2, 1, 4, 4) < 15),
        (torch.full((2, 1, 2, 2), -30.0), torch.zeros(2, 1, 2, 2, dtype=torch.bool)),
        (torch.full((2, 1, 2, 2), -30.0), torch.arange(8).reshape(2, 1, 2, 2) == 0),
        (torch.full((1, 1, 2, 2), 30.0), torch.ones(1, 1, 2, 2, dtype=torch.bool)),
    ]
    for logits, y in cases:
        got = loss_fn(logits, y.float()).double() - 1
        assert got.item() == pytest.approx(paper(logits, y.double()).item(), abs=1e-6)


# --- 6. the caller's requires_grad flags ------------------------------------------------------
def flags(model: Segmenter) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


def caller_frozen_model() -> tuple[Segmenter, list[bool]]:
    """A model whose caller froze one encoder parameter (not the first) and the head's bias."""
    model = tiny_model()
    list(model.encoder.parameters())[2].requires_grad_(False)
    model.head.bias.requires_grad_(False)
    return model, flags(model)


@pytest.mark.parametrize("plan", [(1, 0), (1, 1)])
def test_the_callers_requires_grad_flags_are_given_back_after_a_fine_tuning(plan):
    """The frozen phase freezes the whole encoder: after it (the last phase or not) the caller's
    own flags come back, frozen ones frozen (and untrained) and trainable ones trainable."""
    model, before = caller_frozen_model()
    kept = list(model.encoder.parameters())[2].detach().clone()
    data = squares(2)
    config = FinetuneConfig(frozen_epochs=plan[0], epochs=plan[1], device="cpu", progress=False)
    finetune(model, data, data, config, pretrained=True, log=lambda m: None)
    assert flags(model) == before
    assert torch.equal(list(model.encoder.parameters())[2], kept)


def test_the_callers_requires_grad_flags_are_given_back_after_a_stop_in_the_frozen_phase(
    tmp_path, monkeypatch
):
    model, before = caller_frozen_model()
    data = squares(2)
    config = FinetuneConfig(frozen_epochs=2, epochs=1, steps_per_epoch=2, device="cpu",
                            progress=False, checkpoint_seconds=float("inf"))  # fmt: skip
    signal_at_step(monkeypatch, engine, 1, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        finetune(model, data, data, config, pretrained=True, log=lambda m: None,
                 checkpoint_dir=tmp_path)  # fmt: skip
    assert checkpoint_position(tmp_path).startswith("frozen encoder epoch 1/2")
    assert flags(model) == before


# --- 7. the steps of an epoch -----------------------------------------------------------------
def spy_batches(monkeypatch) -> list[int]:
    """The batch size of each training step (each step augments its batch once)."""
    sizes: list[int] = []
    real = engine.augment

    def augment(images, *args, **kwargs):
        sizes.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(engine, "augment", augment)
    return sizes


def test_an_epoch_without_steps_per_epoch_is_one_pass_of_ceil_n_over_batch_steps(
    tmp_path, monkeypatch
):
    """5 images in batches of 2: 3 steps an epoch (the last of 1 image), which the checkpoints
    count too (their names, the steps taken in all, and where a stopped run continues)."""
    sizes = spy_batches(monkeypatch)
    train = squares(5, seed=1)
    run(tmp_path / "a", train, epochs=2, steps_per_epoch=None)
    assert sizes == [2, 2, 1, 2, 2, 1]
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step_00000006"]
    signal_at_step(monkeypatch, engine, 2, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", train, epochs=2, steps_per_epoch=None, checkpoint_seconds=math.inf)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000002"]
    assert checkpoint_position(tmp_path / "b") == "from scratch epoch 1/2, step 3/3"


def test_an_epoch_of_steps_per_epoch_takes_that_many_steps_from_consecutive_passes(
    tmp_path, monkeypatch
):
    """4 steps of batch 2 over 3 images need 8 draws: 3 passes, cut (2 passes gave 3 steps)."""
    from localdisc.engine.finetune import _epoch_batches

    g = torch.Generator().manual_seed(0)
    batches = _epoch_batches(3, FinetuneConfig(batch=2, steps_per_epoch=4), g)
    assert [len(b) for b in batches] == [2, 2, 2, 2]
    order = torch.cat(batches).tolist()
    assert sorted(order[:3]) == sorted(order[3:6]) == [0, 1, 2]  # each pass every image once
    assert len(set(order[6:])) == 2

    sizes = spy_batches(monkeypatch)
    run(tmp_path, squares(3, seed=1), epochs=2, steps_per_epoch=4)
    assert sizes == [2] * 8
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000008"]


# -- the paper's augmentation (METHOD.md 4) -------------------------------------------------------


def test_flips_are_drawn_per_item_and_axis_and_move_image_and_mask_alike():
    # Each item flipped left-right and up-down with p = 0.5 each, independently: all four
    # combinations occur, and the mask is flipped exactly as its image.
    n, side = 200, 8
    images = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0))
    masks = (images[:, :1] > 0.5).float()
    x, y = engine.augment(images, masks, rotation=0, flips=True,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    seen = []
    for i in range(n):
        for h in (False, True):
            for v in (False, True):
                im, m = images[i], masks[i]
                im, m = (im.flip(-1), m.flip(-1)) if h else (im, m)
                im, m = (im.flip(-2), m.flip(-2)) if v else (im, m)
                if torch.equal(x[i], im):
                    assert torch.equal(y[i], m)
                    seen.append((h, v))
                    break
            else:
                continue
            break
    assert len(seen) == n
    for combination in [(h, v) for h in (False, True) for v in (False, True)]:
        assert 0.15 < seen.count(combination) / n < 0.35, combination


@pytest.mark.parametrize("rotation", [30.0, 180.0])
def test_rotations_are_uniform_in_plus_minus_the_range(monkeypatch, rotation):
    # U(-r, r) degrees per item: X-rays 30, fundus photographs 180. The angle is read from the
    # sampling grid's matrix.
    thetas = []
    real = engine.F.affine_grid

    def spy(theta, *args, **kwargs):
        thetas.append(theta.clone())
        return real(theta, *args, **kwargs)

    monkeypatch.setattr(engine.F, "affine_grid", spy)
    images, masks = torch.rand(400, 1, 8, 8), torch.zeros(400, 1, 8, 8)
    engine.augment(images, masks, rotation=rotation, flips=False,
                   generator=torch.Generator().manual_seed(2))  # fmt: skip
    (theta,) = thetas
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert angles.abs().max() <= rotation + 1e-3
    assert angles.min() < -0.9 * rotation and angles.max() > 0.9 * rotation
    assert abs(float(angles.mean())) < 0.1 * rotation  # centred on 0
    assert torch.allclose(theta[:, :, 2], torch.zeros(400, 2))  # about the centre, no shift


def test_a_rotated_mask_stays_binary_and_outside_the_image_is_black():
    images = torch.ones(16, 3, 32, 32)
    masks = torch.zeros(16, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    x, y = engine.augment(images, masks, rotation=180, flips=False,
                          generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}  # nearest neighbour: no soft edge
    assert ((x > 0) & (x < 1)).any()  # bilinear image
    turned = [i for i in range(16) if x[i, :, 0, 0].max() < 0.5]
    assert turned  # a corner rotated in from outside the photograph is black
