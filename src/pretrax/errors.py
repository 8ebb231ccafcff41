"""The project's own error types.

Every error a person can act on (a bad config, bad data, a missing file, an
incompatible checkpoint) is one of these. The CLI prints the message as one
line and exits with code 2, without a traceback.
"""


class PretraxError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(PretraxError):
    """A config key, value or combination that is not valid."""


class DataError(PretraxError):
    """Input data that is missing or cannot be read."""


class CheckpointError(PretraxError):
    """A checkpoint that is missing, incomplete or does not fit this run."""


class TrainingError(PretraxError):
    """Training cannot go on as configured (a non-finite loss under train.nan_policy=stop, ...)."""


class StorageError(PretraxError):
    """A run dir's storage that cannot be reached or used (a missing bucket, no answer, no permission)."""


def first_line(e: BaseException) -> str:
    """An exception's first line, at most 300 characters (its type's name when it has no message)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
