import json

import pytest
from typer.testing import CliRunner

from localdisc.cli import app
from localdisc.tasks.benchmark_methods import parse_pool


def test_quick_comparison_pretrains_every_method_and_tabulates(tmp_path):
    out = tmp_path / "m"
    args = ["benchmark", "pretrain-methods", "--quick", "--out", str(out),
            "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["pretraining"]) == {
        f"{m} (fundus)" for m in ("ld", "simclr", "densecl", "pixpro", "genesis")
    }
    assert all(r["steps"] == 4 for r in summary["pretraining"].values())
    rows = set(summary["transfer"]["dice"])
    assert {"random", "ld", "simclr", "densecl", "pixpro", "genesis"} <= rows
    assert {"ld (frozen)", "genesis (frozen)"} <= rows
    report = (out / "results.md").read_text()
    assert "| simclr (fundus) | 4 |" in report and "# Transfer benchmark" in report
    again = CliRunner().invoke(app, args)  # everything is reused
    assert again.exit_code == 0 and again.output.count("reusing") >= 5 + 6


def test_pools_name_their_modality():
    assert parse_pool("xray=/data/cxr") == ("xray", "/data/cxr")
    assert parse_pool("jsrt_scr:/data") == ("xray", "jsrt_scr:/data")
    assert parse_pool("KaggleDR/images") == ("fundus", "KaggleDR/images")


def test_unknown_methods_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "pretrain-methods", "--quick", "--methods",
                                      "ld,moco", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code != 0 and "moco" in str(result.exception)


def test_a_pool_is_required_outside_quick(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "pretrain-methods", "--out", str(tmp_path)])
    assert result.exit_code != 0
    with pytest.raises(Exception, match="pool"):
        raise result.exception


def test_bad_transfer_settings_are_refused_before_any_pretraining(tmp_path):
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark

    config = MethodsBenchmarkConfig(methods=["ld"], quick=True, transfer={"size": 40})
    with pytest.raises(LocaldiscError, match="multiple of 16"):
        run_methods_benchmark(config, tmp_path, log=lambda m: None)
    assert not (tmp_path / "pretrain").exists()
