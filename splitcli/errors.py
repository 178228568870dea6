"""The one error type the library raises; only the CLI turns it into a message and an exit code."""


class SplitError(Exception):
    """A failure the user can act on: `str(error)` is one line naming the cause and the fix."""

    exit_code = 2


class ProfileError(SplitError):
    """A profile file or override is invalid."""


class ServerError(SplitError):
    """A vLLM server could not be started, reached or stopped."""


class EngineError(SplitError):
    """A request to a model server failed (down, died mid-request, bad reply)."""


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
