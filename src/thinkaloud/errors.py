"""Errors that are the user's to fix, and their one-line form.

A ``UserError`` is a problem with what was asked for — a missing file, an unknown task, an unsupported
model, a bad setting — not a bug in thinkaloud. The ``thinkaloud`` command prints its message as one
line and exits with status 2; a bug keeps its traceback. ``thinkaloud.cli`` states the whole rule
(which other exceptions count as the user's, and when).

Subclasses that also derive from a built-in exception (``ModelNotFoundError`` is a
``FileNotFoundError``) keep working with code that catches the built-in one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# OSErrors about a path the user gave: it is missing, already there, of the wrong kind, or not ours to write.
PATH_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class UserError(Exception):
    """Bad input from the user: shown as one line, no traceback."""


class UsageError(UserError):
    """A command line that the parser rejects (unknown flag, bad value, missing argument)."""


class DataError(UserError, ValueError):
    """A task spec, data file or calibration folder that cannot give what a job asks of it: an unknown task,
    a malformed line, too few items, an incomplete calibration. Raised where the job reads it, once."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model spec that names no model: a missing local folder, or a hub id that cannot be loaded."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line; an OSError from the system reads "<reason>: <path>"."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror[:1].lower()}{exc.strerror[1:]}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextmanager
def as_user_errors(*types: type[BaseException], error: type[UserError] = UserError) -> Iterator[None]:
    """Re-raise exceptions of ``types`` raised inside the block as ``error`` (a ``UserError``; the original
    is chained)."""
    try:
        yield
    except UserError:
        raise
    except types as e:
        raise error(one_line(e)) from e
