"""Tests for localdisc.eval.figures: what the pre-training figures say (titles, colour keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from localdisc.engine.monitor import write_figures
from localdisc.eval.figures import (
    cluster_colours,
    cluster_figure,
    cluster_plot,
    similarity_figure,
    similarity_plot,
)
from localdisc.models.ld import LDConfig, LDModel


@pytest.fixture(scope="module")
def model() -> LDModel:
    torch.manual_seed(0)
    return LDModel(LDConfig(width=4, depth=2, dim=8, clusters=5)).eval()


def images(n: int = 2, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((size, size, 3)).astype(np.float32) for _ in range(n)]


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


@pytest.fixture(autouse=True)
def close_figures():
    """The ``*_plot`` functions return open figures; close them as a caller would."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_similarity_plot_says_what_it_shows_with_a_colour_bar(model: LDModel) -> None:
    fig = similarity_plot(model, images(), names=["val 1 of 9", "val 2 of 9"], step=1200)
    heading = fig.get_suptitle()
    assert "cosine similarity" in heading.lower() and "step 1200" in heading
    assert "val 1 of 9\nquery: centre" in titles(fig)
    assert titles(fig).count("val 2 of 9") == 3  # one per query row
    # The colour bar: labelled, over the whole range of a cosine.
    (bar,) = [ax for ax in fig.axes if "cosine similarity" in ax.get_ylabel()]
    assert bar.get_ylim() == pytest.approx((-1, 1))


def test_similarity_figure_defaults_and_file(model: LDModel, tmp_path: Path) -> None:
    fig = similarity_plot(model, images())
    assert "image 1" in titles(fig) and "step" not in fig.get_suptitle()
    # plain()'s own example: read as mathtext, "$a_b_c$" is a double subscript and fails to draw.
    # ("a$b$" is valid mathtext, drawn with or without the escape.)
    path = similarity_figure(
        model, images(), tmp_path / "figs" / "sim.png", names=["scan_$a_b_c$", "c"]
    )
    assert path.is_file() and path.stat().st_size > 0  # a $ is no mathtext error
    with pytest.raises(ValueError, match="1 names for 2 images"):
        similarity_plot(model, images(), names=["only one"])


def test_cluster_plot_names_each_row_and_keys_the_colours(model: LDModel) -> None:
    fig = cluster_plot(model, images(3), names=["x", "y", "z"], step=7)
    assert "cluster" in fig.get_suptitle() and "K=5" in fig.get_suptitle()
    assert "step 7" in fig.get_suptitle()
    assert {"x", "y", "z"} <= set(titles(fig))
    (key,) = [ax for ax in fig.axes if ax.get_xlabel().startswith("cluster")]
    assert [t.get_text() for t in key.get_xticklabels()] == ["0", "1", "2", "3", "4"]


def test_pretraining_figures_carry_the_step_and_names(model: LDModel, tmp_path: Path) -> None:
    pool = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    names = [f"validation image {i + 1}" for i in range(5)]
    write_figures(model, pool, tmp_path, 40, clusters=True, names=names)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clusters_00000040.png",
        "similarity_00000040.png",
    ]
    write_figures(model, pool[:2], tmp_path, 41, clusters=False)  # names are optional
    assert (tmp_path / "similarity_00000041.png").is_file()
    assert cluster_figure(model, images(1), tmp_path / "c.png").is_file()


def test_cluster_colours_stay_apart_for_many_clusters() -> None:
    # hsv beyond 20 clusters wrapped round: cluster 0 and 31 were the same red (0.09 apart in
    # RGB), and neighbours were 0.13 apart.
    colours = cluster_colours(32)
    assert colours.shape == (32, 3) and colours.min() >= 0 and colours.max() <= 1
    apart = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    np.fill_diagonal(apart, np.inf)
    assert apart.min() > 0.15  # every pair, neighbours included
    assert np.linalg.norm(colours[0] - colours[-1]) > 0.3
    # A cluster keeps its colour whatever K is (tab20 below 21 clusters, hsv above, did not).
    np.testing.assert_array_equal(cluster_colours(16), colours[:16])
    assert len(np.unique(cluster_colours(64), axis=0)) == 64


def test_row_titles_clear_the_panel_above(model: LDModel) -> None:
    # One tight_layout pass left the second row's title over the first row's image.
    from localdisc.eval.figures import _layout

    fig = cluster_plot(model, images(2, 64), names=["first", "second"])
    _layout(fig)
    fig.canvas.draw()  # places the titles and fits the images' aspect
    renderer = fig.canvas.get_renderer()
    above, below = fig.axes[0], fig.axes[3]
    assert below.get_title() == "second"
    title = below.title.get_window_extent(renderer)
    assert title.y1 <= above.get_window_extent(renderer).y0


def test_similarity_plot_labels_the_query_on_its_image(model: LDModel) -> None:
    fig = similarity_plot(model, images(), [(1, 4, 5, "vessel")], names=["a", "b"])
    image_panel = fig.axes[0]
    assert image_panel.get_title() == "b\nquery: vessel"
    assert [t.get_text() for t in image_panel.texts] == ["vessel"]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The images each saved figure draws, panel by panel (``*_figure`` clears its figure)."""
    from localdisc.eval import figures

    shown: list = []
    real_save = figures._save

    def save(fig, path):
        shown.extend(im for ax in fig.axes for im in ax.images)
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    return shown


def test_a_grey_image_is_drawn_alike_alone_and_under_its_masks(tmp_path: Path, drawn) -> None:
    # A 12-bit radiograph stored in 16 bits fills [0, 0.06] of [0, 1]: its panel was stretched
    # by imshow, while the overlay beside it blended the raw values, nearly black.
    from localdisc.eval import figures

    xray = np.linspace(0, 4095 / 65535, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
    none = np.zeros((32, 32), bool)
    figures.overlay_figure([("xray", xray, none, None)], tmp_path / "overlay.png")
    alone, under = (np.asarray(im.get_array(), np.float32) for im in drawn)
    assert alone.shape == under.shape == (32, 32, 3)
    np.testing.assert_allclose(alone, under, atol=1e-6)  # no mask: the image itself
    assert alone.min() == 0 and alone.max() == 1  # stretched to its own range
    np.testing.assert_array_equal(figures.display_rgb(np.full((4, 4, 1), 0.3)), 0)  # constant
    colour = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32) * 0.1
    np.testing.assert_array_equal(figures.display_rgb(colour), colour)  # colour: as it is


def test_overlay_draws_hits_green_false_positives_red_and_misses_blue(tmp_path: Path, drawn):
    # overlay_figure's docstring and panel title: "green: hit, red: false positive, blue: missed".
    from localdisc.eval import figures

    grey = np.full((8, 8, 3), 0.5, np.float32)
    pred, ref = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    pred[0, 0] = ref[0, 0] = True  # hit
    pred[1, 1] = True  # false positive
    ref[2, 2] = True  # miss
    figures.overlay_figure([("x", grey, pred, ref)], tmp_path / "overlay.png")
    overlay = np.asarray(drawn[1].get_array(), np.float32)
    # 0.7 of the colour over 0.3 of the grey 0.5; the miss's blue is (0, 0.4, 1).
    expected = {
        (0, 0): (0.15, 0.85, 0.15),  # hit: green
        (1, 1): (0.85, 0.15, 0.15),  # false positive: red
        (2, 2): (0.15, 0.43, 0.85),  # miss: blue
        (5, 5): (0.5, 0.5, 0.5),  # neither: the image as it is
    }
    for (y, x), rgb in expected.items():
        np.testing.assert_allclose(overlay[y, x], rgb, atol=1e-5, err_msg=f"pixel {(y, x)}")


def test_mask_grid_draws_a_probability_on_the_scale_0_to_1(tmp_path: Path, drawn) -> None:
    # A map that never passes 0.3 is an unsure one: stretched to its own range it looked white.
    from localdisc.eval import figures

    prob = np.linspace(0, 0.3, 64, dtype=np.float32).reshape(8, 8)
    figures.mask_grid([("x", images(1, 8)[0], {"A prob": prob})], tmp_path / "grid.png")
    assert drawn[1].get_clim() == (0, 1)


def test_the_cluster_map_paints_each_pixel_in_its_most_likely_cluster() -> None:
    from localdisc.eval.figures import cluster_map_rgb

    likely = np.array([[0, 1], [2, 3]])
    assignments = torch.full((4, 2, 2), 0.1 / 3)
    for (y, x), k in np.ndenumerate(likely):
        assignments[k, y, x] = 0.9
    np.testing.assert_array_equal(cluster_map_rgb(assignments), cluster_colours(4)[likely])


def test_cluster_colours_beyond_tab10_are_neither_near_black_nor_near_white() -> None:
    # _glasbey_colours: "Neither near black nor near white: the colours must stand out on dark
    # and bright tissue" (CIELAB lightness between 35 and 90).
    from skimage.color import rgb2lab

    lightness = rgb2lab(cluster_colours(32)[None])[0][10:, 0]
    assert lightness.min() > 35 and lightness.max() < 90


def test_a_querys_own_map_is_1_at_the_query_on_a_non_square_image(model: LDModel) -> None:
    # Queries are (image, row, column): the map is of the embedding at [:, row, column].
    image = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    for y, x in [(4, 20), (4, 40)]:  # off the diagonal; the second beyond the height
        fig = similarity_plot(model, [image], [(0, y, x, "q")])
        own = np.asarray(fig.axes[1].images[0].get_array())
        assert own.shape == (32, 48)
        assert own[y, x] == pytest.approx(1, abs=1e-5)  # a pixel's cosine with itself


def test_the_cyan_circle_marks_the_most_similar_pixel_of_another_image() -> None:
    from localdisc.eval.figures import similarity_maps_plot

    blank = [np.zeros((16, 16, 3), np.float32)] * 2
    sim = np.zeros((16, 16), np.float32)
    sim[3, 12] = 1.0  # best at row 3, column 12
    fig = similarity_maps_plot(blank, [(0, 8, 8, "q")], [[sim, sim]], title="t")
    (circle,) = fig.axes[2].lines  # the map on image 1
    assert (circle.get_ydata()[0], circle.get_xdata()[0]) == (3, 12)
    assert circle.get_markeredgecolor() == "cyan"


def test_a_figure_that_fails_to_write_leaves_the_earlier_one_whole(tmp_path: Path, monkeypatch):
    from matplotlib.figure import Figure

    from localdisc.eval import figures

    path = figures.overlay_figure([("a", images(1)[0], np.ones((32, 32), bool), None)],
                                  tmp_path / "overlay.png")  # fmt: skip
    before = path.read_bytes()

    def full_disk(self, target, **kwargs):
        if isinstance(target, str | Path):  # written in place, as before
            Path(target).write_bytes(b"\x89PNG")
        else:
            target.write(b"\x89PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        figures.overlay_figure([("a", images(1)[0], np.zeros((32, 32), bool), None)], path)
    assert path.read_bytes() == before


def test_figures_leave_a_notebooks_matplotlib_backend_alone(tmp_path: Path) -> None:
    # matplotlib.use("Agg") in every figure switched a notebook's inline backend: its later
    # plots showed nothing (reviewer). Run apart: the backend is the process's.
    import subprocess
    import sys

    probe = (
        "import matplotlib; matplotlib.use('pdf'); import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "from localdisc.eval.figures import similarity_figure\n"
        "from localdisc.models.ld import LDConfig, LDModel\n"
        "model = LDModel(LDConfig(width=4, depth=2, dim=8, clusters=4))\n"
        "image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)\n"
        f"similarity_figure(model, [image], {str(tmp_path / 's.png')!r})\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["pdf", "0"], done.stderr
    assert (tmp_path / "s.png").stat().st_size > 0
