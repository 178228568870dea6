"""The command line itself: version, usage errors, help."""

from __future__ import annotations

from conftest import cli

from splitcli import __version__


def test_version() -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"splitreason {__version__}"


def test_missing_argument_is_a_usage_error_without_traceback() -> None:
    result = cli("run")
    assert result.code == 2
    assert "Missing argument 'question'" in result.err
    assert "Traceback" not in result.err


def test_help_lists_the_commands() -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("serve", "ps", "stop", "logs", "kill-gpus", "run", "show", "profiles", "demo"):
        assert command in result.out
