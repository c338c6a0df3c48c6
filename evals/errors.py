"""Errors the CLI turns into one line with a hint and exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, stripped, for one-line reports; its type's name
    when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Phi2EvalError(Exception):
    """An error caused by the user's input; its message says what to do."""


class DataError(Phi2EvalError):
    """A benchmark data file is missing, empty or malformed."""


class ConfigError(Phi2EvalError):
    """A config file is malformed or names something unknown."""


class ModelError(Phi2EvalError):
    """A model cannot be found or loaded."""


class CacheError(Phi2EvalError):
    """The request cache cannot be opened (a corrupt one is rebuilt instead)."""


class OptionError(Phi2EvalError):
    """A command-line option has a value that cannot work (checked before any model loads)."""
