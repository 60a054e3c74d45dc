import json
import re

import numpy as np
import pytest
import torch

from helpers import sphere_field, spy_load_model
from localdisc.errors import InputError, LocaldiscError
from localdisc.models import LDConfig, LDModel
from localdisc.tasks.similarity import (
    LoadedModel,
    PatchKernel,
    dense_patch_embeddings,
    parse_point,
    similarity,
)


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return LoadedModel(LDModel(LDConfig(dim=8, clusters=4)).eval(), PatchKernel(8), 64)


def test_a_point_matches_itself_best_and_identical_images_give_identical_maps(loaded):
    rng = np.random.default_rng(0)
    image = rng.random((48, 40, 3)).astype(np.float32)
    points = [(5.0, 7.0), (30.0, 40.0)]
    for level in ("pixel", "patch"):
        # At the image's own size: the query pixel's own embedding, no interpolation between.
        result = similarity(loaded, image, points, [image, image.copy()], level=level, size=48)
        assert result.query.shape == (2, 48, 40)
        for p, (x, y) in enumerate(points):
            assert result.query[p, int(y), int(x)] == pytest.approx(1.0, abs=1e-5)
            assert result.query[p].max() <= 1.0
        np.testing.assert_array_equal(result.targets[0], result.targets[1])
        np.testing.assert_allclose(result.targets[0], result.query, atol=1e-6)


def test_images_are_resized_to_the_pool_size_by_default(loaded):
    # As localize and the viewer: embeddings are not scale-invariant, so a large target at its
    # own size is compared at another scale than the query (a 2048-pixel radiograph's heart
    # matched 400 pixels off a 512-pixel query's).
    rng = np.random.default_rng(2)
    image = rng.random((48, 40, 3)).astype(np.float32)
    target = rng.random((100, 90, 3)).astype(np.float32)
    default = similarity(loaded, image, [(5, 7)], [target])
    at_pool = similarity(loaded, image, [(5, 7)], [target], size=loaded.pool_size)
    at_own = similarity(loaded, image, [(5, 7)], [target], size=48)
    np.testing.assert_array_equal(default.targets[0], at_pool.targets[0])
    assert not np.allclose(default.targets[0], at_own.targets[0])


def test_maps_are_at_each_targets_own_size_even_when_resized(loaded):
    rng = np.random.default_rng(1)
    image = rng.random((40, 40, 3)).astype(np.float32)
    target = rng.random((30, 50, 3)).astype(np.float32)
    result = similarity(loaded, image, [(10, 10)], [target], size=32)
    assert result.query.shape == (1, 40, 40) and result.targets[0].shape == (1, 30, 50)
    bx, by = result.best[0][0]
    assert 0 <= bx < 50 and 0 <= by < 30


def test_bad_points_are_refused(loaded):
    with pytest.raises(LocaldiscError, match="outside"):
        similarity(loaded, np.zeros((10, 10, 3), np.float32), [(10, 3)])
    with pytest.raises(LocaldiscError, match="X,Y"):
        parse_point("12")
    assert parse_point("12.5,3") == (12.5, 3.0)


def test_dense_patch_embeddings_pool_around_every_pixel():
    v = torch.nn.functional.normalize(torch.randn(4, 20, 20), dim=0)
    box = dense_patch_embeddings(v, PatchKernel(5))
    # Away from the border, a box patch is the normalised mean of the 5 x 5 neighbourhood.
    expected = torch.nn.functional.normalize(v[:, 8:13, 6:11].mean((1, 2)), dim=0)
    assert torch.allclose(box[:, 10, 8], expected, atol=1e-5)
    gauss = dense_patch_embeddings(v, PatchKernel(5, 0.25))
    assert torch.allclose(gauss.norm(dim=0), torch.ones(20, 20), atol=1e-5)
    assert not torch.allclose(gauss, box)


def test_similarity_cli_writes_the_figure_and_prints_best_matches(tmp_path):
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        save(tmp_path / name, (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    args = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.png"),
            "--point", "10,20", "--point", "30,5", "--targets", str(tmp_path / "b.png"),
            "--level", "patch", "--out", str(tmp_path / "sim.png"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sim.png").stat().st_size > 5_000
    assert result.output.count("best match b.png") == 2


def test_similarity_cli_takes_folders_of_targets_as_localize_takes_images(tmp_path):
    # `--targets FOLDER` was refused ("is a directory, not an image file"); localize, predict
    # and view take folders.
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    rng = np.random.default_rng(0)
    for name in ("a.png", "more/b.png", "more/sub/c.png", "e.png"):
        save(tmp_path / name, (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    out = tmp_path / "more" / "sim.png"
    args = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.png"),
            "--point", "10,20", "--targets", str(tmp_path / "more"), "--targets",
            str(tmp_path / "e.png"), "--out", str(out), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    match = r"\(\d+, \d+\) cosine -?\d\.\d{3}"
    assert re.search(rf"best match b {match}, sub_c {match}, e\.png {match} figure", output), output
    assert out.stat().st_size > 5_000
    # Run again: its figure in the folder is no target (a rerun was refused); nor is the query
    # image, in a folder of targets
    for again in (args, [*args[:4], str(tmp_path / "more" / "b.png"), *args[5:]]):
        result = CliRunner().invoke(app, again)
        assert result.exit_code == 0, result.output
        output = " ".join(result.output.split())
        listed = "sub_c" if "b.png" in again[4] else "b " + match + ", sub_c"
        assert re.search(rf"best match {listed} {match}, e\.png {match} figure", output), output
    # Nor with its figure written elsewhere: the folder's record lists the earlier one
    # (it was scored as target "sim"), and a pool of the folder leaves it out too.
    elsewhere = [*args[:-3], str(tmp_path / "other.png"), "--device", "cpu"]
    result = CliRunner().invoke(app, elsewhere)
    output = " ".join(result.output.split())
    assert re.search(rf"best match b {match}, sub_c {match}, e\.png {match} figure", output), output
    record = "localdisc-figures.json"
    assert json.loads((tmp_path / "more" / record).read_text()) == {
        "localdisc_figures": ["sim.png"]
    }
    assert json.loads((tmp_path / record).read_text()) == {"localdisc_figures": ["other.png"]}
    from localdisc.data.datasets import folder_image_files

    assert [p.name for p in folder_image_files(tmp_path)] == ["a.png", "e.png", "b.png", "c.png"]
    help_text = CliRunner().invoke(app, ["similarity", "--help"], env={"COLUMNS": "400"}).output
    assert "Other images, or folders of them (recursive" in " ".join(help_text.split())


def test_a_weight_file_of_a_run_loads_as_the_run(tmp_path):
    import shutil

    from localdisc.tasks.similarity import load_model

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    shutil.copy(tmp_path / "run" / "model.safetensors", tmp_path / "run" / "stage1.safetensors")
    loaded = load_model(tmp_path / "run" / "stage1.safetensors")
    assert loaded.run_dir == tmp_path / "run" and loaded.model.config.dim == 8


def test_a_working_size_below_16_is_refused(loaded):
    image = np.zeros((20, 20, 3), np.float32)
    for size in (0, -5, 8):
        with pytest.raises(LocaldiscError, match="size must be at least 16 pixels"):
            similarity(loaded, image, [(1, 1)], size=size)


def test_similarity_cli_checks_size_and_figure_suffix_first_and_prints_the_file_written(
    tmp_path,
):
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    save(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    base = ["similarity", "--model", str(tmp_path / "no-run"), "--image", str(tmp_path / "a.png"),
            "--point", "3,4", "--device", "cpu"]  # fmt: skip
    # Refused before the (here missing) model is read: no work is wasted.
    for extra, message in (
        (["--size", "0"], "--size must be at least 16 pixels, not 0"),
        (["--out", str(tmp_path / "sim.txt")], "cannot write a figure as .txt"),
    ):
        result = CliRunner().invoke(app, [*base, *extra])
        assert isinstance(result.exception, LocaldiscError), result.output
        assert message in str(result.exception)
    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    base[2] = str(tmp_path / "run" / "model.safetensors")  # a weight file works as the run
    # No suffix: matplotlib writes PNG, and the name printed is that of the file written; a
    # [...] in it is a name, not Rich markup.
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "sim[v2]")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sim[v2].png").is_file()
    assert f"figure: {tmp_path / 'sim[v2].png'}" in "".join(result.output.split("\n"))


def test_an_existing_folder_as_out_is_refused_before_any_work(tmp_path):
    """``--out FOLDER`` wrote FOLDER.png beside the folder and exited 0: it is refused, as
    ``localize`` refuses a folder --out; so is a suffix-less name whose .png is a folder."""
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app
    from localdisc.tasks.similarity import figure_path

    save(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "figs").mkdir()
    result = CliRunner().invoke(
        app, ["similarity", "--model", str(tmp_path / "no-run"), "--image",
              str(tmp_path / "a.png"), "--point", "3,4", "--device", "cpu",
              "--out", str(tmp_path / "figs")],
    )  # fmt: skip
    assert isinstance(result.exception, LocaldiscError), result.output
    assert str(result.exception) == (
        f"--out {tmp_path / 'figs'} is a folder; give the figure's file name"
    )
    assert not (tmp_path / "figs.png").exists()
    (tmp_path / "b.png").mkdir()
    with pytest.raises(LocaldiscError, match="b.png is a folder; give the figure's file name"):
        figure_path(tmp_path / "b")
    assert figure_path(tmp_path / "c") == tmp_path / "c.png"


def test_an_out_under_a_file_is_refused_before_any_work(tmp_path):
    """``--out A_FILE/x.png`` failed only when the figure was written, after the model ran: it
    is refused first, in one line naming --out (exit code 2, as the other bad values)."""
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    save(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "afile").write_text("not a folder")
    base = ["similarity", "--model", str(tmp_path / "no-run"), "--image", str(tmp_path / "a.png"),
            "--point", "3,4", "--device", "cpu"]  # fmt: skip
    for out in (tmp_path / "afile" / "x.png", tmp_path / "afile" / "sub" / "x"):
        result = CliRunner().invoke(app, [*base, "--out", str(out)])
        # Not the missing model's error: --out is checked before the model is read.
        assert isinstance(result.exception, LocaldiscError), result.output
        shown = out if out.suffix else out.with_name("x.png")
        assert str(result.exception) == (
            f"--out {shown}: {tmp_path / 'afile'} is a file, not a folder"
        )


def test_an_out_that_is_the_image_or_a_target_is_refused_before_any_work(tmp_path):
    """``--out`` at the query image or a target was overwritten with the figure (reviewer)."""
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    save(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    save(tmp_path / "b.png", np.ones((32, 32, 3), np.uint8))
    base = ["similarity", "--model", str(tmp_path / "no-run"), "--image", str(tmp_path / "a.png"),
            "--targets", str(tmp_path / "b.png"), "--point", "3,4", "--device", "cpu"]  # fmt: skip
    before = {n: (tmp_path / n).read_bytes() for n in ("a.png", "b.png")}
    for name in before:
        result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / name)])
        assert isinstance(result.exception, LocaldiscError), result.output
        assert str(result.exception).startswith(
            f"--out {tmp_path / name} is an input of this command ({tmp_path / name})"
        )
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


class Identity(torch.nn.Module):
    """A stand-in 'model' whose pixel embedding is the pixel's (unit) colour."""

    def embed(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        return torch.nn.functional.normalize(x, dim=0)


def test_points_near_the_far_edge_of_a_non_square_image_find_themselves():
    # 97 x 203 at size 64 is 31 x 64 pixels: rows scale by 31 / 97, not 64 / 203. With one scale
    # for both axes the query took a pixel up to a whole working row above (row 95 -> 92).
    loaded = LoadedModel(Identity(), PatchKernel(8), 64)  # type: ignore[arg-type]
    image = sphere_field(97, 203)
    points = [(100.0, float(y)) for y in range(90, 97)]
    result = similarity(loaded, image, points, [image], size=64)
    half = 203 / 64 / 2  # half a working pixel, in the image's pixels
    for (x, y), (bx, by) in zip(points, result.best[0], strict=True):
        assert abs(bx - x) <= half and abs(by - y) <= half, ((x, y), (bx, by))


def tiny_run(folder, pretrain: dict | None = None):
    """A small LD run saved in ``folder`` (with ``pretrain`` settings in its config.json)."""
    import json

    torch.manual_seed(0)
    LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)).save(folder)
    if pretrain is not None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "pretrain": pretrain}))
    return folder


def test_images_in_memory_follow_one_rule_uint8_scaled_and_tensors_channels_first(loaded):
    # uint8 was taken as 0-255 floats, and a [C, H, W] tensor as an image 3 pixels high ("query
    # point (3, 4) is outside the 40 x 3 image").
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    expected = similarity(loaded, rgb / np.float32(255), [(3, 4)]).query
    assert np.array_equal(similarity(loaded, rgb, [(3, 4)]).query, expected)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    result = similarity(loaded, chw, [(3, 4)], [chw])
    assert np.array_equal(result.query, expected) and np.array_equal(result.targets[0], expected)
    with pytest.raises(InputError, match=r"target 1 holds values in \[0, 255\]"):
        similarity(loaded, rgb, [(3, 4)], [rgb.astype(np.float32)])


def test_one_point_may_be_given_alone(loaded):
    # "cannot unpack non-iterable int object".
    image = np.random.default_rng(0).random((20, 24, 3), dtype=np.float32)
    one = similarity(loaded, image, (10, 12))
    assert one.points == [(10.0, 12.0)] and one.query.shape == (1, 20, 24)
    assert np.array_equal(one.query, similarity(loaded, image, [(10, 12)]).query)
    assert similarity(loaded, image, np.array([[1, 2], [3, 4]])).points == [(1, 2), (3, 4)]
    for bad in ([], [(1, 2, 3)], "1,2", [(1, float("nan"))]):
        with pytest.raises(InputError, match="points must be"):
            similarity(loaded, image, bad)


def test_an_ld_model_is_taken_with_the_settings_of_its_run(tmp_path):
    # "expected str, bytes or os.PathLike object, not LDModel".
    from localdisc.tasks.similarity import load_model, resolve_model

    run = tiny_run(tmp_path / "run", {"size": 48, "pool_size": 64, "center_sigma": 0.25})
    model = LDModel.from_pretrained(run)
    resolved, loaded = resolve_model(model), load_model(run)
    assert resolved.model is model
    assert (resolved.kernel, resolved.pool_size) == (loaded.kernel, loaded.pool_size)
    assert resolved.kernel == PatchKernel(6, 0.25) and resolved.pool_size == 64
    image = np.random.default_rng(0).random((20, 24, 3), dtype=np.float32)
    by_model = similarity(model, image, [(3, 4)], level="patch").query
    assert np.array_equal(by_model, similarity(run, image, [(3, 4)], level="patch").query)
    # Built in memory, without a run: the settings of a default pre-training.
    from localdisc.engine.pretrain import PretrainConfig

    fresh = resolve_model(LDModel(LDConfig(width=4, dim=8, clusters=4, depth=2)))
    assert fresh.kernel.side == PretrainConfig().size // 8 and fresh.run_dir is None
    with pytest.raises(InputError, match="not int"):
        resolve_model(3)  # type: ignore[arg-type]


def test_a_run_given_as_a_path_is_loaded_on_the_device_asked_for(tmp_path, monkeypatch):
    # similarity() had no device: a run given as a path always ran on the CPU.
    run = tiny_run(tmp_path / "run")
    devices = spy_load_model(monkeypatch)
    image = np.zeros((16, 16, 3), np.float32)
    similarity(run, image, (1, 1), device="cuda:1")
    similarity(str(run), image, (1, 1))
    assert devices == ["cuda:1", "cpu"]


def test_the_similarity_figure_says_what_it_shows(loaded, tmp_path):
    # The figure had no colour bar and no title: a reader could not tell what the colours meant.
    import matplotlib.pyplot as plt

    from localdisc.tasks.similarity import similarity_figure, similarity_plot

    rng = np.random.default_rng(0)
    image = rng.random((30, 40, 3)).astype(np.float32)
    target = rng.random((36, 28, 3)).astype(np.float32)
    result = similarity(loaded, image, [(5, 7), (20.5, 10)], [target], level="patch")
    fig = similarity_plot(result, image, [target], ["a.png", "b.png"])
    heading = fig.get_suptitle().lower()
    assert "cosine similarity" in heading and "patch" in heading and "cyan circle" in heading
    titles = [ax.get_title() for ax in fig.axes]
    assert "a.png\nquery: point 1 (5, 7)" in titles and "a.png\nquery: point 2 (20.5, 10)" in titles
    assert titles.count("b.png") == 2  # each point's map on the target, named by its file
    # The point is marked and labelled on its image.
    assert [t.get_text() for t in fig.axes[0].texts] == ["point 1 (5, 7)"]
    (bar,) = [ax for ax in fig.axes if "cosine similarity" in ax.get_ylabel()]
    assert bar.get_ylim() == pytest.approx((-1, 1))  # the colour range the maps are drawn in
    plt.close(fig)
    # Without names, the images are "query" and "target 1"; no targets, no cyan circles.
    alone = similarity(loaded, image, [(5, 7)])
    fig = similarity_plot(alone, image, [])
    assert "query\nquery: point 1 (5, 7)" in [ax.get_title() for ax in fig.axes]
    assert "pixel" in fig.get_suptitle() and "cyan" not in fig.get_suptitle()
    plt.close(fig)
    written = similarity_figure(result, image, [target], tmp_path / "sim")
    assert written == tmp_path / "sim.png" and written.stat().st_size > 0


def test_a_query_point_outside_names_the_file_and_the_xy_order(loaded, tmp_path):
    # "query point (10.0, 70.0) is outside the 96 x 60 image": which image, and were the
    # numbers given as (row, column)?
    from helpers import save

    save(tmp_path / "a.png", np.zeros((60, 96, 3), np.uint8))
    with pytest.raises(LocaldiscError) as info:
        similarity(loaded, tmp_path / "a.png", [(10, 70)])
    message = str(info.value)
    assert f"query point (10, 70) is outside {tmp_path / 'a.png'} (96 wide, 60 high)" in message
    assert "x is the column, y the row" in message and "(70, 10) would be inside" in message


def test_similarity_cli_prints_how_similar_each_best_match_is(tmp_path):
    # It printed where each point's best match was but not how similar: no number to measure.
    import re

    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app
    from localdisc.tasks.similarity import load_model

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        save(tmp_path / name, (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    base = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.png"),
            "--targets", str(tmp_path / "b.png"), "--out", str(tmp_path / "sim.png"),
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--point", "10,20"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "(x, y) = (column, row)" in output
    found = re.search(r"point \(10, 20\): best match b.png \((\d+), (\d+)\) cosine (-?\d\.\d{3})",
                      output)  # fmt: skip
    assert found, output
    maps = similarity(load_model(tmp_path / "run"), tmp_path / "a.png", [(10, 20)],
                      [tmp_path / "b.png"])  # fmt: skip
    bx, by = maps.best[0][0]
    assert (int(found[1]), int(found[2])) == (bx, by)
    assert float(found[3]) == pytest.approx(maps.targets[0][0][int(by), int(bx)], abs=1e-3)
    # A point outside the query image is refused naming the file, before the model is read.
    result = CliRunner().invoke(app, [*base, "--point", "20,45", "--model", str(tmp_path)])
    assert isinstance(result.exception, LocaldiscError), result.output
    assert f"--point (20, 45) is outside {tmp_path / 'a.png'} (48 wide, 40 high)" in str(
        result.exception
    )
    assert "(45, 20) would be inside" in str(result.exception)


def fundus_on_black(border: int) -> np.ndarray:
    """A generated 64 x 64 fundus photograph on black, 16 pixels above and below it and
    ``16 + border`` left and right (``border`` 24: a 3:2 camera frame, 96 x 144)."""
    from localdisc.data.synthetic import synthetic_fundus

    image = synthetic_fundus(64, seed=3).image
    return np.pad(image, ((16, 16), (16 + border, 16 + border), (0, 0)))


def test_points_round_trip_through_a_crop_and_resize_exactly(loaded):
    from helpers import resized
    from localdisc.data.preprocess import roi_crop
    from localdisc.tasks.similarity import from_resized, to_resized, working_image

    image = fundus_on_black(40)  # 96 x 176: the FOV with its margin is x 42 to 133, y 2 to 93
    small, framing = working_image(loaded, image, 64)
    y0, y1, x0, x1 = framing.box
    assert (y0, y1, x0, x1) == (2, 94, 42, 134)
    # The crop pre-training's pool takes (data.pool: roi_crop), resized.
    np.testing.assert_array_equal(small, resized(roi_crop(image)[0], 64))
    for point in [(x0, y0), (x1 - 1, y1 - 1), (70.3, 50.7), (0.0, 0.0), (175.0, 95.0)]:
        assert framing.from_working(framing.to_working(point)) == pytest.approx(point, abs=1e-9)
        assert from_resized(to_resized(point, (0.3, 0.7), (5, 9)), (0.3, 0.7), (5, 9)) == (
            pytest.approx(point, abs=1e-9)
        )
    # Pixel centres at integer coordinates: the crop's outer corners are the working image's.
    assert framing.to_working((x0 - 0.5, y0 - 0.5)) == pytest.approx((-0.5, -0.5))
    h, w = small.shape[:2]
    assert framing.to_working((x1 - 0.5, y1 - 0.5)) == pytest.approx((w - 0.5, h - 0.5))


def test_a_fundus_photograph_on_wide_black_borders_matches_as_without_them(loaded):
    # Pre-training crops every fundus photograph to its FOV before resizing (data.pool); a 3:2
    # frame resized whole put the retina at another scale than the model knows (a template
    # padded 256 px wider was localised 80-300 px off). Framed alike, both give one crop.
    plain, wide = fundus_on_black(0), fundus_on_black(24)
    points = [(30.0, 40.0), (60.0, 50.0), (48.0, 20.0)]
    a = similarity(loaded, plain, points, [plain, wide])
    b = similarity(loaded, wide, [(x + 24, y) for x, y in points], [plain, wide])
    for p in range(len(points)):
        bx, by = a.best[0][p]
        assert a.best[1][p] == (bx + 24, by)
        assert b.best[0][p] == (bx, by) and b.best[1][p] == (bx + 24, by)
    np.testing.assert_allclose(a.targets[1][..., 24:120], a.targets[0], atol=1e-5)
    np.testing.assert_allclose(b.query[..., 24:120], a.query, atol=1e-5)
    # Outside the crop, the nearest crop pixel's value (the black margin's), on each side.
    from localdisc.tasks.similarity import working_image

    y0, y1, x0, x1 = working_image(loaded, wide, 64)[1].box
    h, w = wide.shape[:2]
    assert min(x0, y0) > 0 and x1 < w and y1 < h  # margins on every side, to fill
    t = a.targets[1]
    np.testing.assert_array_equal(t[..., :x0], t[..., x0 : x0 + 1].repeat(x0, -1))
    np.testing.assert_array_equal(t[..., x1:], t[..., x1 - 1 : x1].repeat(w - x1, -1))
    np.testing.assert_array_equal(t[..., :y0, :], t[..., y0 : y0 + 1, :].repeat(y0, -2))
    np.testing.assert_array_equal(t[..., y1:, :], t[..., y1 - 1 : y1, :].repeat(h - y1, -2))
    # frame_fundus=False resizes them whole, as before (benchmarks/fundus_framing.py's baseline).
    import dataclasses

    whole = dataclasses.replace(loaded, frame_fundus=False)
    assert loaded.frames_fov and not whole.frames_fov
    c = similarity(whole, plain, points, [plain, wide])
    assert any(c.best[1][p] != (x + 24, y) for p, (x, y) in enumerate(c.best[0]))


def test_radiographs_are_resized_whole_not_framed():
    from helpers import resized
    from localdisc.tasks.similarity import working_image

    torch.manual_seed(0)
    xray = LDModel(LDConfig(modality="xray", width=4, dim=8, clusters=4, depth=2)).eval()
    loaded = LoadedModel(xray, PatchKernel(8), 64)
    image = np.pad(np.random.default_rng(0).random((48, 40, 1)), ((0, 0), (30, 30), (0, 0)))
    small, framing = working_image(loaded, image, 64)
    assert framing.box == (0, 48, 0, 100)
    np.testing.assert_array_equal(small, resized(image, 64))


def test_a_strip_thinner_than_a_working_pixel_keeps_one(loaded):
    # A 2 x 300 strip at 64 px rounded its short side to 0 pixels: the resize failed (ValueError
    # "output size must be positive"); the viewer, which shows it 1 px high, then failed on it
    # too once it embedded every image at the working size, as `similarity` does.
    from localdisc.tasks.similarity import resized_shape

    assert resized_shape((2, 300), 64) == ((1, 64), (64 / 300, 1 / 2))
    strip = np.random.default_rng(0).random((2, 300, 3)).astype(np.float32)
    result = similarity(loaded, strip, [(150, 1)], [strip])
    assert result.query.shape == result.targets[0].shape == (1, 2, 300)
    assert abs(result.best[0][0][0] - 150) <= 300 / 64  # within a working pixel


def test_similarity_cli_says_an_exif_turn_is_not_applied(tmp_path):
    # The query point of a phone photograph taken in a viewer that turns it is in another frame.
    from PIL import Image
    from typer.testing import CliRunner

    from localdisc.cli import app

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    rng = np.random.default_rng(0)
    for name, orientation in (("a.jpg", 1), ("b.jpg", 8)):
        im = Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8))
        exif = im.getexif()
        exif[274] = orientation
        im.save(tmp_path / name, exif=exif)
    args = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.jpg"),
            "--point", "10,20", "--targets", str(tmp_path / "b.jpg"),
            "--out", str(tmp_path / "sim.png"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "1 image(s) carry an EXIF orientation that localdisc does not apply" in output
    assert "b.jpg, 8: viewers show it turned 90 degrees anticlockwise" in output


def test_similarity_cli_names_dim_images(tmp_path):
    # 12-bit data in a 16-bit PNG reads as 0 to 1/16: the network sees it near black (reviewer).
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    rng = np.random.default_rng(0)
    save(tmp_path / "a.png", (rng.random((40, 48)) * 255).astype(np.uint8))
    save(tmp_path / "b.png", (rng.random((40, 48)) * 4095).astype(np.uint16))
    args = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.png"),
            "--point", "10,20", "--targets", str(tmp_path / "b.png"),
            "--out", str(tmp_path / "sim.png"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "note: 1 image(s) use under 1/8 of the intensity range (b.png)" in output


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.5])
def test_the_center_sensitive_kernel_is_the_one_of_pre_training(sigma):
    # Guards the inference Gaussian against the training one: a patch's weights are
    # losses.patch.center_weights for one cell of the kernel's side (sigma times the side), over
    # an even side rounded to the next odd one (a kernel centred on a pixel) with the width of
    # the cell trained on: sigma times 9 px for a side of 8 made it 2.25 px, not 2. Twice as
    # wide a Gaussian at inference (a reviewer's mutation) passed the search tests unnoticed.
    from localdisc.losses.patch import center_weights

    for side in (3, 5, 9, 13, 33):  # odd: the same pixels, the same weights
        got = PatchKernel(side, sigma).weights()
        assert torch.allclose(got, center_weights(1, side, sigma)[0], atol=1e-6), side
    for side, scale in ((8, 1.0), (64, 1.0), (8, 2.0), (12, 0.25)):  # 9, 65, 17, 3 pixels
        odd = max(1, round(side * scale)) | 1
        got = PatchKernel(side, sigma).weights(scale)
        pos = torch.arange(odd) - odd // 2
        want = torch.exp(-0.5 * (pos / (sigma * side * scale)) ** 2)
        assert torch.allclose(got, want / want.sum(), atol=1e-6), (side, scale)
    # Uniform pooling: equal weights over the same odd side.
    assert torch.allclose(PatchKernel(8).weights(), torch.full((9,), 1 / 9))


def test_another_program_s_figures_json_is_left_as_it_is(tmp_path):
    # similarity --out paper/sim.png rewrote paper/figures.json (a manuscript's list of
    # figures): its record is localdisc-figures.json now, and one of that name not its own is
    # refused, untouched (reviewer).
    from typer.testing import CliRunner

    from helpers import save
    from localdisc.cli import app

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    save(tmp_path / "a.png", (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8))
    paper = tmp_path / "paper"
    paper.mkdir()
    theirs = '{"figures": [{"file": "fig1.pdf"}], "version": 2}'
    (paper / "figures.json").write_text(theirs)
    args = ["similarity", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "a.png"),
            "--point", "10,20", "--out", str(paper / "sim.png"), "--device", "cpu"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (paper / "figures.json").read_text() == theirs
    (paper / "localdisc-figures.json").write_text(theirs)
    result = CliRunner().invoke(app, [*args[:-3], str(paper / "other.png"), "--device", "cpu"])
    assert "not the record of figures this package writes" in str(result.exception)
    assert (paper / "localdisc-figures.json").read_text() == theirs
