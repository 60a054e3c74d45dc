import json

import numpy as np
import pytest
import torch

from localdisc.errors import CheckpointError, InputError, LocaldiscError
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
    with pytest.raises(CheckpointError, match=r"a segmentation model, not an LD run .*predict"):
        Segmenter.from_ld_run(tmp_path)


@pytest.mark.parametrize(
    "model_config,message",
    [
        ({"width": "16"}, "width must be a positive integer"),  # was an InputError, no file named
        ({"depth": 9}, "depth must be 2 to 5"),
        ({"dim": "32"}, "dim must be a positive integer"),  # was ignored: a broken run loaded
        ({"modality": "fundus", "future": 1}, "unexpected keyword argument 'future'"),
    ],
)
def test_from_ld_run_reads_the_run_config_as_ld_model_from_pretrained_does(
    tmp_path, model_config, message
):
    # from_ld_run read config.json by hand: a field of the wrong type gave an InputError that
    # named no file, or was not checked at all, where LDModel.from_pretrained named config.json.
    (tmp_path / "config.json").write_text(json.dumps({"model": model_config}))
    with pytest.raises(CheckpointError, match=message) as from_pretrained:
        LDModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message) as from_ld_run:
        Segmenter.from_ld_run(tmp_path)
    assert str(from_ld_run.value) == str(from_pretrained.value)
    assert "config.json" in str(from_ld_run.value)


def test_from_ld_run_loads_an_old_run_without_padding_or_depth(tmp_path):
    # Runs saved before the padding and depth fields: the defaults, as LDConfig gives them.
    ld = LDModel(LDConfig("xray", width=8))
    ld.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"] = {"modality": "xray", "width": 8, "dim": 32, "clusters": 16}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    model = Segmenter.from_ld_run(tmp_path, size=32)
    assert model.config == SegmenterConfig("xray", 8, "zeros", 32, 5)


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


def test_predict_maps_are_the_networks_output_where_the_image_is():
    # A transposed input (or upsampling) passed every test: they checked shapes, or compared
    # predict with evaluate, which share it (reviewer's mutation). Here the network's own
    # output on the resized image, and its bilinear upsampling, are the answer.
    import torch.nn.functional as F

    from localdisc.data.preprocess import resize_image
    from localdisc.data.views import normalize

    torch.manual_seed(0)
    model = Segmenter(modality="xray", size=32, width=4, depth=2).eval()
    image = np.random.default_rng(0).random((45, 61, 1)).astype(np.float32)
    image[:10, :20] = 1.0  # not symmetric under a transpose
    small, full = model.predict_maps(image)
    x = torch.from_numpy(resize_image(image, 32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = torch.sigmoid(model(normalize(x, "xray")))
    assert np.allclose(small, expected[0, 0].numpy(), atol=1e-6)
    up = F.interpolate(expected, size=(45, 61), mode="bilinear", align_corners=False)
    assert np.allclose(full, up[0, 0].clamp(0, 1).numpy(), atol=1e-6)


def test_predict_takes_images_as_the_ld_model_does():
    # uint8 was read as 0-255 floats, and a [C, H, W] tensor as a 48-channel image.
    torch.manual_seed(0)
    model = Segmenter(modality="fundus", size=32, width=4, depth=2).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    expected = model.predict(rgb / np.float32(255))
    np.testing.assert_allclose(model.predict(rgb), expected, atol=1e-6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    np.testing.assert_allclose(model.predict(chw), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict_maps(chw)[1], expected, atol=1e-6)
    with pytest.raises(InputError, match=r"a batch.*model\(normalize"):
        model.predict(chw[None])
    with pytest.raises(InputError, match="/ 255"):
        model.predict(rgb.astype(np.float32))


def test_from_ld_run_takes_a_weight_file_of_the_run(tmp_path):
    # "no config.json", though LDModel.from_pretrained and similarity take RUN/stage1.safetensors.
    from localdisc.engine.checkpoint import atomic_save_safetensors

    torch.manual_seed(0)
    LDModel(LDConfig(width=4, depth=2)).save(tmp_path)
    stage1 = LDModel(LDConfig(width=4, depth=2))  # other weights, as at the end of stage 1
    atomic_save_safetensors(stage1.state_dict(), tmp_path / "stage1.safetensors")
    model = Segmenter.from_ld_run(tmp_path / "stage1.safetensors", size=32)
    for key, value in stage1.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    final = Segmenter.from_ld_run(str(tmp_path / "encoder.safetensors"), size=32)
    assert any(not torch.equal(final.encoder.state_dict()[k], v)
               for k, v in stage1.encoder.state_dict().items())  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(modality="ct"), "modality must be one of fundus, xray"),
        (dict(size=50), "size must be a positive multiple of 16"),  # failed deep in the decoder
        (dict(padding="mirror"), "padding must be one of"),
        # torch's bare "Padding size should be less than ..." at the first step
        (dict(size=16, padding="reflect"), "padding reflect needs size >= 32 with depth 5"),
    ],
)
def test_a_bad_config_is_a_localdisc_error_that_is_still_a_value_error(kwargs, message):
    with pytest.raises(InputError, match=message) as caught:
        Segmenter(**kwargs)
    assert isinstance(caught.value, LocaldiscError) and isinstance(caught.value, ValueError)


def test_a_config_that_cannot_be_saved_leaves_no_weights_behind(tmp_path):
    # The weights were written first: a Path in the extra config ("not JSON serializable") left
    # a folder of weights without config.json, which nothing could load.
    model = Segmenter(modality="fundus", size=32, width=4, depth=2)
    with pytest.raises(InputError, match="not JSON"):
        model.save(tmp_path / "m", {"transfer": {"init": tmp_path}})
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_from_pretrained_of_a_pretraining_run_says_what_to_do_with_it(tmp_path):
    # It said only "not a fine-tuned model (no segmenter)", for a pre-training run as for any.
    (tmp_path / "config.json").write_text(json.dumps({"other": {}}))
    with pytest.raises(CheckpointError) as error:
        Segmenter.from_pretrained(tmp_path)
    assert str(error.value) == f"{tmp_path}/config.json: not a fine-tuned model (no segmenter)"
    LDModel(LDConfig(width=4, depth=2)).save(tmp_path)
    with pytest.raises(CheckpointError, match=r"an LD pre-training run: fine-tune it first"):
        Segmenter.from_pretrained(tmp_path)


def test_weights_that_do_not_match_name_the_file_and_a_few_keys(tmp_path):
    # Said "weights do not match the config", with torch's list of every key only as the cause.
    from safetensors.torch import save_file

    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "ft")
    save_file({"fc.weight": torch.zeros(2)}, tmp_path / "ft" / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        Segmenter.from_pretrained(tmp_path / "ft")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'ft' / 'model.safetensors'}: weights do not match")
    assert "missing: encoder.blocks.0.0.0.weight, " in message
    assert message.endswith("more); 1 unexpected: fc.weight)") and len(message) < 400
    LDModel(LDConfig(width=8, depth=2)).save(tmp_path / "run")
    save_file({"fc.weight": torch.zeros(2)}, tmp_path / "run" / "encoder.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder.safetensors: weights do not match .*fc"):
        Segmenter.from_ld_run(tmp_path / "run")


def damage_first_tensor(path):
    """Overwrite the start of a safetensors file's data with 0xff bytes (NaN as float32), its
    header intact: what damage on disk or in transfer leaves."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))


def test_weights_holding_nan_are_refused_naming_the_file_and_tensor(tmp_path):
    # They loaded silently, and `localdisc predict` wrote all-background masks with exit 0.
    Segmenter(modality="xray", size=32, width=4, depth=2).save(tmp_path / "ft")
    damage_first_tensor(tmp_path / "ft" / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        Segmenter.from_pretrained(tmp_path / "ft")
    assert str(error.value) == (
        f"{tmp_path / 'ft' / 'model.safetensors'}: weights hold NaN or inf values (in 1 tensor: "
        "encoder.blocks.0.0.0.weight); a damaged file or diverged training"
    )
    # A fine-tuning init: the encoder of an LD run.
    LDModel(LDConfig("xray", width=4, depth=2, dim=8, clusters=4)).save(tmp_path / "run")
    damage_first_tensor(tmp_path / "run" / "encoder.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder.safetensors: weights hold NaN or inf"):
        Segmenter.from_ld_run(tmp_path / "run", size=32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_segmenter_cast_to_another_dtype_takes_float32_raw_images(dtype):
    # The input followed the weights' device but not their dtype: "expected scalar type Float
    # but found BFloat16" from the first conv.
    torch.manual_seed(0)
    model = Segmenter(modality="xray", size=32, width=4, depth=2)
    image = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    small32, prob32 = model.predict_maps(image)
    small, prob = model.to(dtype).predict_maps(image)
    assert small.shape == (32, 32) and prob.shape == (20, 30)
    assert small.dtype == prob.dtype == np.float32  # float32 maps, as before
    np.testing.assert_allclose(prob, prob32, atol=0.02)
    assert model.predict(image).dtype == np.float32


def test_an_integer_weights_file_is_of_another_dtype(tmp_path):
    # Tensors of the right shapes but int16 loaded (cast into floats) as a broken model.
    from safetensors.torch import save_file

    model = Segmenter(modality="xray", size=32, width=4, depth=2)
    model.save(tmp_path)
    state = model.state_dict()
    as_int = {
        k: (v * 1000).to(torch.int16) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(as_int, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        Segmenter.from_pretrained(tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'model.safetensors'}: weights do not match the model of its config.json "
        f"({sum(v.is_floating_point() for v in state.values())} of another dtype: "
        "encoder.blocks.0.0.0.weight (int16 in the file, float32 in the model), "
    )
    assert message.endswith("more))") and len(message) < 400
    # Floats of another precision are cast, as before.
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()},
              tmp_path / "model.safetensors")  # fmt: skip
    loaded = Segmenter.from_pretrained(tmp_path)
    assert loaded.head.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.head.weight, state["head.weight"], atol=1e-3, rtol=1e-3)


def test_a_model_s_weight_file_given_for_its_folder_names_the_folder(tmp_path):
    # "no config.json (not a localdisc run or model folder)" of a model folder's own weight
    # file, beside its config.json (reviewer).
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    with pytest.raises(CheckpointError, match="a file; give the folder that holds it and its "):
        Segmenter.from_pretrained(weights)


def test_weights_beside_the_config_of_other_weights_are_told(tmp_path):
    # A save cut between its two files (weights written, the config not) left another model's
    # config beside them: `shape-guided vessels` reused them as its own network.
    from localdisc.models.segmenter import read_config, saved_together

    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path, {"note": "first"})
    config = (tmp_path / "config.json").read_text()
    torch.manual_seed(1)
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path, {"note": "second"})
    assert saved_together(tmp_path, read_config(tmp_path))
    (tmp_path / "config.json").write_text(config)
    assert not saved_together(tmp_path, read_config(tmp_path))
    assert saved_together(tmp_path, {"segmenter": {}})  # saved before the record


@pytest.mark.parametrize("text", ["[1, 2]", "null", "3", '"depth"'])
def test_a_config_json_that_is_not_an_object_is_named(tmp_path, text):
    # A list passed as the config went on to fail with a TypeError far from the file.
    from localdisc.models.segmenter import read_config

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object") as info:
        read_config(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
