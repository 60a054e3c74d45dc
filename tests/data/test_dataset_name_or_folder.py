"""A folder of one's own named as a supported data set (``hrf/``, ``DRIVE/``) given bare."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.data.datasets import DatasetError, load_data_spec


def test_a_bare_data_set_name_that_is_also_a_folder_here_says_how_to_give_the_folder(
    tmp_path, monkeypatch
):
    """`localdisc datasets inspect hrf` in a directory holding the photographs in hrf/ said
    only "hrf needs a ROOT folder (hrf:ROOT)", as if the folder were not there."""
    save(tmp_path / "DRIVE" / "a.png", np.full((20, 24, 3), 120, np.uint8))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as error:
        load_data_spec("DRIVE")
    message = str(error.value)
    assert message.startswith("drive needs a ROOT folder (drive:ROOT)")
    assert "the folder DRIVE here: drive:DRIVE reads it in the drive layout" in message
    assert "./DRIVE reads it as a folder of your own" in message
    result = CliRunner().invoke(app, ["datasets", "inspect", "./DRIVE", "--json"])
    assert result.exit_code == 0, result.output
    assert '"images": 1' in result.output
    (tmp_path / "DRIVE" / "a.png").unlink()
    (tmp_path / "DRIVE").rmdir()
    with pytest.raises(DatasetError) as error:  # no such folder: no such hint
        load_data_spec("drive")
    assert "here" not in str(error.value)
