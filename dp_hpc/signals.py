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

log = logging.getLogger(__name__)


class PreemptFlag:
    """SIGTERM/SIGUSR2 set the flag (SLURM and submitit preempt with them). In a task of the local
    executor SIGINT too: a Ctrl-C in the launcher's terminal reaches its jobs. Handlers are
    installed only from the main thread (signal's rule; jobs of the debug executor run in the
    launcher's main thread) and always restored on exit, so the launcher keeps its own."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2) + ((signal.SIGINT,) if "SUBMITIT_LOCAL_JOB_ID" in os.environ else ())

    def __init__(self) -> None:
        self.set = False
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("signal %s: stopping at the next safe point", signum)
        self.set = True

    def __enter__(self) -> "PreemptFlag":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
