"""Mode registry: each module in this package registers one mode with `@register`.

Adding a mode means adding one file here; discovery imports every module of the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitcli.errors import UsageError
from splitcli.profiles import Profile, ServerKey, describe_error, first_error, format_loc
from splitcli.trace import SegmentFeed

if TYPE_CHECKING:
    from splitcli.session import Session
    from splitcli.trace import Model, Trace


class ModeOptions(BaseModel):
    """Base of every mode's knobs: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ProbeOptions(ModeOptions):
    """Knobs of the modes that probe the small model for the end of a big segment."""

    probe_stride: int = Field(1, ge=1, description="without the probe route: probe every Nth prefix, then those "
                                                   "before a close (cheaper, approximate: a close not repeated "
                                                   "is missed; 1 is exact)")
    probe_route: bool = Field(True, description="probe through the continuations route of the small server we "
                                                "launched (exact, context sent once); false: one OpenAI request "
                                                "of all prefixes")


class Mode(ABC):
    """A way of composing the two models; fills a Trace."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[ModeOptions]] = ModeOptions
    # The SplitReason hint is for models trained to emit tags; baselines prompt without it.
    uses_hint: ClassVar[bool] = False
    # The models a mode talks to; only their servers are needed.
    roles: ClassVar[tuple[Model, ...]] = ("small", "big")
    # Text it shows may later be replaced (beams, rewrites): plain output waits for the end.
    replaces_text: ClassVar[bool] = False
    # Models whose drafts may still be cut (splitreason's big segments): their text is shown once final.
    provisional: ClassVar[tuple[Model, ...]] = ()

    @classmethod
    def feed(cls, sink: Callable[[Model, str], None]) -> SegmentFeed:
        """The mode's text as it is generated, without anything that may still be taken back."""
        return SegmentFeed(sink, defer=cls.replaces_text, provisional=cls.provisional)
    # Which server answers for a model, where not its own (spec-decoding: the big model's spec server).
    servers: ClassVar[dict[Model, ServerKey]] = {}

    @classmethod
    def server_keys(cls) -> dict[Model, ServerKey]:
        """Model -> the server that answers for it in this mode."""
        return {role: cls.servers.get(role, role) for role in cls.roles}

    def __init__(self, options: ModeOptions) -> None:
        self.options = options

    def configure(self, session: Session) -> None:
        """Hand the knobs that the Session applies (warm-ups, probe route...) to it; called before
        `run`, apart from it so that a mode built on another (a subclass with its own loop) keeps them."""
        del session  # most modes leave the Session's defaults

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


def mode_options(profile: Profile, name: str) -> ModeOptions:
    """A mode's knobs from the profile (`modes.NAME`), validated; a bad knob is one ProfileError line
    naming the file or --set argument it came from."""
    if name not in mode_names():
        raise profile.problem("mode", f"unknown mode {name!r} (choose one of: {', '.join(mode_names())})")
    options_class = get_mode(name).Options
    try:
        return options_class.model_validate(profile.modes.get(name) or {})
    except ValidationError as exc:
        first = first_error(exc)
        message = describe_error(first, options_class)
        if first["type"] == "extra_forbidden" and "did you mean" not in message:
            message = message[:-1] + "; `splitreason modes` lists each mode's knobs)"
        raise profile.problem(f"modes.{name}.{format_loc(first['loc'])}", message) from None


def check_profile(profile: Profile) -> Profile:
    """The profile's mode and every mode section it configures exist and have valid knobs."""
    known = mode_names()
    if profile.mode not in known:
        raise profile.problem("mode", f"unknown mode {profile.mode!r} (choose one of: {', '.join(known)})")
    for name in profile.modes:
        if name not in known:
            raise profile.problem(f"modes.{name}", f"unknown mode {name!r} (choose one of: {', '.join(known)})")
        mode_options(profile, name)
    return profile


def knob_defaults() -> dict[str, dict[str, object]]:
    """Every mode's knobs with their defaults (for `profiles show` and `splitreason modes`)."""
    return {name: get_mode(name).Options().model_dump() for name in mode_names()}
