import re
import time

import pytest
from typer.testing import CliRunner

from localdisc.cli import app


def test_quick_demo_writes_its_figures_in_seconds(tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    for name in ("demo_clusters.png", "demo_similarity.png", "demo_landmarks.png",
                 "demo_vessels.png"):  # fmt: skip
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    assert (tmp_path / "model.safetensors").is_file()
    assert "demo finished" in result.output
    assert "one-shot localisation (LD" in result.output and "fovea" in result.output
    assert "vessels without labels" in result.output and "Sato" in result.output
    assert "taught network" in result.output
    # The taught network's steps have the progress bar of every other long phase: not a
    # terminal here, so its timestamped plain lines (they were missing), its log lines kept.
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d student: step 2/2 ", result.output, re.M)
    assert "student step 2/2: loss" in result.output
    # Seconds on an idle 2-core CPU; the loose bound catches a quick mode grown tenfold, not the
    # noise of a loaded machine (74 s there while four other jobs ran).
    assert elapsed < 120

    # Again into the same folder: its finished runs are reused, not refused or trained again.
    weights = (tmp_path / "model.safetensors").read_bytes()
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert "reusing the demo's finished pre-training" in again.output
    assert (tmp_path / "model.safetensors").read_bytes() == weights


def test_demo_into_a_folder_holding_another_run_is_refused(tmp_path):
    from helpers import tiny_pretrain_config
    from localdisc.demo import run_demo
    from localdisc.engine.pretrain import pretrain
    from localdisc.errors import CheckpointError

    pretrain(tiny_pretrain_config(data=["synthetic_fundus:4"]), tmp_path, log=lambda m: None)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    # Named, as the benchmarks name them.
    with pytest.raises(CheckpointError, match=r"other settings than this demo's \(data .*"
                       r"stage1_steps 3 \(given 4\)"):  # fmt: skip
        run_demo(tmp_path, quick=True, device="cpu", progress=False, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_demo_run_saved_before_the_sampler_setting_is_refused_naming_it(tmp_path):
    import json

    from localdisc.demo import run_demo
    from localdisc.errors import CheckpointError

    run_demo(tmp_path, quick=True, device="cpu", progress=False, log=lambda m: None)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["pretrain"]["sampler"]  # as a demo before it wrote config.json: drawn so
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"\(sampler 'replacement' \(given 'epoch'\)\)"):
        run_demo(tmp_path, quick=True, device="cpu", progress=False, log=lambda m: None)


def test_demo_queries_find_vessel_disc_and_background():
    import numpy as np

    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.demo import demo_queries

    fundus = synthetic_fundus(256, seed=1)
    queries = {label: (y, x) for _, y, x, label in demo_queries(fundus.image)}
    y, x = queries["vessel"]
    assert fundus.vessels[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3].any()
    dy, dx = queries["optic disc"]
    assert np.hypot(dx - fundus.optic_disc[0], dy - fundus.optic_disc[1]) < 256 / 12
    by, bx = queries["background"]
    assert fundus.fov[by, bx] and not fundus.vessels[by - 2 : by + 3, bx - 2 : bx + 3].any()


def test_demo_needs_no_network(tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "demo_similarity.png").is_file()


def test_demo_on_grey_fundus_photographs(tmp_path, monkeypatch):
    # Red-free fundus photographs are grey: the similarity figure's queries need RGB.
    import numpy as np

    import localdisc.demo
    from helpers import save
    from localdisc.demo import run_demo

    rng = np.random.default_rng(0)
    for i in range(3):
        save(tmp_path / "photos" / f"redfree{i}.png", rng.integers(0, 255, (40, 48), np.uint8))
    named = spy_figure_names(monkeypatch, localdisc.demo)
    written = run_demo(tmp_path / "out", quick=True, data=[str(tmp_path / "photos")],
                       device="cpu", progress=False, log=lambda m: None)  # fmt: skip
    assert written["similarity"].stat().st_size > 0
    # The panels are titled by the files' names, not "image 0".
    files = ["redfree0.png", "redfree1.png", "redfree2.png"]
    assert named == {"cluster_figure": files, "similarity_figure": files}


def test_demo_on_own_photographs_shows_them_as_the_pool_holds_them(tmp_path, monkeypatch):
    # A retina in a wide black camera frame: the figures squashed the whole frame, so the
    # network was shown a retina smaller and narrower than any it was trained on.
    import numpy as np

    import localdisc.demo
    from helpers import save
    from localdisc.data.pool import prepare_pool_image
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.demo import run_demo

    frames = []
    for i in range(3):
        frame = np.zeros((64, 112, 3), np.uint8)
        frame[:, 24:88] = (synthetic_fundus(64, seed=i).image * 255).astype(np.uint8)
        frames.append(save(tmp_path / "photos" / f"eye{i}.png", frame))
    shown: list = []
    original = localdisc.demo.cluster_figure

    def spy(model, images, *args, **kwargs):
        shown.extend(images)
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(localdisc.demo, "cluster_figure", spy)
    run_demo(tmp_path / "out", quick=True, data=[str(tmp_path / "photos")], device="cpu",
             progress=False, log=lambda m: None)  # fmt: skip
    from localdisc.data.io import read_image

    size = shown[0].shape[0]
    for path, image in zip(frames, shown, strict=True):
        pooled = prepare_pool_image(read_image(path)[0], "fundus", size).transpose(1, 2, 0)
        np.testing.assert_allclose(image, pooled / 255.0, atol=1e-6)


def spy_figure_names(monkeypatch, module) -> dict[str, list[str]]:
    """The ``names`` that ``module`` passes to its cluster and similarity figures, by function."""
    named: dict[str, list[str]] = {}
    for function in ("cluster_figure", "similarity_figure"):
        original = getattr(module, function)

        def spy(*args, _name=function, _original=original, **kwargs):
            named[_name] = list(kwargs.get("names") or [])
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, function, spy)
    return named


def test_demo_names_the_images_of_its_figures():
    from localdisc.demo import demo_figure_images, demo_figure_names

    for modality in ("fundus", "xray"):
        names = demo_figure_names(modality)
        assert len(names) == len(demo_figure_images(modality, 32)) == len(set(names))
    assert demo_figure_names("fundus")[1] == "generated eye 1"


def test_a_demo_of_a_folder_grown_since_is_refused_not_reused(tmp_path):
    # `demo --data photos/` again after more photos were added reused the first run as this
    # one's, its pool the old folder's (a reviewer); the same folder is reused as before.
    import numpy as np
    import pytest

    from helpers import save
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.demo import run_demo
    from localdisc.errors import CheckpointError

    def photo(i: int) -> None:
        save(tmp_path / "photos" / f"eye{i}.png",
             (synthetic_fundus(64, seed=i).image * 255).astype(np.uint8))  # fmt: skip

    for i in range(3):
        photo(i)
    demo = dict(quick=True, data=[str(tmp_path / "photos")], device="cpu", progress=False,
                log=lambda m: None)  # fmt: skip
    run_demo(tmp_path / "out", **demo)
    run_demo(tmp_path / "out", **demo)  # reused
    photo(3)
    with pytest.raises(CheckpointError, match="pre-trained on other files than its data"):
        run_demo(tmp_path / "out", **demo)


def test_a_demo_into_a_folder_of_a_users_own_config_and_log_is_refused(tmp_path):
    # `demo --out proj` wrote over the user's own config.json and log.csv (a reviewer).
    from localdisc.demo import run_demo
    from localdisc.errors import CheckpointError

    (tmp_path / "config.json").write_text('{"experiment": "my settings, not a run"}')
    (tmp_path / "log.csv").write_text("epoch,my_loss\n")
    with pytest.raises(CheckpointError, match=r"holds config.json and log.csv, not of a "
                       r"pre-training .*\(nothing was deleted\)"):  # fmt: skip
        run_demo(tmp_path, quick=True, device="cpu", progress=False, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "log.csv"]
    assert (tmp_path / "log.csv").read_text() == "epoch,my_loss\n"


@pytest.mark.parametrize(
    ("data", "modality"), [("synthetic_xray:4", "xray"), ("skimage:retina", "fundus")]
)
def test_a_demo_of_generated_data_shows_the_built_in_figure_images(
    tmp_path, monkeypatch, data, modality
):
    # Generated images and scikit-image's photograph have no files: the demo trained, then
    # failed looking for them (a reviewer). Its figures show the built-in demo's images.
    import localdisc.demo
    from localdisc.demo import demo_figure_names, run_demo

    named = spy_figure_names(monkeypatch, localdisc.demo)
    written = run_demo(tmp_path, quick=True, data=[data], modality=modality, device="cpu",
                       progress=False, log=lambda m: None)  # fmt: skip
    assert written["similarity"].stat().st_size > 0
    assert named["cluster_figure"] == demo_figure_names(modality)
