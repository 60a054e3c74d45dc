"""A peer method's run (``pretrain --method simclr`` ...) where an LD run is expected: it serves
as an encoder (finetune), and the tools that need LD's embedding and clustering heads, which a
peer does not train, refuse it naming its method; it is never resumed as another method."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import save, tiny_pretrain_config, torch_threads
from localdisc.cli import app
from localdisc.engine.pretrain import pretrain
from localdisc.errors import CheckpointError
from localdisc.models.ld import LDModel
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.similarity import load_model

REFUSAL = "a `localdisc pretrain --method simclr` run, not an LD one"


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(4, "fundus", 48)


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory, pool):
    run = tmp_path_factory.mktemp("peer") / "simclr"
    config = tiny_pretrain_config(method="simclr", stage1_steps=1, stage2_steps=0, val_images=0)
    with torch_threads(1):
        pretrain(config, run, pool=pool, log=lambda m: None)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        save(folder / name, (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    return folder


def test_a_peer_run_is_an_encoder_for_finetuning(peer_run):
    for init in (peer_run, peer_run / "model.safetensors", peer_run / "encoder.safetensors"):
        Segmenter.from_ld_run(init, size=32)  # no refusal
    model = LDModel.from_pretrained(peer_run)  # its encoder, from Python
    assert model.method == "simclr" and model.encoder is not None


def test_a_peer_run_has_no_embeddings_or_clusters(peer_run):
    model = LDModel.from_pretrained(peer_run)
    image = np.zeros((32, 32, 3), np.float32)
    for use in (model.embed, model.cluster, model.embed_and_cluster):
        with pytest.raises(CheckpointError, match="finetune --init") as info:
            use(image)
        assert REFUSAL in str(info.value)
    with pytest.raises(CheckpointError, match="similarity, localize, view, shape-guided"):
        load_model(peer_run / "model_best.safetensors")


def test_similarity_localize_and_view_refuse_a_peer_run(peer_run, images, tmp_path, monkeypatch):
    import localdisc.viewer.server as server

    def no_server(*args, **kwargs):  # the old code went on to serve noise
        raise AssertionError("the viewer started on a peer method's run")

    monkeypatch.setattr(server, "create_server", no_server)
    (tmp_path / "t.json").write_text(json.dumps({"disc": [10, 10]}))
    model, a = str(peer_run), str(images / "a.png")
    commands = [
        ["similarity", "--model", model, "--image", a, "--point", "10,20", "--targets",
         str(images / "b.png"), "--out", str(tmp_path / "sim.png"), "--device", "cpu"],
        ["localize", "--model", model, "--template", a, "--landmarks", str(tmp_path / "t.json"),
         "--images", str(images), "--device", "cpu"],
        ["view", "--model", model, "--images", str(images), "--device", "cpu"],
    ]  # fmt: skip
    for args in commands:
        result = CliRunner().invoke(app, args)  # main() makes the error one line, exit 2
        assert isinstance(result.exception, CheckpointError), (args[0], result.output)
        assert REFUSAL in str(result.exception), args[0]
    assert not (tmp_path / "sim.png").exists()


def test_stage_2_does_not_start_from_a_peer_run(peer_run, pool, tmp_path):
    config = tiny_pretrain_config(stage1_steps=0, stage2_steps=1, init_from=str(peer_run))
    with pytest.raises(CheckpointError, match="--method simclr"):
        pretrain(config, tmp_path / "sg", pool=pool, log=lambda m: None)
    assert not (tmp_path / "sg").exists()  # refused before anything was written


def test_a_run_is_not_resumed_as_another_method(pool, tmp_path):
    config = tiny_pretrain_config(method="simclr", stage1_steps=2, stage2_steps=0, val_images=0)
    quiet = {"pool": pool, "log": lambda m: None}
    with torch_threads(1):
        pretrain(config, tmp_path, stop_at_step=1, **quiet)
        for other in ("densecl", "ld"):
            wrong = tiny_pretrain_config(method=other, stage1_steps=2, stage2_steps=0)
            with pytest.raises(
                CheckpointError, match=f"--method simclr run.* not as --method {other}"
            ):
                pretrain(wrong, tmp_path, resume=True, **quiet)
        lines: list[str] = []
        assert pretrain(config, tmp_path, resume=True, pool=pool, log=lines.append).steps == 2
    assert any(line.endswith("--method simclr: one stage") for line in lines)  # a log file says
