"""Mode registry: each module in this package registers one mode with `@register`.

Adding a mode means adding one file here; discovery imports every module of the package. Listing the
modes does not: their names are read from the files (see `mode_names`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, get_args, get_origin

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


OptionsT = TypeVar("OptionsT", bound=ModeOptions)


class Mode(ABC, Generic[OptionsT]):
    """A way of composing the two models; fills a Trace. `Mode[TheirOptions]` names its knobs."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[ModeOptions]] = ModeOptions
    options: OptionsT
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

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):  # class X(Mode[XOptions]): its knobs are XOptions
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Mode) and isinstance(get_args(base)[0], type):
                cls.Options = get_args(base)[0]

    def __init__(self, options: OptionsT) -> None:
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
    """Every mode's name. The package's own are read from their files, not imported: a mode imports
    the Session and the engine, which `splitreason --help` and a --mode check have no use for."""
    return sorted({*_package_mode_names(), *_REGISTRY})


@functools.cache
def _package_mode_names() -> tuple[str, ...]:
    """The names the package's mode files register; where a file does not say its names plainly (no
    source, a name that is not a string literal) the modules are imported and the registry answers."""
    names: list[str] = []
    for module in pkgutil.iter_modules(__path__):
        source = Path(__path__[0]) / f"{module.name}.py"
        found = _registered_names(source) if source.is_file() else None
        if found is None:
            _discover()
            return ()
        names += found
    return tuple(names)


def _registered_names(source: Path) -> list[str] | None:
    """The `name` of each `@register` class in a mode file; None if one of them has no literal name."""
    names = []
    for node in ast.parse(source.read_text()).body:
        if not isinstance(node, ast.ClassDef) or not any(_is_register(item) for item in node.decorator_list):
            continue
        name = next((value for item in node.body if (value := _literal_name(item)) is not None), None)
        if name is None:
            return None
        names.append(name)
    return names


def _is_register(decorator: ast.expr) -> bool:
    return (isinstance(decorator, ast.Name) and decorator.id == "register") or (
        isinstance(decorator, ast.Attribute) and decorator.attr == "register")


def _literal_name(statement: ast.stmt) -> str | None:
    """The string a class body assigns to `name` (`name = "x"`, annotated or not), else None."""
    if isinstance(statement, ast.Assign):
        targets, value = statement.targets, statement.value
    elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
        targets, value = [statement.target], statement.value
    else:
        return None
    named = any(isinstance(target, ast.Name) and target.id == "name" for target in targets)
    return value.value if named and isinstance(value, ast.Constant) and isinstance(value.value, str) else None


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
