import math

import torch

from localdisc.losses.adversarial import discriminator_loss, generator_loss
from localdisc.losses.pseudo_label import pseudo_label_loss


def test_generator_loss_is_bce_towards_real():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    expected = -sum(math.log(1 / (1 + math.exp(-x))) for x in logits.tolist()) / 3
    assert math.isclose(generator_loss(logits).item(), expected, rel_tol=1e-6)


def test_discriminator_loss_is_bce_over_real_and_fake():
    real, fake = torch.tensor([1.5, -0.5]), torch.tensor([0.2, -1.0, 2.0])

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    terms = [-math.log(sigmoid(x)) for x in real.tolist()]
    terms += [-math.log(1 - sigmoid(x)) for x in fake.tolist()]
    assert math.isclose(discriminator_loss(real, fake).item(), sum(terms) / 5, rel_tol=1e-6)


def test_pseudo_label_loss_matches_its_formula_and_ignores_zero_weights():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 5, 5, generator=gen, requires_grad=True)
    label = (torch.rand(2, 1, 5, 5, generator=gen) > 0.5).float()
    weight = torch.rand(2, 1, 5, 5, generator=gen)
    weight[0, 0, 0, 0] = 0.0
    loss = pseudo_label_loss(logits, label, weight)
    p = torch.sigmoid(logits)
    bce = -(weight * (label * p.log() + (1 - label) * (1 - p).log())).sum() / weight.sum()
    dice = [
        1 - 2 * (w * y * q).sum() / ((w * y).sum() + (w * q).sum() + 1)
        for w, y, q in zip(weight, label, p, strict=True)
    ]
    torch.testing.assert_close(loss, bce + sum(dice) / 2)
    loss.backward()
    assert logits.grad[0, 0, 0, 0] == 0  # a pixel of weight 0 teaches nothing
    assert logits.grad.abs().sum() > 0
