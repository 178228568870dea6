"""Where splitreason keeps its state: server records, logs, demo models, user profiles."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from splitcli.errors import StateError


def _usable_dir(path: Path) -> Path:
    """`path` as an existing folder, or one line saying why it cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StateError(f"state dir {path} is a file, not a folder (remove it, or set SPLITREASON_HOME "
                         "to a folder)") from None
    except OSError as exc:
        raise StateError(f"state dir {path} cannot be created ({exc.strerror}; set SPLITREASON_HOME "
                         "to a writable folder)") from None
    if not path.is_dir():
        raise StateError(f"state dir {path} is not a folder (set SPLITREASON_HOME to a folder)")
    return path


def home() -> Path:
    """The state dir: $SPLITREASON_HOME, else the user cache dir."""
    root = os.environ.get("SPLITREASON_HOME") or platformdirs.user_cache_dir("splitreason")
    return _usable_dir(Path(root).expanduser().absolute())


def _sub(name: str) -> Path:
    return _usable_dir(home() / name)


def servers_dir() -> Path:
    return _sub("servers")


def logs_dir() -> Path:
    return _sub("logs")


def models_dir() -> Path:
    return _sub("models")


def data_dir() -> Path:
    """Downloaded data sets (eval tasks, gendata sources)."""
    return _sub("data")


def user_profiles_dir() -> Path:
    """User profiles: $SPLITREASON_PROFILES, else the user config dir."""
    root = os.environ.get("SPLITREASON_PROFILES") or Path(platformdirs.user_config_dir("splitreason")) / "profiles"
    return Path(root)


def shipped_profiles_dir() -> Path:
    """Profiles shipped with the package (a wheel) or lying beside it (a source checkout)."""
    packaged = Path(__file__).parent / "shipped_profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "profiles"
