import numpy as np
import pytest
import torch

from localdisc.errors import CheckpointError, InputError, LocaldiscError
from localdisc.models.ld import LDConfig, LDModel
from localdisc.models.vgg_unet import VGGEncoder, VGGUNet


def test_encoder_matches_the_paper_quarter_width_vgg16():
    enc = VGGEncoder(3, 16)
    assert enc.channels == [16, 32, 64, 128, 128]
    n_params = sum(p.numel() for p in enc.parameters())
    assert 0.85e6 < n_params < 0.95e6  # METHOD.md: about 0.9 M parameters
    skips = enc(torch.randn(1, 3, 64, 64))
    assert [s.shape[-1] for s in skips] == [64, 32, 16, 8, 4]


def test_backbone_gives_32_channels_at_full_resolution():
    net = VGGUNet(1, 16)
    assert net.out_channels == 32
    assert net(torch.randn(2, 1, 48, 80)).shape == (2, 32, 48, 80)


def test_a_shallower_encoder_keeps_the_output_channels():
    enc = VGGEncoder(3, 16, depth=3)
    assert enc.channels == [16, 32, 64]
    assert [s.shape[-1] for s in enc(torch.randn(1, 3, 32, 32))] == [32, 16, 8]
    net = VGGUNet(3, 16, depth=3)
    assert net(torch.randn(1, 3, 48, 80)).shape == (1, 32, 48, 80)
    with pytest.raises(ValueError, match="depth"):
        VGGEncoder(3, 16, depth=6)


def test_receptive_field_shrinks_with_depth():
    """A pixel's output depends on input pixels within the receptive field only: poke the input
    far from a pixel and see whether it changes (eval mode, so batch norm is per-pixel)."""

    def reaches(depth: int, distance: int) -> bool:
        torch.manual_seed(0)
        net = VGGUNet(1, 4, depth=depth).eval()
        x = torch.zeros(1, 1, 160, 160)
        y0 = net(x)[0, :, 80, 80]
        x[0, 0, 80, 80 + distance] = 100.0
        return not torch.allclose(net(x)[0, :, 80, 80], y0)

    assert reaches(2, 6) and not reaches(2, 10)  # the demo's: ~15 px wide, ~19 with the heads
    assert reaches(3, 20) and not reaches(3, 40)
    assert reaches(5, 40)


@pytest.mark.parametrize("modality,channels", [("fundus", 3), ("xray", 1)])
def test_heads_are_normalised(modality, channels):
    model = LDModel(LDConfig(modality=modality, dim=8, clusters=5))
    v, a = model(torch.randn(2, channels, 32, 32))
    assert v.shape == (2, 8, 32, 32) and a.shape == (2, 5, 32, 32)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2, 32, 32))
    torch.testing.assert_close(a.sum(1), torch.ones(2, 32, 32))
    assert (a >= 0).all()
    v1, none = model(torch.randn(1, channels, 32, 32), with_clusters=False)
    assert none is None and v1.shape == (1, 8, 32, 32)


def test_embed_and_cluster_take_raw_images_of_any_size():
    model = LDModel(dim=8, clusters=4)
    image = np.random.default_rng(0).random((37, 50, 3), dtype=np.float32)
    v = model.embed(image)
    a = model.cluster(image)
    assert v.shape == (8, 37, 50) and a.shape == (4, 37, 50)
    # Where the embeddings lie: the image padded to a multiple of 16 at its right and bottom
    # (edge pixels repeated), then cropped back (padded on the left, they shifted by up to
    # 7 px and every test passed: reviewer's mutation).
    padded = np.pad(image, ((0, 11), (0, 14), (0, 0)), mode="edge")  # 48 x 64
    torch.testing.assert_close(v, model.embed(padded)[:, :37, :50], rtol=0, atol=1e-5)
    assert model.training  # restored after inference
    xray = LDModel(modality="xray", dim=8, clusters=4)
    assert xray.embed(image).shape == (8, 37, 50)  # RGB X-ray reduced to luminance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_half_precision_takes_float32_raw_images(dtype):
    # The input followed the weights' device but not their dtype: "expected scalar type Float
    # but found BFloat16" from the first conv.
    torch.manual_seed(0)
    model = LDModel(width=4, depth=3, dim=8, clusters=4)
    image = np.random.default_rng(0).random((20, 30, 3), dtype=np.float32)
    v32, a32 = model.embed_and_cluster(image)
    v, a = model.to(dtype).embed_and_cluster(image)
    assert v.shape == (8, 20, 30) and a.shape == (4, 20, 30)
    assert v.dtype == a.dtype == torch.float32  # the heads' outputs are cast back
    assert (v * v32).sum(0).mean() > 0.95  # the same embeddings, to half precision
    torch.testing.assert_close(a, a32, atol=0.05, rtol=0)


def test_reflect_padding_takes_images_of_16_pixels_and_fewer():
    # Padded to 16 only, a 16-px image reached the fifth block as 1 x 1, which torch cannot
    # reflect-pad: a bare RuntimeError from deep in the network.
    model = LDModel(LDConfig(padding="reflect", dim=8, clusters=4))
    for side in (16, 12, 1):
        image = np.random.default_rng(side).random((side, side + 3, 3), dtype=np.float32)
        v, a = model.embed_and_cluster(image)
        assert v.shape == (8, side, side + 3) and a.shape == (4, side, side + 3)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = LDModel(dim=8, clusters=4).eval()
    model.save(tmp_path)
    assert (tmp_path / "encoder.safetensors").is_file()
    loaded = LDModel.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert loaded.config == model.config


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        LDModel.from_pretrained(tmp_path)
    # A path that is not there is named so (it said "no config.json", as if a folder were).
    for missing in (tmp_path / "no-run", tmp_path / "no-run" / "stage1.safetensors"):
        with pytest.raises(CheckpointError, match=r"no-run: no such folder$"):
            LDConfig.from_run(missing)
    LDModel(dim=8, clusters=4).save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        LDModel.from_pretrained(tmp_path)


def test_a_segmentation_model_given_as_an_ld_run_is_named_so(tmp_path):
    # `similarity`, `view` and `shape-guided segment --model FINETUNED` said "unreadable model
    # config ('model')".
    (tmp_path / "config.json").write_text('{"transfer": {}, "segmenter": {"in_channels": 3}}')
    with pytest.raises(CheckpointError, match=r"a segmentation model, not an LD run .*predict"):
        LDConfig.from_run(tmp_path)
    (tmp_path / "config.json").write_text('{"pretrain": {}}')
    with pytest.raises(CheckpointError, match=r"not an LD pre-training run \(no model\)"):
        LDConfig.from_run(tmp_path)


def test_circular_padding_removes_the_image_border():
    # With circular padding the network is translation-equivariant up to the clamped edges of
    # bilinear upsampling; with zero padding the border tells every pixel where it is.
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    shifted = torch.roll(x, shifts=(16, 16), dims=(2, 3))  # a multiple of the coarsest stride
    error = {}
    for padding in ("circular", "zeros"):
        model = LDModel(LDConfig(dim=8, clusters=4, padding=padding)).eval()
        v, v_shifted = model(x)[0], model(shifted)[0]
        error[padding] = (torch.roll(v, (16, 16), (2, 3)) - v_shifted).abs().mean().item()
    assert error["circular"] < 0.02 * error["zeros"]


def tiny_model(**kwargs: object) -> LDModel:
    torch.manual_seed(0)
    return LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2, **kwargs)).eval()  # type: ignore[arg-type]


def test_integer_images_are_scaled_as_read_image_scales_their_files(tmp_path):
    # np.asarray(PIL.Image.open(...)) is uint8: it was embedded as 0-255 floats, 255 times too
    # bright, without a word.
    from PIL import Image

    from localdisc.data.io import read_image

    model = tiny_model()
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    expected = model.embed(read_image(tmp_path / "a.png")[0])
    torch.testing.assert_close(model.embed(np.asarray(Image.open(tmp_path / "a.png"))), expected)
    torch.testing.assert_close(model.cluster(rgb), model.cluster(rgb / np.float32(255)))
    grey16 = np.random.default_rng(1).integers(0, 65536, (20, 24), dtype=np.uint16)
    torch.testing.assert_close(model.embed(grey16), model.embed(grey16 / np.float32(65535)))


@pytest.mark.parametrize(
    "image,message",
    [
        (np.full((20, 24, 3), 200.0, np.float32), r"values in \[200, 200\].*/ 255"),
        (np.full((20, 24), -3.0), r"values in \[-3, -3\], not intensities in \[0, 1\]"),
        (np.full((20, 24), np.nan, np.float32), "NaN"),
        (np.zeros((20, 24), np.int32), "int32, whose full scale is unknown"),
    ],
)
def test_images_outside_0_1_and_integers_of_unknown_scale_are_refused(image, message):
    with pytest.raises(InputError, match=message) as caught:
        tiny_model().embed(image)
    assert isinstance(caught.value, LocaldiscError) and isinstance(caught.value, ValueError)


def test_one_layout_rule_for_arrays_and_tensors_and_batches_are_sent_to_forward():
    from localdisc.data.preprocess import as_raw_image

    rng = np.random.default_rng(0)
    hwc = rng.random((20, 24, 3), dtype=np.float32)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    for same in (chw, torch.from_numpy(hwc), np.ascontiguousarray(hwc.transpose(2, 0, 1))):
        np.testing.assert_array_equal(as_raw_image(same), hwc)
    grey = hwc[..., :1]
    for same in (
        grey[..., 0],
        torch.from_numpy(grey[..., 0]),
        torch.from_numpy(grey[..., 0])[None],
    ):
        np.testing.assert_array_equal(as_raw_image(same), grey)
    rgba = np.concatenate([hwc, np.ones_like(grey)], axis=2)
    np.testing.assert_array_equal(as_raw_image(rgba), hwc)  # alpha dropped
    model = tiny_model()
    torch.testing.assert_close(model.embed(chw), model.embed(hwc))
    # A batch gave "permute(sparse_coo): number of dimensions ... does not match".
    with pytest.raises(InputError, match=r"1 x 3 x 20 x 24, a batch.*model\(normalize\(x"):
        model.embed(chw[None])
    with pytest.raises(InputError, match="which axis holds the channels"):
        as_raw_image(np.zeros((20, 24, 7), np.float32))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("modality", "ct", "modality must be one of fundus, xray, not 'ct'"),
        ("padding", "mirror", "padding must be one of zeros, circular"),  # failed at forward
        ("depth", 6, "depth must be 2 to 5, not 6"),
        ("dim", 0, "dim must be a positive integer"),
    ],
)
def test_a_bad_architecture_is_a_localdisc_error_that_is_still_a_value_error(field, value, message):
    with pytest.raises(InputError, match=message) as caught:
        LDModel(**{field: value})
    assert isinstance(caught.value, LocaldiscError) and isinstance(caught.value, ValueError)


def test_an_unfinished_pretraining_run_says_how_to_finish_it(tmp_path):
    """A run stopped before model.safetensors (in stage 1 or 2) said only "weights file not
    found"; it is named as unfinished, with `pretrain --resume` and the weight files it has."""
    import json

    from helpers import tiny_pretrain_config
    from localdisc.data.pool import synthetic_pool
    from localdisc.engine.pretrain import pretrain
    from localdisc.models.segmenter import Segmenter

    pool = synthetic_pool(4, "fundus", 48)
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(), run, pool=pool, stop_at_step=4, log=lambda m: None)
    assert not (run / "model.safetensors").exists() and (run / "stage1.safetensors").is_file()
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(run)
    message = str(error.value)
    assert f"{run}: an unfinished pre-training run (no model.safetensors yet; its last " in message
    assert f"localdisc pretrain --data ... --out {run} --resume" in message
    assert f"or give {run / 'stage1.safetensors'} (the weights at the end of stage 1)" in message
    assert LDModel.from_pretrained(run / "stage1.safetensors").run_dir == run  # as it says
    # Started by the CLI: its own command, with --resume; `finetune --init RUN` says the same.
    config = json.loads((run / "config.json").read_text())
    config["environment"]["argv"] = ["/x/localdisc/__main__.py", "pretrain", "--data", "my eyes",
                                     "--out", "run"]  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    command = "`python -m localdisc pretrain --data 'my eyes' --out run --resume`"
    for load in (LDModel.from_pretrained, Segmenter.from_ld_run):
        with pytest.raises(CheckpointError, match="an unfinished pre-training run") as error:
            load(run)
        assert command in str(error.value)
    # Under torchrun argv is one worker's: it resumes only with as many processes, said so.
    assert "torchrun" not in str(error.value)
    config["environment"]["processes"] = 4
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(run)
    assert f"{command}; the saved settings apply), launched with torchrun as it was (4 " \
        "processes in all)" in str(error.value)  # fmt: skip
    config["environment"]["argv"] = ["/x/my_script.py"]  # started from Python: said as well
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(run)
    assert "--resume` (the saved settings apply), launched with torchrun as it was (4 " \
        "processes in all)" in str(error.value)  # fmt: skip

    early = tmp_path / "early"  # stopped in stage 1, before any weight file
    pretrain(tiny_pretrain_config(), early, pool=pool, stop_at_step=1, log=lambda m: None)
    with pytest.raises(
        CheckpointError, match=r"run \(no model.safetensors yet; no checkpoint yet\).*apply\)$"
    ):
        LDModel.from_pretrained(early)


def test_an_encoder_file_given_as_the_whole_model_says_which_file_to_give(tmp_path):
    # `similarity --model RUN/encoder.safetensors` said "weights do not match the config".
    LDModel(dim=8, clusters=4).save(tmp_path)
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(tmp_path / "encoder.safetensors")
    assert str(error.value) == (
        f"{tmp_path / 'encoder.safetensors'}: the encoder alone (what `localdisc finetune "
        f"--init` reads), not a whole LD model; give the run folder {tmp_path} instead (its "
        "model.safetensors)"
    )


def test_weights_that_do_not_match_name_a_few_keys(tmp_path):
    """A weights file of another model said "weights do not match the config" (torch's message,
    every key, was only the cause): the file and a short summary of the keys."""
    import json

    from safetensors.torch import save_file

    LDModel(dim=8, clusters=4).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["clusters"] = 6  # the config edited after the weights were saved
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'model.safetensors'}: weights do not match the model of its config.json "
        "(7 of another shape: cluster_head.0.0.weight ([4, 32, 3, 3] in the file, "
        "[6, 32, 3, 3] in the model), cluster_head.0.1.weight, cluster_head.0.1.bias, ... "
        "(4 more))"
    )
    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(tmp_path / "other.safetensors")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'other.safetensors'}: weights do not match")
    assert "weights do not match the model of its config.json (130 missing: backbone." in message
    assert "more); 1 unexpected: fc.weight)" in message and len(message) < 400


def test_a_file_given_as_a_run_folder_is_named_a_file(tmp_path):
    LDModel(dim=8, clusters=4).save(tmp_path)
    with pytest.raises(CheckpointError, match="config.json: a file, not a run folder; give an LD"):
        LDModel.from_pretrained(tmp_path / "config.json")


def test_weights_holding_nan_or_inf_are_refused(tmp_path):
    # A diverged run's weights (or a damaged file with an intact header) loaded silently:
    # NaN embeddings, and similarity/localize answers from them.
    from safetensors.torch import save_file

    model = LDModel(LDConfig("xray", width=4, depth=2, dim=8, clusters=4))
    model.save(tmp_path)
    state = model.state_dict()
    state["embedding_head.1.bias"] = torch.tensor([1.0, float("inf")] + [0.0] * 6)
    state["cluster_head.1.weight"] = torch.full_like(state["cluster_head.1.weight"], float("nan"))
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        LDModel.from_pretrained(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'model.safetensors'}: weights hold NaN or inf values (in 2 tensors: "
        "cluster_head.1.weight, embedding_head.1.bias); a damaged file or diverged training"
    )
