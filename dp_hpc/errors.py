"""Errors that the command-line entry points turn into one line on stderr and exit status 2
(`run_main`)."""

from __future__ import annotations

import os
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


INTERRUPTED_WHILE_IMPORTING = "interrupted (Ctrl-C) before the command started; nothing was done"


def quiet_ctrl_c_while_importing() -> None:
    """A Ctrl-C in the first second or two of `python -m <entry point>`, while it still imports
    torch and before `run_main` is reached, is one line and exit 130 too, not Python's traceback of
    the import. The packages' `__init__` call this; it acts only while runpy locates a `-m` module
    (`sys.argv[0] == "-m"` then, as Python's documentation of -m says), so importing dp_hpc as a
    library leaves `sys.excepthook` alone. Any other uncaught exception, and a Ctrl-C that is not
    inside an import (an entry point without run_main), goes to the hook there was before."""
    if sys.argv[:1] != ["-m"]:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt) and raised_in_an_import(tb):
            print(INTERRUPTED_WHILE_IMPORTING, file=sys.stderr, flush=True)
            os._exit(130)  # nothing has started: no atexit work to run
        previous(kind, value, tb)

    sys.excepthook = hook


def raised_in_an_import(tb) -> bool:
    """Whether an exception came from the main module's top level or from a module its top level was
    importing (not from a function it called): after the main module's `<module>` frame comes
    nothing, or another module's `<module>`, with only the import machinery's frames between (Python
    mostly drops those, but not when the Ctrl-C lands in the machinery itself)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    main = next((i for i, code in enumerate(frames) if code.co_name == "<module>"), None)
    if main is None:
        return False
    after = [code for code in frames[main + 1:] if not code.co_filename.startswith("<frozen importlib")]
    return not after or after[0].co_name == "<module>"
