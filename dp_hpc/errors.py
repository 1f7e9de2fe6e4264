"""Errors that the command-line entry points turn into one line on stderr and exit status 2
(`run_main`)."""

from __future__ import annotations

import sys
from typing import Callable


class ConfigError(ValueError):
    """A bad configuration value. `key` is the dotted path of the offending field.

    Components raise it from `__post_init__` with the bare field name; the loader in
    `dp_hpc.config` prefixes the parent path and the file, so the user sees e.g.
    ``sweeps/x.yaml: base.sampler.omega: must be >= 0, got -1``.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class UsageError(Exception):
    """Bad command-line input that is not a config field (missing file, bad flag value)."""


def run_main(main: Callable[[], int | None], interrupted: str = "interrupted (Ctrl-C)") -> int:
    """How every entry point's `if __name__ == "__main__":` calls its `main`: bad input (ConfigError,
    UsageError) is one line on stderr and exit status 2, a Ctrl-C one line (`interrupted`: what to do
    next, for a command a rerun continues) and 130; an unexpected error keeps its traceback."""
    try:
        return main() or 0
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
