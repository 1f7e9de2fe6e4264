"""Progress of long work at a steady rate: a live line per run while a sweep runs (tqdm on a
terminal; plain log lines otherwise: at each phase change, and every `interval_s` while a run's
training step or its round's written chunks move), and the
pieces other loops use (the generator's training): `Every` (a rate limit on an injectable clock)
and `progress_line` (step, loss, time left)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

log = logging.getLogger("dp_hpc.progress")

LINE_EVERY_S = 15.0
"""Seconds between progress lines of work that runs on (no phase change to report)."""


class Every:
    """True at most once per `interval_s` of `clock` (time.monotonic; a test passes a fake one).
    The first call is due only if `due_at_start`."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic, due_at_start: bool = False):
        self.interval_s, self.clock = interval_s, clock
        self.last: float | None = None if due_at_start else clock()

    def __call__(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def duration_text(seconds: float) -> str:
    """45 s, 2 min 05 s, 1 h 03 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_line(what: str, step: int, total: int, seconds: float, start_step: int = 0,
                  loss: float | None = None) -> str:
    """`what: step 1,200/3,000, loss 0.0412, ~1 min 30 s left`: the time left at the rate of the
    steps done in `seconds` since `start_step` (none before the first step)."""
    text = f"{what}: step {step:,}/{total:,}"
    if loss is not None:
        text += f", loss {loss:.4f}"
    done = step - start_step
    if done > 0 and seconds > 0 and step < total:
        text += f", ~{duration_text((total - step) * seconds / done)} left"
    return text


def generated_chunks(c) -> tuple[int, int] | None:
    """(chunks written, chunks) of the round a run is generating, as its coordinator last saw them
    (`chunks_seen`: the listing of the round's markers that its poll made; not listed again here)."""
    rounds, seen = c.state.rounds, c.chunks_seen
    if not rounds or c.state.round >= len(rounds) or seen is None or seen[0] != c.state.round:
        return None
    return seen[1], -(-rounds[c.state.round].generated // c.cfg.pool.chunk_size)


class SweepProgress:
    def __init__(self, coordinators, interval_s: float = LINE_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 live: bool | None = None):
        self.coordinators = coordinators
        self.live = sys.stderr.isatty() if live is None else live
        self.interval_s, self.clock = interval_s, clock
        self.bars = {}
        self.last: dict[str, tuple] = {}  # run -> (phase, round) of its last line
        self.last_line: dict[str, tuple[float, tuple]] = {}  # run -> (time, (step, chunks)) of its last line
        self.first_seen: dict[str, tuple[float, int]] = {}  # run -> (time, step) last seen before it moved
        if self.live:
            w = max(len(c.name) for c in coordinators)
            for i, c in enumerate(coordinators):
                self.bars[c.name] = tqdm(total=c.cfg.train.total_steps, desc=c.name.ljust(w), position=i,
                                         unit="step", leave=True, dynamic_ncols=True, file=sys.stderr)

    def update(self) -> None:
        now = self.clock()
        for c in self.coordinators:
            s = c.summary()
            acc = "-" if s["best_val_acc"] is None else f"{s['best_val_acc']:.3f}"
            chunks = generated_chunks(c) if s["phase"] == "generate" else None
            text = f"{s['phase']} r{s['round']}" + (f" chunks {chunks[0]}/{chunks[1]}" if chunks else "") + \
                f" pool={s['pool_size']} val={acc}"
            if self.live:
                bar = self.bars[c.name]
                bar.n = s["step"]
                bar.set_postfix_str(text, refresh=False)
                bar.refresh()
                continue
            t0, step0 = self.first_seen.setdefault(c.name, (now, s["step"]))
            if s["step"] == step0:  # not moving yet (generating, queued): the rate counts from its first step
                t0 = now
                self.first_seen[c.name] = (t0, step0)
            key, where = (s["phase"], s["round"]), (s["step"], chunks)
            last_t, last_where = self.last_line.get(c.name, (now, where))
            moved_a_while = where != last_where and now - last_t >= self.interval_s
            if self.last.get(c.name) != key or moved_a_while:  # a line per phase change, and while it runs
                log.info("%s (%s)", progress_line(c.name, s["step"], c.cfg.train.total_steps, now - t0, step0), text)
                self.last_line[c.name] = (now, where)
            self.last[c.name] = key

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
