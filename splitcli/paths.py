"""Where splitreason keeps its state: server records, logs, demo models, user profiles."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    """The state dir: $SPLITREASON_HOME, else the user cache dir."""
    root = os.environ.get("SPLITREASON_HOME") or platformdirs.user_cache_dir("splitreason")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def servers_dir() -> Path:
    return _sub("servers")


def logs_dir() -> Path:
    return _sub("logs")


def models_dir() -> Path:
    return _sub("models")


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
