"""Preemption as a flag: signal handlers only set it, and jobs check it at a safe point (a
training step boundary, between generated chunks), save, and return.

    with PreemptFlag() as flag:
        for ...:
            if flag.set:
                break
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

RECEIVED: list[int] = []
"""Every preemption signal any flag of this process caught, in order (a job's wrapper reads it
after the work returns: USR2 asks the job to requeue itself, SIGTERM means SLURM already does)."""


class _Handlers:
    """Installs `_handler` for `SIGNALS` while the context is open and restores the previous
    handlers on exit. Only from the main thread (signal's rule; jobs of the debug executor run in
    the launcher's main thread), so the launcher keeps its own handlers."""

    SIGNALS: tuple[int, ...] = ()

    def _handler(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class PreemptFlag(_Handlers):
    """SIGTERM/SIGUSR2 set the flag (SLURM and submitit preempt with them). In a task of the local
    executor SIGINT too: a Ctrl-C in the launcher's terminal reaches its jobs."""

    @property
    def SIGNALS(self) -> tuple[int, ...]:  # noqa: N802 (the base class's attribute)
        # read when the flag is entered, not at import: a warm local job (a fork of a parent that
        # imported this module) becomes a local job after the import
        return (signal.SIGTERM, signal.SIGUSR2) + ((signal.SIGINT,) if "SUBMITIT_LOCAL_JOB_ID" in os.environ else ())

    def __init__(self) -> None:
        self.set = False

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("signal %s: stopping at the next safe point", signum)
        RECEIVED.append(signum)
        self.set = True


class forward_as_sigterm(_Handlers):  # noqa: N801 (used like a function: `with forward_as_sigterm(p):`)
    """While a child process runs: SIGTERM/SIGUSR2 to us -> SIGTERM to it (recorded in RECEIVED)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self, child) -> None:
        self.child = child

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("signal %s: passing it on to pid %d as SIGTERM", signum, self.child.pid)
        RECEIVED.append(signum)
        try:
            self.child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass


def stopping(flag) -> bool:
    """A stop signal reached the launcher: through its own flag, or through the flag of a job that
    the debug executor runs in this process (which holds the handlers meanwhile)."""
    return flag.set or bool(RECEIVED)


def sleep_unless(flag, seconds: float) -> None:
    """Sleep, but wake within 0.2 s when a stop signal arrives."""
    end = time.time() + seconds
    while not stopping(flag) and time.time() < end:
        time.sleep(min(0.2, max(0.0, end - time.time())))
