"""Train a run's classifier until a plateau, the budget or a preemption.

    python -m dp_hpc.train --run-dir RUN [--no-plateau-exit] [--max-steps N] [--threads T]
    torchrun --nnodes=1 --nproc-per-node=2 -m dp_hpc.train --run-dir RUN

Prints the final train_state as one JSON line on stdout; exit 0 also after a preemption
(SIGTERM/SIGUSR2), 2 on configuration errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from dp_hpc.errors import ConfigError
from dp_hpc.layout import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="the run folder (holds config.yaml and pool.zarr)")
    p.add_argument("--no-plateau-exit", action="store_true",
                   help="do not exit at plateaus (static runs, the final cool-down, branch-outs)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in this call (stop_reason 'preempted'; for tests)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if not RunDir(args.run_dir).config.is_file():
        print(f"error: --run-dir {args.run_dir}: not a run folder (no config.yaml; "
              "python -m dp_hpc.launch creates run folders)", file=sys.stderr)
        return 2
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # the rank: in the message
    if args.threads:
        torch.set_num_threads(args.threads)
    from dp_hpc.train.loop import train_until_stop

    try:
        ts = train_until_stop(args.run_dir, plateau_exit=not args.no_plateau_exit, max_steps=args.max_steps)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank == "0":
        print(json.dumps(ts.to_json(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
