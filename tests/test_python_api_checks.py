"""The Python API checks what the commands check (reviewer session 57): a mask threshold, one
target alone, clusters of weights whose clustering head never trained, torch's global random
state, ``device="auto"``/misspelt devices, a fine-tuning rotation and the search settings."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import save
from localdisc.engine.finetune import FinetuneConfig
from localdisc.errors import CheckpointError, InputError, LocaldiscError
from localdisc.models.ld import LDModel
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.localize import Localizer, SearchConfig
from localdisc.tasks.predict import predict_images
from localdisc.tasks.shape_guided import segment
from localdisc.tasks.similarity import similarity
from localdisc.tasks.vessels import predict_vessels


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny LD run folder (with a stage-1 weight file), a segmenter folder and an image."""
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    LDModel(width=4, depth=2, dim=8, clusters=4).save(root / "run")
    shutil.copy(root / "run" / "model.safetensors", root / "run" / "stage1.safetensors")
    Segmenter(width=4, depth=2, size=32).save(root / "seg")
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {
        "run": root / "run",
        "seg": root / "seg",
        "image": save(root / "images" / "a.png", rgb),
        "out": root / "out",
    }


def image() -> np.ndarray:
    return np.random.default_rng(1).random((32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("threshold", [128, -0.1, math.nan, 1.5])
def test_predict_refuses_a_threshold_that_is_no_probability(files, threshold):
    # 128 wrote empty masks, -0.1 full ones, NaN empty ones and a predict.json of no JSON.
    message = r"threshold must be a probability in \[0, 1\], not .*128 / 255 for a 0-255 one"
    out = files["out"] / f"th-{threshold}"
    with pytest.raises(InputError, match=message):
        predict_images(files["seg"], [files["image"]], out, threshold=threshold, device="cpu",
                       log=lambda line: None)  # fmt: skip
    assert not out.exists()  # refused before any work
    with pytest.raises(InputError, match=message):  # a `shape-guided vessels` network's too
        predict_vessels(files["seg"], [files["image"]], out, threshold=threshold, device="cpu")


def test_predict_takes_numpy_s_thresholds_as_floats(files):
    # skimage's threshold_otsu of a float32 map is a numpy float32: it passed the check, then
    # predict.json could not be written (no JSON type).
    out = files["out"] / "th-numpy"
    predict_images(files["seg"], [files["image"]], out, threshold=np.float32(0.25), device="cpu",
                   log=lambda line: None)  # fmt: skip
    assert json.loads((out / "predict.json").read_text())["threshold"] == 0.25


def test_similarity_takes_one_target_alone(files):
    # An array was iterated row by row (32 one-row targets), a str character by character, a
    # Path not at all (TypeError).
    model = LDModel.from_pretrained(files["run"])
    query = image()
    for target in (query[..., 0], torch.from_numpy(query[..., 0]), str(files["image"]),
                   files["image"]):  # fmt: skip
        maps = similarity(model, query, [(5, 5)], target, size=32)
        assert len(maps.targets) == 1 and maps.targets[0].shape == (1, 32, 32)
        assert len(maps.best) == 1
    # More axes alone may be one image or a stack (3 x H x W: three grey images blended into
    # one, a reviewer's): a list says which.
    for target in (query, torch.from_numpy(query).permute(2, 0, 1)):
        with pytest.raises(InputError, match=r"may be one image or a stack of them: give a list"):
            similarity(model, query, [(5, 5)], target, size=32)
    assert len(similarity(model, query, [(5, 5)], [query], size=32).targets) == 1


def test_weights_whose_clustering_head_never_trained_refuse_clusters(files):
    # Stage 1's clustering head is the random init: clusters from it looked like a result.
    stage1 = LDModel.from_pretrained(files["run"] / "stage1.safetensors")
    assert stage1.embed(image()).shape == (8, 32, 32)  # the embedding trained: allowed
    message = re.escape(
        f"{files['run'] / 'stage1.safetensors'}: the weights at the end of stage 1, whose "
        "clustering head never trained"
    )
    for call in (stage1.cluster, stage1.embed_and_cluster, lambda im: segment(stage1, im)):
        with pytest.raises(CheckpointError, match=message + ".*give the run folder"):
            call(image())
    stage1.untrained_clusters = None  # looked at knowingly
    assert stage1.cluster(image()).shape == (4, 32, 32)
    final = LDModel.from_pretrained(files["run"])
    assert final.untrained_clusters is None and final.cluster(image()).shape == (4, 32, 32)


def test_a_new_head_is_drawn_from_the_seed_and_anew_at_each_call(files):
    # Loading draws initial weights from torch's global state, as building any torch module
    # does (README): a fork of the state (a first fix) gave every from_ld_run of a loop the
    # same decoder and head, and moved a recorded benchmark's random network.
    run = str(files["run"])
    torch.manual_seed(5)
    a = Segmenter.from_ld_run(run, size=32).head.weight
    b = Segmenter.from_ld_run(run, size=32).head.weight
    torch.manual_seed(5)
    assert torch.equal(Segmenter.from_ld_run(run, size=32).head.weight, a)
    assert not torch.equal(a, b)


def test_device_auto_loads_and_a_misspelt_one_is_named(files):
    run = files["run"]
    loads = {
        "LDModel.from_pretrained": lambda d: LDModel.from_pretrained(run, device=d),
        "Segmenter.from_pretrained": lambda d: Segmenter.from_pretrained(files["seg"], device=d),
        "similarity": lambda d: similarity(run, image(), [(5, 5)], size=32, device=d),
        "similarity of an LDModel": lambda d: similarity(
            LDModel.from_pretrained(run), image(), [(5, 5)], size=32, device=d
        ),
        "Localizer": lambda d: Localizer(
            run, image(), {"a": (5, 5)}, SearchConfig(size=32), device=d
        ),  # fmt: skip
    }
    for load in loads.values():
        load("auto")  # raised torch's "Expected one of cpu, cuda, ..." RuntimeError
        with pytest.raises(LocaldiscError, match=r"unknown device 'gpu' \(auto, cpu, cuda"):
            load("gpu")
    # Other devices torch knows load as before (xpu, meta): only the commands keep to their list.
    assert next(LDModel.from_pretrained(run, device="meta").parameters()).is_meta


@pytest.mark.parametrize("rotation", [-30.0, math.nan, math.inf])
def test_finetune_config_refuses_a_negative_or_nan_rotation(rotation):
    # augment() rotates where rotation > 0: these trained without rotation, silently. The
    # refinement of shape-guided pseudo-labels takes the same setting.
    from localdisc.tasks.shape_guided import RefineConfig

    with pytest.raises(LocaldiscError, match=r"rotation must be a range in degrees >= 0"):
        FinetuneConfig(rotation=rotation)
    with pytest.raises(LocaldiscError, match=r"rotation must be a range in degrees >= 0"):
        RefineConfig(rotation=rotation)
    assert RefineConfig(rotation=0.0).rotation == 0.0


def test_finetune_config_takes_a_rotation_of_zero_or_more():
    for rotation in (None, 0, 0.0, 30, 180.0):
        assert FinetuneConfig(rotation=rotation).rotation == rotation


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stride": 0}, "stride must be a whole number of pixels >= 1"),
        ({"stride": -2}, "stride must be a whole number of pixels >= 1"),
        ({"stride": 2.5}, "stride must be a whole number of pixels >= 1"),
        ({"context": 0}, "context must be a finite number >= 1"),
        ({"context": 0.01}, "context must be a finite number >= 1"),
        ({"context": math.nan}, "context must be a finite number >= 1"),
    ],
)
def test_search_config_refuses_a_bad_stride_or_context(settings, message):
    # A stride of 0, -2 or 2.5 failed in torch's pooling; a context of 0, or one below 1 (a
    # kernel of one pixel at 0.01), dropped the context term without a word.
    with pytest.raises(InputError, match=message):
        SearchConfig(**settings)


def test_search_config_takes_good_strides_and_contexts(files):
    for settings in ({"stride": 1}, {"stride": np.int64(2)}, {"context": 1}, {"context": 3.5}):
        config = SearchConfig(size=32, **settings)
        Localizer(files["run"], image(), {"a": (5, 5)}, config)(image())
