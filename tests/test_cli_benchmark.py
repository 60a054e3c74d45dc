"""The benchmark commands' comma-separated options."""

from __future__ import annotations

import pytest

from localdisc import cli

RUNS = {
    "transfer": "localdisc.tasks.benchmark_transfer.run_benchmark",
    "localize": "localdisc.tasks.benchmark_localize.run_localize_benchmark",
    "shape-guided": "localdisc.tasks.benchmark_shape_guided.run_shape_benchmark",
    "pretrain-methods": "localdisc.tasks.benchmark_methods.run_methods_benchmark",
}


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("transfer", "--tasks", ""),
        ("transfer", "--labels", ""),
        ("transfer", "--inits", " , "),
        ("localize", "--models", ""),
        ("localize", "--tasks", ","),
        ("shape-guided", "--tasks", ""),
        ("shape-guided", "--priors", ""),
        ("pretrain-methods", "--methods", ""),
        ("pretrain-methods", "--tasks", ""),
        ("pretrain-methods", "--labels", " "),
    ],
)
def test_an_empty_list_is_refused_not_taken_for_the_default(
    tmp_path, monkeypatch, capsys, command, option, value
):
    # `--tasks ""` was read as no --tasks: the whole default benchmark ran.
    def run(*args, **kwargs):
        raise AssertionError(f"benchmark {command} ran with {option} {value!r}")

    monkeypatch.setattr(RUNS[command], run)
    out = tmp_path / "out"
    argv = ["localdisc", "benchmark", command, option, value, "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {option} is empty: give comma-separated values, or leave it out" in err
    assert not out.exists()
