"""The pool images a pre-training step draws: each once per epoch, a step's distinct."""

import numpy as np
import pytest
import torch

from localdisc.data.sampling import EpochSampler


def test_every_image_once_per_epoch_and_a_step_s_images_distinct():
    sampler = EpochSampler(10, 4, (0, 0))
    assert sampler.steps_per_epoch == 2  # 2 of the 10 left in each epoch (drop_last)
    steps = [sampler.indices(step) for step in range(6)]
    for drawn in steps:
        assert drawn.dtype == torch.int64 and drawn.shape == (4,)
        assert len(set(drawn.tolist())) == 4
    for epoch in range(3):
        seen = torch.cat(steps[2 * epoch : 2 * epoch + 2]).tolist()
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))
        assert sorted(set(range(10)) - set(seen)) == sorted(sampler.order(epoch)[8:].tolist())
    assert steps[0].tolist() != steps[2].tolist()  # each epoch its own order


def test_the_draws_are_a_function_of_the_step_and_the_seed():
    # A resumed run draws what an uninterrupted one would: nothing to save but the step.
    straight = [EpochSampler(50, 6, (3, 1)).indices(s).tolist() for s in (0, 9, 20)]
    fresh = EpochSampler(50, 6, (3, 1))
    assert [fresh.indices(s).tolist() for s in (20, 0, 9)] == [straight[2], *straight[:2]]
    assert EpochSampler(50, 6, (3, 0)).indices(0).tolist() != straight[0]  # another rank
    assert EpochSampler(50, 6, (-1, 0)).indices(0).shape == (6,)  # a negative seed is a seed


def test_a_pool_smaller_than_a_step_gives_each_image_as_few_times_as_it_can():
    sampler = EpochSampler(3, 8, (0, 0))
    assert sampler.steps_per_epoch == 1
    for step in range(3):
        counts = np.bincount(sampler.indices(step).numpy(), minlength=3)
        assert counts.sum() == 8 and counts.max() <= 3 and counts.min() >= 2
    with pytest.raises(ValueError, match="n and per_step must be >= 1"):
        EpochSampler(0, 2, (0,))
