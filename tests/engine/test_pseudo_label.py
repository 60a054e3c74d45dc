"""The loop that trains a segmenter on pseudo-labels: it must learn what the sure pixels say,
ignore the silent ones, and repeat with its seed."""

from __future__ import annotations

import re

import torch

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


def fit(images, targets, **kwargs) -> Segmenter:
    torch.manual_seed(0)
    model = Segmenter(width=4, depth=2, size=images.shape[-1])
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


def test_crops_are_windows_of_the_images_and_their_labels(monkeypatch):
    images, targets = bright_spots()
    seen = []

    def spy(x, y, **kwargs):
        seen.append((x, y))
        return x, y

    monkeypatch.setattr(pseudo_label, "augment", spy)
    fit(images, targets, steps=3, crop=16)
    for x, y in seen:
        assert x.shape == (2, 3, 16, 16) and y.shape == (2, 2, 16, 16)
        # each crop is a window of one of the images, its labels the same window
        hits = [(k, i, j) for k in range(len(images)) for i in range(17) for j in range(17)
                if torch.equal(images[k, :, i : i + 16, j : j + 16], x[0])]  # fmt: skip
        assert len(hits) == 1
        k, i, j = hits[0]
        assert torch.equal(targets[k, :, i : i + 16, j : j + 16], y[0])


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
