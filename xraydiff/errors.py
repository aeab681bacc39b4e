"""One exception type for every problem with user input, always naming the file (and line)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data or configuration.

    The message reads ``<path>:<line>: <what is wrong>`` (or ``<path>: ...`` when no line applies)
    so that a user can jump straight to the offending place.
    """

    def __init__(self, path: str | Path | None, message: str, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        self.reason = message
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class Interrupted(Exception):
    """A command stopped by SIGTERM or SIGINT; whatever it was writing has been removed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")
