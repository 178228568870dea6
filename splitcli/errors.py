"""The one error type the library raises; only the CLI turns it into a message and an exit code."""

from __future__ import annotations

from typing import Literal


class SplitError(Exception):
    """A failure the user can act on: `str(error)` is one line naming the cause and the fix."""

    exit_code = 2


class ProfileError(SplitError):
    """A profile file or override is invalid."""


class ServerError(SplitError):
    """A vLLM server could not be started, reached or stopped."""


# How a request to a model server failed, for whoever answers in status codes (the API):
# unreachable: no connection, or the server went away mid-reply; timeout: no reply in time;
# rejected: the server refused the request (4xx); server_error: it failed on it or replied nonsense.
EngineErrorKind = Literal["unreachable", "timeout", "rejected", "server_error"]


class EngineError(SplitError):
    """A request to a model server failed (down, died mid-request, bad reply); `kind` says how, and
    `server` ("big model M at URL") names the server a request got no reply from."""

    def __init__(self, message: str, kind: EngineErrorKind = "server_error", server: str = "") -> None:
        super().__init__(message)
        self.kind: EngineErrorKind = kind
        self.server = server


class UsageError(SplitError):
    """Bad input on the command line (empty question, unknown name, ...)."""


class StateError(SplitError):
    """The state dir (server records, logs, demo models) cannot be used."""


class DataError(SplitError):
    """A data set or a run folder cannot be read or does not fit (eval, gendata)."""


class SampleErrors(SplitError):
    """Some samples of a run failed in the engine (not wrong answers); the run can be resumed."""

    exit_code = 1


class Interrupted(SplitError):
    """The user pressed Ctrl-C; what was done is kept (the message says where)."""

    exit_code = 130
