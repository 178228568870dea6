"""The command line itself: version, usage errors, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

from splitcli import __version__, demo, servers
from splitcli.cli.common import servers_in_use, starting_status
from splitcli.errors import ServerError
from splitcli.profiles import load_profile
from splitcli.trace import Segment, Trace


def test_version() -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"splitreason {__version__}"


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "grade"], "error: Missing argument 'gold' (see python -m splitcli eval grade --help)"),
    (["logs", "demo-small", "-n", "-3"], "error: Invalid value for '--lines' / '-n': Input should be greater than "
                                         "or equal to 0 (see python -m splitcli logs --help)"),
    (["run", "--bogus"], "error: No such option: --bogus (see python -m splitcli run --help)"),
])
def test_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)  # (as `splitreason`, the hint names `splitreason ... --help`)
    assert (result.code, result.err.strip(), result.out) == (2, message, "")


def test_a_negative_gold_answer_is_a_value_not_an_option() -> None:
    result = cli("eval", "grade", "-5", "\\boxed{-5}", "--json")
    assert result.code == 0 and result.json() == {"correct": True, "extracted": "-5",
                                                  "reason": "equal to the gold answer (Math-Verify)"}


def test_help_lists_the_commands() -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("serve", "ps", "stop", "logs", "kill-gpus", "run", "show", "modes", "profiles", "demo"):
        assert command in result.out


COMMANDS = [["serve"], ["ps"], ["stop"], ["logs"], ["kill-gpus"], ["run"], ["show"], ["modes"], ["profiles", "list"],
            ["profiles", "show"], ["profiles", "validate"], ["demo", "build"], ["demo", "questions"], ["eval"],
            ["eval", "grade"], ["eval", "compare"], ["pad-vocab"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_an_example_and_readable_help(command: list[str]) -> None:
    result = cli(*command, "-h", env={"COLUMNS": "120"})
    assert result.code == 0, result.err
    assert "Example: splitreason " + " ".join(command) in " ".join(result.out.split())
    for machine_word in ("<bool>", "<str>", "<list[str]>", "<int>", "<path>"):
        assert machine_word not in result.out


def test_help_lists_the_choices_of_mode_and_only() -> None:
    run = " ".join(cli("run", "-h", env={"COLUMNS": "260"}).out.split())
    assert ("Mode to run: big-only, glimprouter, logprob-subselect, random-switch, relaygen, small-only, "
            "spec-decoding, spec-rewrite, specreason, speculative-thinking, splitreason, splitreason-stream") in run
    serve = " ".join(cli("serve", "-h", env={"COLUMNS": "200"}).out.split())
    assert "Start only these servers: small, big, spec" in serve


@pytest.mark.parametrize(("args", "message"), [
    (["stop", "[/]"], "error: no server named '[/]' (running: none; see `splitreason ps`)"),
    (["profiles", "validate", "[/]"], "error: [/]: no such file (give the path to a YAML profile)"),
    (["show", "trace[v2].jsonl"], "error: trace[v2].jsonl: no such file (give a JSONL file written by "
                                  "`splitreason run --save`)"),
    (["logs", "x", "-n", "-1"], None),
])
def test_user_text_is_never_read_as_markup(args: list[str], message: str | None, tmp_path: Path) -> None:
    result = cli(*args, env={"SPLITREASON_HOME": str(tmp_path / "home")})
    assert result.code == 2
    assert "Traceback" not in result.err
    if message is not None:
        assert result.err.strip() == message


def _saved(tmp_path: Path, lines: list[str]) -> Path:
    file = tmp_path / "t.jsonl"
    file.write_text("\n".join(lines) + "\n")
    return file


def _trace_line(**changes: object) -> str:
    trace = Trace(question="Is [a, b] a [bold]pair[/bold]?", mode="splitreason", profile="demo",
                  models={"small": "s", "big": "b"})
    trace.segments = [Segment("small", "x [y] <bigmodel>", [1, 2]), Segment("big", "[big] z", [3])]
    trace.wall_seconds = 1.0
    data = trace.to_dict()
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(("lines", "message"), [
    (["[1, 2]"], "line 1: not a splitreason trace: a trace is a JSON object, this line holds a list"),
    (['"hello"'], "line 1: not a splitreason trace: a trace is a JSON object, this line holds a str"),
    (["{not json"], "line 1: not JSON (give a JSONL file written by `splitreason run --save`)"),
    (["", _trace_line(version=7)], "line 2: not a splitreason trace: trace version 7 is not supported: splitreason "
                                   f"{__version__} reads versions 1, 2, 3, 4 (use the splitreason that wrote it)"),
    ([_trace_line(colour="red")], "line 1: not a splitreason trace: unknown field 'colour' (written by a newer "
                                  f"splitreason? this is splitreason {__version__}, trace version 4)"),
    ([_trace_line(wall_seconds="slow")], "line 1: not a splitreason trace: wall_seconds: Input should be a valid "
                                         "number, unable to parse string as a number"),
])
def test_show_on_what_is_not_a_trace_is_one_line(tmp_path: Path, lines: list[str], message: str) -> None:
    file = _saved(tmp_path, lines)
    result = cli("show", str(file))
    assert result.code == 2
    assert result.err.strip() == f"error: {file}: {message}"


def test_show_on_binary_data_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    result = cli("show", str(file))
    assert result.code == 2
    assert result.err.strip() == f"error: {file}: not a text file (give a JSONL file written by `splitreason run --save`)"


def test_show_keeps_brackets_in_questions_and_model_text(tmp_path: Path) -> None:
    file = _saved(tmp_path, [_trace_line(), _trace_line()])
    result = cli("show", str(file), env={"NO_COLOR": "1"})
    assert result.code == 0, result.err
    assert "Is [a, b] a [bold]pair[/bold]?" in result.err
    assert "x [y] <bigmodel>[big][big] z[/big]" in result.out
    shown = cli("show", str(file), "--json").json()
    assert isinstance(shown, list) and len(shown) == 2  # one JSON shape: an array, whatever the count
    one = cli("show", str(_saved(tmp_path, [_trace_line()])), "--json").json()
    assert isinstance(one, list) and len(one) == 1


def test_debug_variable_set_to_zero_keeps_tracebacks_off() -> None:
    result = cli("stop", "nope", env={"SPLITREASON_DEBUG": "0"})
    assert result.code == 2 and "Traceback" not in result.err
    shown = cli("stop", "nope", env={"SPLITREASON_DEBUG": "1"})
    assert shown.code != 0 and "Traceback" in shown.err


def test_demo_build_names_the_pairs_it_knows() -> None:
    result = cli("demo", "build", "--pair", "nope")
    assert result.code == 2 and result.out == ""
    assert result.err.strip().splitlines()[-1] == "error: --pair nope: no such demo pair (use one of: demo, demo-qwen3)"


def test_show_on_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    result = cli("show", str(tmp_path))
    assert (result.code, result.err.strip()) == (
        2, f"error: {tmp_path}: a folder, not a file (give a JSONL file written by `splitreason run --save`)")


def test_usage_lines_name_arguments_as_posix_does() -> None:
    lines = {" ".join(command): cli(*command, "-h", env={"COLUMNS": "120"}).out for command in (["show"], ["run"])}
    assert "show [OPTIONS] FILE" in lines["show"] and "{file}" not in lines["show"]
    assert "run [OPTIONS] [QUESTION]" in lines["run"]


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source_lines() -> None:
    lines = [line.strip() for line in cli("kill-gpus", "-h", env={"COLUMNS": "200"}).out.splitlines()]
    assert ("--json prints one object: {dry_run, plan: {gpus, nvml, servers, orphans, foreign}, ended, survived, gpus, "
            "gpu_check}; a dry run ends nothing, so `ended` is empty there.") in lines


def test_a_first_run_builds_the_demo_models_before_it_says_servers_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPLITREASON_HOME", str(tmp_path / "fresh-home"))

    def quick_build(pair: str) -> Path:  # the real build takes a minute; only its place in the output matters
        for role in demo.SHAPES:
            (demo.demo_root(pair) / role).mkdir(parents=True, exist_ok=True)
            (demo.demo_root(pair) / role / "config.json").write_text("{}")
        return demo.demo_root(pair)

    def no_launch(*args: object, **kwargs: object) -> None:
        raise ServerError("not launched in this test")

    monkeypatch.setattr(demo, "build_pair", quick_build)
    monkeypatch.setattr(servers.ServerUse, "start", no_launch)
    with pytest.raises(ServerError), servers_in_use(load_profile("demo"), ("small", "big")):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["· building the tiny demo models (first use, seconds on CPU)",
                     "· starting demo-small, demo-big (not running; stopped again afterwards unless --keep)"]


def test_on_a_pipe_a_server_start_says_a_line_now_and_then(capsys: pytest.CaptureFixture[str]) -> None:
    with starting_status(every=0.0) as tick:  # on a terminal a spinner shows it; a pipe gets lines
        tick("waiting for demo-small (15s)")
    assert capsys.readouterr().err == "· waiting for demo-small (15s)\n"
