"""`splitreason --help` answers without importing the Session, the engine or any mode (no server needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("splitcli.session", "splitcli.engine", "splitcli.solve")


def _imported_by(*args: str) -> set[str]:
    """The modules `python -m splitcli ARGS` imports, as -X importtime reports them on stderr."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "splitcli", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["eval", "--help"]], ids=" ".join)
def test_help_imports_neither_the_session_nor_the_engine(args: list[str]) -> None:
    imported = _imported_by(*args)
    assert "splitcli.cli" in imported  # the report is read right
    assert not imported & set(HEAVY)
    assert not {name for name in imported if name.startswith("splitcli.modes.")}


def test_the_mode_names_read_from_the_files_are_the_registered_ones() -> None:
    code = ("import json, sys; from splitcli import modes; listed = modes.mode_names(); "
            "imported = sorted(m for m in sys.modules if m.startswith('splitcli.modes.')); "
            "modes.get_mode(listed[0]); "  # imports every mode: the registry is complete from here on
            "print(json.dumps([listed, imported, sorted(modes._REGISTRY)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed, imported, registered = json.loads(done.stdout)
    assert imported == []
    assert listed == registered
