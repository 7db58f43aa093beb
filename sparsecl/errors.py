"""Errors in what a user asked for (a config value, a file, a resource), as opposed to bugs.

The command line prints a ``UserError`` as one line saying what is wrong and what to do, and exits with
status 2 (``--debug`` shows the traceback instead). Library callers get ordinary exceptions: each class
here also derives from the builtin a caller would catch (``ValueError``, ``FileNotFoundError``, ...).
"""


class UserError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config key or value is malformed: unknown key, wrong type, out of range, not finite."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are not where the config says."""


def one_line(exc):
    """The message of ``exc`` on one line (multi-line messages joined with spaces)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__
