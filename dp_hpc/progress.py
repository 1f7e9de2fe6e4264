"""A live line per run while a sweep runs (tqdm on a terminal; plain log lines otherwise)."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("dp_hpc.progress")


class SweepProgress:
    def __init__(self, coordinators):
        self.coordinators = coordinators
        self.live = sys.stderr.isatty()
        self.bars = {}
        self.last: dict[str, tuple] = {}
        if self.live:
            w = max(len(c.name) for c in coordinators)
            for i, c in enumerate(coordinators):
                self.bars[c.name] = tqdm(total=c.cfg.train.total_steps, desc=c.name.ljust(w), position=i,
                                         unit="step", leave=True, dynamic_ncols=True, file=sys.stderr)

    def update(self) -> None:
        for c in self.coordinators:
            s = c.summary()
            acc = "-" if s["best_val_acc"] is None else f"{s['best_val_acc']:.3f}"
            text = f"{s['phase']} r{s['round']} pool={s['pool_size']} val={acc}"
            if self.live:
                bar = self.bars[c.name]
                bar.n = s["step"]
                bar.set_postfix_str(text, refresh=False)
                bar.refresh()
            key = (s["phase"], s["round"])
            if not self.live and self.last.get(c.name) != key:  # a log line per phase change
                log.info("%s: %s step=%s", c.name, text, s["step"])
            self.last[c.name] = key

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
