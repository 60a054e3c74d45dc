"""`localdisc predict` run again into the same --out: after an interruption, and into the folder
of a `shape-guided vessels` run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import save
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.predict import predict_images
from localdisc.tasks.self_training import StudentConfig
from localdisc.tasks.vessels import segment_vessels_self_trained


def quiet(_: str) -> None:
    pass


def test_a_predict_interrupted_then_run_on_other_images_leaves_none_of_its_outputs(
    tmp_path, monkeypatch
):
    """predict.json was written at the end only: a predict stopped after some images (Ctrl-C,
    SIGTERM) left their masks unlisted, and the next predict into that --out, of other images,
    kept them beside its own."""
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "model")
    for name in ("a", "b", "c"):
        save(tmp_path / "in" / f"{name}.png", np.full((20, 24, 3), 120, np.uint8))
    save(tmp_path / "new" / "d.png", np.full((20, 24, 3), 120, np.uint8))
    out = tmp_path / "out"
    calls, real = [], Segmenter.predict_maps

    def stop_at_the_second(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, image)

    monkeypatch.setattr(Segmenter, "predict_maps", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        predict_images(tmp_path / "model", [tmp_path / "in"], out, device="cpu")
    monkeypatch.setattr(Segmenter, "predict_maps", real)
    record = json.loads((out / "predict.json").read_text())
    assert record["finished"] is False  # the outputs beside it are not all there
    assert (out / "a_mask.png").is_file()
    logged: list[str] = []
    predict_images(tmp_path / "model", [tmp_path / "new"], out, device="cpu", log=logged.append)
    assert sorted(p.name for p in out.iterdir()) == ["d_mask.png", "d_prob.png", "predict.json"]
    assert json.loads((out / "predict.json").read_text())["finished"] is True
    assert any("removed 2 file(s) of an earlier predict" in line for line in logged), logged


def _vessels_run(tmp_path):
    """A `shape-guided vessels` run on two small generated photographs: (its folder, the
    photographs' folder)."""
    photos = tmp_path / "photos"
    for seed in range(2):
        eye = synthetic_fundus(80, seed=seed)
        save(photos / f"eye{seed}.png", np.round(eye.image * 255).astype(np.uint8))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, painted=1, device="cpu")
    out = tmp_path / "vessels"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, log=quiet,
                                 progress=False)  # fmt: skip
    return out, photos


def test_predict_never_writes_into_a_vessels_run_s_folder(tmp_path):
    """`predict --model vessels/ --out vessels/` replaced the run's vessels.csv (its table of
    the images it was taught on) and figures/overlay.png, and put the new masks among its own;
    a fine-tuning's predictions wrote over its masks."""
    out, photos = _vessels_run(tmp_path)
    save(tmp_path / "new" / "other.png", np.full((80, 80, 3), 120, np.uint8))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(LocaldiscError, match=r"vessels: holds a `shape-guided vessels` run"):
        predict_images(out, [tmp_path / "new"], out, device="cpu", log=quiet)
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "ft", {"transfer": {}})
    with pytest.raises(LocaldiscError, match=r"vessels: holds a `shape-guided vessels` run"):
        predict_images(tmp_path / "ft", [photos], out, device="cpu", log=quiet)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Its network writes its own figure and table: not into a fine-tuning's folder either.
    with pytest.raises(LocaldiscError, match=r"ft: holds the run of another command"):
        predict_images(out, [tmp_path / "new"], tmp_path / "ft", device="cpu", log=quiet)
    assert not (tmp_path / "ft" / "figures").exists()
    # Elsewhere it segments.
    predict_images(out, [tmp_path / "new"], tmp_path / "more", device="cpu", log=quiet)
    assert (tmp_path / "more" / "other_mask.png").is_file()


def test_an_interrupted_predict_says_what_it_leaves_and_how_to_go_on(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM in `localdisc predict` said only "interrupted": not that some images
    were written and others not, nor what to do."""
    from typer.testing import CliRunner

    from localdisc.cli import app
    from localdisc.tasks import predict

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_images", interrupt)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", "--model", "m", "--images", "in", "--out", str(out)]
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == (
        f"interrupted: the images segmented so far are in {out} (its predict.json says "
        "finished: false); run the same command again to segment them all"
    )


def test_predict_with_a_vessels_network_skips_unreadable_images_on_request(tmp_path):
    """A vessels network segments as its command did, one image at a time: an unreadable image
    stopped it midway; with skip_bad it is skipped, and left out of vessels.csv."""
    import csv

    out, photos = _vessels_run(tmp_path)
    new, more = tmp_path / "new", tmp_path / "more"
    for seed, name in ((2, "a"), (3, "broken")):
        eye = synthetic_fundus(80, seed=seed)
        save(new / f"{name}.png", np.round(eye.image * 255).astype(np.uint8))
    predict_images(out, [new], more, device="cpu", log=quiet)
    broken = new / "broken.png"
    broken.write_bytes(broken.read_bytes()[:200])
    (new / "notes.png").write_text("not an image")
    with pytest.raises(LocaldiscError, match=r"broken.png: cannot decode .*; --skip-bad skips"):
        predict_images(out, [new], more, device="cpu", log=quiet)
    logged: list[str] = []
    written = predict_images(out, [new], more, device="cpu", log=logged.append, skip_bad=True)
    assert [p.name for p in written] == ["a_mask.png"]
    assert not list(more.glob("broken_*")) and not list(more.glob("notes_*"))
    with (more / "vessels.csv").open() as file:
        assert [row["image"] for row in csv.DictReader(file)] == ["a"]
    record = json.loads((more / "predict.json").read_text())
    assert [e["name"] for e in record["images"]] == ["a"]
    assert [e["name"] for e in record["skipped"]] == ["broken", "notes"]
    assert sum(line.startswith("skipped ") for line in logged) == 2
    with pytest.raises(LocaldiscError, match="every image was skipped as unreadable"):
        predict_images(out, [broken], tmp_path / "none", device="cpu", log=quiet, skip_bad=True)
    assert not (tmp_path / "none" / "figures").exists()
