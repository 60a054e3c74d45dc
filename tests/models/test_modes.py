import numpy as np
import pytest

from localdisc.models import LDConfig, LDModel
from localdisc.models.segmenter import Segmenter


def test_a_prediction_keeps_a_frozen_encoders_batch_norm_in_eval_mode():
    # Fine-tuning keeps the pre-trained encoder's batch norm in eval mode (METHOD.md); a
    # prediction between steps put it back to training, and its statistics drifted (reviewer).
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    segmenter = Segmenter(modality="fundus", size=32, width=4, depth=2)
    segmenter.train()
    segmenter.encoder.eval()
    segmenter.predict(image)
    assert segmenter.training and not segmenter.encoder.training
    assert all(not m.training for m in segmenter.encoder.modules())
    model = LDModel(LDConfig(width=4, depth=2, dim=8, clusters=4))
    model.train()
    model.backbone.encoder.eval()
    model.embed(image)
    model.cluster(image)
    assert model.training and not model.backbone.encoder.training


def test_in_mode_restores_every_submodule_also_after_an_error():
    from localdisc.models.modes import in_mode

    segmenter = Segmenter(modality="xray", size=32, width=4, depth=2)
    segmenter.eval()
    segmenter.decoder.train()
    before = {name: m.training for name, m in segmenter.named_modules()}
    with pytest.raises(RuntimeError), in_mode(segmenter, training=True):
        assert all(m.training for m in segmenter.modules())
        raise RuntimeError("stopped")
    assert {name: m.training for name, m in segmenter.named_modules()} == before
