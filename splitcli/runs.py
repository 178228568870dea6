"""What --resume and --out mean for a resumable run (eval, gendata).

A resumed run takes the options left out from the inputs its folder recorded, and must still match
the fingerprint recorded there; a new run gets a folder of its own, never one that holds a run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

from splitcli.datafiles import RunFolder
from splitcli.errors import DataError

Folder = TypeVar("Folder", bound=RunFolder)


def resumed(kind: type[Folder], given: dict[str, Any], path: Path | None) -> tuple[dict[str, Any], Folder | None]:
    """The options to run with and the folder resumed (None for a new run): the options given, with
    what the resumed run recorded for those left out."""
    if path is None:
        return given, None
    folder = kind(path)
    recorded = folder.read_run().get("inputs", {})
    return {key: value if value is not None else recorded.get(key) for key, value in given.items()}, folder


def check_same(folder: RunFolder, what: str, recorded: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume when `what` (the run, its servers) differs from the one recorded in `folder`."""
    changed = differences(recorded, now)
    if changed:
        raise DataError(f"--resume {folder.path}: this {what} differs from the one there in: {'; '.join(changed)} "
                        "(resume with the same settings, or start a new run)")


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} ({json.dumps(a)} then, {json.dumps(b)} now)")
    return found


def new_folder(kind: type[Folder], out: Path | None, name: str) -> Folder:
    """The folder of a new run: `out`, else runs/NAME-TIME; one that holds a run already is refused."""
    folder = kind(out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (folder.path / folder.progress_file).exists():
        raise DataError(f"--out {folder.path}: a run is already there (continue it with --resume {folder.path}, "
                        "or pick another folder)")
    return folder
