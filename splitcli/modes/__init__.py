"""Mode registry: each module in this package registers one mode with `@register`.

Adding a mode means adding one file here; discovery imports every module of the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from splitcli.errors import UsageError

if TYPE_CHECKING:
    from splitcli.session import Session
    from splitcli.trace import Model, Trace


class ModeOptions(BaseModel):
    """Base of every mode's knobs: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Mode(ABC):
    """A way of composing the two models; fills a Trace."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[ModeOptions]] = ModeOptions
    # The SplitReason hint is for models trained to emit tags; baselines prompt without it.
    uses_hint: ClassVar[bool] = False
    # The models a mode talks to; only their servers are needed.
    roles: ClassVar[tuple[Model, ...]] = ("small", "big")

    def __init__(self, options: ModeOptions) -> None:
        self.options = options

    @abstractmethod
    async def run(self, session: Session, trace: Trace) -> None:
        """Generate the answer into `trace` (segments are appended as they are produced)."""


_REGISTRY: dict[str, type[Mode]] = {}
_discovered = False


def register(cls: type[Mode]) -> type[Mode]:
    """Class decorator: make a mode available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def mode_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_mode(name: str) -> type[Mode]:
    _discover()
    if name not in _REGISTRY:
        raise UsageError(f"unknown mode {name!r} (choose one of: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def options_for(name: str, knobs: dict[str, object] | None) -> ModeOptions:
    """Validate a mode's knobs (raises pydantic's ValidationError on bad ones)."""
    return get_mode(name).Options.model_validate(knobs or {})
