"""The command line's errors: one line and status 2 for bad input, status 1 and a hint for the unexpected, the
traceback with --debug or SPECKV_DEBUG=1."""

from __future__ import annotations

import pytest
import typer

from speckv_hf.cli import app, main
from speckv_hf.predictor.loading import PredictorLoadError

ERRORS = {
    "value": ValueError("bad value: pass a good one"),
    "type": TypeError("wrong type: pass an int"),
    "missing": FileNotFoundError("no such folder: /x. Pass a folder"),
    "extra": ImportError("plots need matplotlib: pip install matplotlib."),
    "predictor": PredictorLoadError("cannot read model.safetensors: save it again"),
    "lines": ValueError("first line\n  second line"),
    "markup": ValueError("hidden_sizes [bold]not[/bold] [32, 32]"),
    "internal": RuntimeError("boom"),
}


@pytest.fixture
def raising_command():
    """A `speckv raise KIND` subcommand that raises `ERRORS[KIND]`, registered for one test."""

    def raise_(kind: str = typer.Argument(...)) -> None:
        raise ERRORS[kind]

    app.command("raise")(raise_)
    yield
    app.registered_commands.pop()


def run(capsys, monkeypatch, *args: str, env_debug: str | None = None) -> tuple[int, str, str]:
    """Runs `speckv ARGS` through the console-script entry point; returns the status, stdout and stderr."""
    if env_debug is None:
        monkeypatch.delenv("SPECKV_DEBUG", raising=False)
    else:
        monkeypatch.setenv("SPECKV_DEBUG", env_debug)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("value", "error: bad value: pass a good one"),
        ("type", "error: wrong type: pass an int"),
        ("missing", "error: no such folder: /x. Pass a folder"),
        ("extra", "error: plots need matplotlib: pip install matplotlib."),
        ("predictor", "error: cannot read model.safetensors: save it again"),
        ("lines", "error: first line second line"),
        ("markup", "error: hidden_sizes [bold]not[/bold] [32, 32]"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, monkeypatch, raising_command, kind, line):
    status, out, err = run(capsys, monkeypatch, "raise", kind)
    assert (status, out, err.splitlines()) == (2, "", [line])


def test_unexpected_error_is_status_1_with_a_hint(capsys, monkeypatch, raising_command):
    status, _, err = run(capsys, monkeypatch, "raise", "internal")
    assert status == 1
    assert err.splitlines()[0] == "error: RuntimeError: boom"
    assert "rerun with --debug" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "env_debug"), [(("--debug",), None), ((), "1"), ((), "true")])
@pytest.mark.parametrize(("kind", "status"), [("value", 2), ("internal", 1)])
def test_debug_prints_the_traceback(capsys, monkeypatch, raising_command, args, env_debug, kind, status):
    got, _, err = run(capsys, monkeypatch, *args, "raise", kind, env_debug=env_debug)
    assert got == status
    assert err.startswith("Traceback (most recent call last):") and "in raise_" in err
    assert err.splitlines()[-1].startswith("error: ") and "rerun with --debug" not in err


def test_debug_off_in_the_environment(capsys, monkeypatch, raising_command):
    _, _, err = run(capsys, monkeypatch, "raise", "value", env_debug="0")
    assert "Traceback" not in err


def test_missing_model_folder_is_one_line(capsys, monkeypatch):
    status, _, err = run(capsys, monkeypatch, "bench", "--target", "/missing-target", "--draft", "./missing-draft")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(
        "error: no such folder: /missing-target. Pass a model folder written by save_pretrained"
    )


def test_missing_draft_folder_is_named_before_any_model_loads(monkeypatch, tmp_path):
    import transformers

    from speckv_hf.bench.pairs import load_pair_for

    def no_load(*args, **kwargs):
        raise AssertionError("no model may load before the paths are checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no such folder: \./draft \(resolved to .*draft\)\. Pass a model"):
        load_pair_for("fp32", target="target", draft="./draft", device="cpu")


def test_missing_predictor_folder_in_bench_methods_is_one_line(capsys, monkeypatch):
    status, _, err = run(capsys, monkeypatch, "bench", "--methods", "speckv@/missing/predictor")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert "no such folder: /missing/predictor" in lines[0]


def test_a_bad_method_setting_is_one_line_before_any_model_loads(capsys, monkeypatch):
    # The comma inside the brackets belongs to the method: the error names the setting, not a method "guess_floor".
    spec = "fixed:2,context+adaptive[max_guesses=0,guess_flor=0.5]"
    status, _, err = run(capsys, monkeypatch, "bench", "--methods", spec)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert "context+adaptive[max_guesses=0,guess_flor=0.5]" in lines[0] and "guess_flor" in lines[0]


def test_usage_errors_and_success_keep_their_status(capsys, monkeypatch):
    assert run(capsys, monkeypatch, "bench", "--no-such-option")[0] == 2
    status, out, _ = run(capsys, monkeypatch, "--debug", "--version")
    assert status == 0 and out.startswith("speckv-hf ")
