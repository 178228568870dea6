"""Files that eval and gendata share: local data sets (JSONL, parquet or CSV files, or a dataset
folder) read through `datasets`, and the folder of a resumable run (run.json written atomically, and
an append-only JSONL of finished items whose torn last line is cut off on resume)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from splitcli import paths
from splitcli.errors import DataError

RUN_FILE = "run.json"
Key = TypeVar("Key", bound=Hashable)


def quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()  # our own progress bar says what is happening
    datasets.logging.set_verbosity_error()


def load_local(path: Path) -> list[dict[str, Any]]:
    """The rows of a local file or dataset folder, every failure one DataError naming the path."""
    import datasets

    if not path.exists():
        raise DataError(f"{path}: no such file or folder (give a JSONL, parquet or CSV file, or a dataset folder)")
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    quiet_datasets()
    try:
        if path.is_dir():
            loaded = datasets.load_dataset(str(path), cache_dir=str(paths.data_dir()))
        elif path.suffix in builders:
            loaded = datasets.load_dataset(builders[path.suffix], data_files=str(path), cache_dir=str(paths.data_dir()))
        else:
            raise DataError(f"{path}: unknown kind of file (use .jsonl, .parquet or .csv, or a dataset folder)")
    except DataError:
        raise
    except Exception as exc:  # broad on purpose: datasets/pyarrow raise many kinds for a malformed file
        raise DataError(f"{path}: cannot be read as a data set ({type(exc).__name__}: {str(exc)[:200]})") from None
    split = next(iter(loaded.values())) if isinstance(loaded, datasets.DatasetDict) else loaded
    return [dict(row) for row in split]


class RunFolder:
    """run.json (inputs and fingerprint) and `progress_file` (one JSON line per finished item)."""

    progress_file: ClassVar[str]
    writer: ClassVar[str]  # who writes such folders, for the error of a wrong --resume

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RUN_FILE).read_text())
        except FileNotFoundError:
            raise DataError(f"--resume {self.path}: no {RUN_FILE} there (give a folder {self.writer} wrote)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"--resume {self.path}: {RUN_FILE} cannot be read ({exc})") from None

    def write_run(self, data: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{RUN_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path / RUN_FILE)

    def load(self, key: Callable[[dict[str, Any]], Key]) -> dict[Key, dict[str, Any]]:
        """Items finished so far by `key`, the last line per key winning; a torn last line (the process
        was killed while writing it) is cut off the file."""
        file = self.path / self.progress_file
        if not file.exists():
            return {}
        raw = file.read_bytes()
        found: dict[Key, dict[str, Any]] = {}
        good_end = 0
        for line in raw.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break  # only the last line can be torn: appends are sequential
            found[key(record)] = record
            good_end += len(line)
        if good_end < len(raw):
            with open(file, "r+b") as handle:
                handle.truncate(good_end)
        return found

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path / self.progress_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
