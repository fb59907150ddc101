"""Exceptions a user can act on: each names the thing that is wrong and what was expected."""


class SuperduperError(Exception):
    """Base class of every error raised by superduper."""


class ConfigError(SuperduperError, ValueError):
    """A URI or setting that cannot be used."""


class MissingDependency(SuperduperError, ImportError):
    """An optional integration is not installed; the message says what to install."""


class UnknownTable(SuperduperError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownField(SuperduperError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class InvalidValue(SuperduperError, ValueError):
    """A value that does not fit its field's type."""


class QueryError(SuperduperError, ValueError):
    """A query that cannot be run as written."""


class ComponentError(SuperduperError, ValueError):
    """A component that cannot be applied, loaded or removed."""


class NotFound(SuperduperError, LookupError):
    """A component, artifact or row that does not exist."""


class DatabaseError(SuperduperError):
    """The database refused a statement; the message names the table and the database's reason."""


class ModelError(SuperduperError):
    """A model failed or returned outputs of the wrong number, type or shape."""


class JobFailed(SuperduperError):
    """A job (a backfill, a training run) ended with an error, or with rows its model failed on; ``status`` holds the
    job's row as it ended."""

    def __init__(self, message: str, status: dict):
        super().__init__(message)
        self.status = status


class JobTimeout(SuperduperError, TimeoutError):
    """``Job.wait(timeout=)`` ran out before the job ended (the job goes on)."""
