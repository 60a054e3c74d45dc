import json

import numpy as np
import pytest
import torch

from localdisc.errors import CheckpointError
from localdisc.models import LDConfig, LDModel
from localdisc.models.segmenter import Segmenter, SegmenterConfig


def test_forward_gives_one_logit_per_pixel():
    for modality, channels in (("fundus", 3), ("xray", 1)):
        model = Segmenter(modality=modality)
        assert model(torch.randn(2, channels, 32, 48)).shape == (2, 1, 32, 48)


def test_from_ld_run_takes_the_encoder_and_a_new_decoder(tmp_path):
    torch.manual_seed(0)
    ld = LDModel(LDConfig("xray", padding="circular"))
    ld.save(tmp_path)
    model = Segmenter.from_ld_run(tmp_path, size=64)
    assert model.config == SegmenterConfig("xray", 16, "circular", 64)
    for key, value in ld.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    # The decoder is new: it does not take the LD decoder's weights.
    ld_decoder = ld.backbone.decoder.state_dict()
    new_decoder = model.decoder.state_dict()
    assert any(not torch.equal(ld_decoder[k], new_decoder[k]) for k in new_decoder if "weight" in k)
    assert all(m.padding_mode == "circular" for m in model.modules() if hasattr(m, "padding_mode"))


def test_from_ld_run_builds_the_encoder_of_the_runs_depth(tmp_path):
    LDModel(LDConfig(depth=3)).save(tmp_path)
    model = Segmenter.from_ld_run(tmp_path, size=64)
    assert model.config.depth == 3 and model.encoder.channels == [16, 32, 64]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_from_ld_run_names_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        Segmenter.from_ld_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"segmenter": {}}))
    with pytest.raises(CheckpointError, match="not an LD pre-training run"):
        Segmenter.from_ld_run(tmp_path)


def test_save_and_load_round_trip_without_pickle(tmp_path):
    model = Segmenter(modality="fundus", size=32).eval()
    model.save(tmp_path, {"note": "kept"})
    loaded = Segmenter.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert json.loads((tmp_path / "config.json").read_text())["note"] == "kept"
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Segmenter.from_pretrained(tmp_path)


def test_predict_returns_probabilities_at_the_image_size():
    model = Segmenter(modality="xray", size=32)
    image = np.random.default_rng(0).random((45, 61, 3)).astype(np.float32)  # RGB -> luminance
    prob = model.predict(image)
    assert prob.shape == (45, 61) and prob.dtype == np.float32
    assert prob.min() >= 0 and prob.max() <= 1
