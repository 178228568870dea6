"""Profile files as raw data: finding one by name or path, reading its YAML, merging its `extends`
chain and applying `--set` overrides. Nothing here validates: `profiles.validate` does that after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from splitcli import paths
from splitcli.errors import ProfileError

PROFILE_SUFFIXES = (".yaml", ".yml")


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}{suffix}" for suffix in PROFILE_SUFFIXES]


def find_profile(name_or_path: str, skip: Path | None = None) -> Path:
    """A path, else the user's profile dir, else the shipped profiles (`skip`: a file not to return,
    so that a user profile can extend the shipped profile of the same name)."""
    direct = Path(name_or_path).expanduser()
    if direct.is_file() and (skip is None or direct.resolve() != skip.resolve()):
        return direct
    for folder in (paths.user_profiles_dir(), paths.shipped_profiles_dir()):
        for candidate in _candidates(folder, name_or_path):
            if candidate.is_file() and (skip is None or candidate.resolve() != skip.resolve()):
                return candidate
    raise ProfileError(f"unknown profile {name_or_path!r} (see `splitreason profiles list`, or give a path to a YAML file)")


def available_profiles() -> dict[str, Path]:
    """Name -> file for every profile the lookup can see; user profiles shadow shipped ones."""
    found: dict[str, Path] = {}
    for folder in (paths.shipped_profiles_dir(), paths.user_profiles_dir()):
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if file.suffix in PROFILE_SUFFIXES and file.is_file():
                    found[file.stem] = file
    return dict(sorted(found.items()))


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{file}: not a text file in UTF-8 (a profile is a YAML file)") from None
    except OSError as exc:
        raise ProfileError(f"{file}: cannot be read ({exc.strerror})") from None
    if "\x00" in text:
        raise ProfileError(f"{file}: not a text file (a profile is a YAML file)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ProfileError(f"{file}: {where}: not valid YAML ({getattr(exc, 'problem', exc)}; fix the syntax)") from None
    if data is None:
        raise ProfileError(f"{file}: the profile is empty (write at least `small:` and `big:`, or `extends: demo`)")
    if not isinstance(data, dict):
        raise ProfileError(f"{file}: top level must be a mapping of keys (write `small:`, `big:`, ...)")
    return data


# Sections where one of several keys says how the thing is done: a child profile that gives one
# replaces the parent's choice (a demo child with an annotator endpoint drops demo's annotator server).
ALTERNATIVES = {"annotator": ("use", "server", "endpoint")}


def _deep_merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    merged = dict(base)
    choices = ALTERNATIVES.get(path, ())
    if any(choice in override for choice in choices):
        for choice in choices:
            if choice not in override:
                merged.pop(choice, None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, f"{path}.{key}" if path else key)
        else:
            merged[key] = value
    return merged


def load_raw(file: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile file's data with its `extends` chain merged in (not yet validated)."""
    if file.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, file.resolve()))
        raise ProfileError(f"{file}: extends: profiles extend each other in a cycle ({chain}; break the cycle)")
    data = _read_yaml(file)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{file}: extends: must be one profile name or path (write `extends: demo`)")
    try:
        sibling = next((c for c in _candidates(file.parent, parent) if c.is_file() and c.resolve() != file.resolve()),
                       None)
        # A profile may extend the one it shadows: the user's demo.yaml with `extends: demo`.
        parent_file = sibling or find_profile(parent, skip=file)
    except ProfileError:
        raise ProfileError(f"{file}: extends: unknown profile {parent!r} (see `splitreason profiles list`)") from None
    return _deep_merge(load_raw(parent_file, (*seen, file.resolve())), data)


def apply_override(data: dict[str, Any], assignment: str) -> str:
    """Apply one `--set a.b.c=VALUE` (VALUE parsed as YAML) to the raw profile data; returns the key."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {assignment}: expected KEY=VALUE (e.g. --set 'big.gpus=[2,3]')")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProfileError(f"--set {assignment}: {part} is not a section (set a key inside a section)")
        node = child
    node[parts[-1]] = value
    return key.strip()
