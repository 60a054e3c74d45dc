import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.predict import collect_images


def test_collect_images_names_outputs_uniquely(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    save(tmp_path / "a" / "x.png", rgb)
    save(tmp_path / "a" / "sub" / "x.png", rgb)
    save(tmp_path / "a" / "masks" / "x.png", rgb)  # a mask folder is not an input
    single = save(tmp_path / "y.jpg", rgb)
    found = collect_images([tmp_path / "a", single])
    assert [name for name, _ in found] == ["sub_x", "x", "y"]  # sorted by path
    with pytest.raises(LocaldiscError, match="several inputs"):
        collect_images([tmp_path / "a" / "x.png", tmp_path / "a"])
    with pytest.raises(LocaldiscError, match="no such file"):
        collect_images([tmp_path / "missing.png"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(LocaldiscError, match="notes.txt: not an image"):
        collect_images([tmp_path / "notes.txt"])


def test_predict_cli_segments_images_at_their_own_size(tmp_path):
    Segmenter(modality="fundus", size=32).save(tmp_path / "model")
    save(tmp_path / "in" / "eye.png", np.full((37, 51, 3), 120, np.uint8))
    save(tmp_path / "in" / "grey.tif", np.full((20, 24), 50, np.uint8))
    result = CliRunner().invoke(
        app,
        ["predict", "--model", str(tmp_path / "model"), "--images", str(tmp_path / "in"),
         "--out", str(tmp_path / "out"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(tmp_path / "out" / "eye_mask.png").size == (51, 37)
    assert Image.open(tmp_path / "out" / "grey_prob.png").size == (24, 20)
    mask = np.asarray(Image.open(tmp_path / "out" / "eye_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
