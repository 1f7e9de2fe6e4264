"""A simulated SLURM cluster for driving the real coordinator (Coordinator + SlurmRunner + submitit's
SlurmExecutor) at scale, without a cluster and without wall-clock time.

    sim = SimCluster(tmp_dir, seed=0, faults=Faults())
    with sim.on_path():                  # fake sbatch / sacct / squeue / scancel / srun first on PATH
        ... SlurmRunner(...).submit(...) / .poll(...) ...
        sim.tick()                       # one poll interval of simulated time passes

The fake commands are small Python scripts (written into `<tmp>/bin`) that answer like SLURM
22.05's, from `<tmp>/cluster.json`, which only the simulator process writes (`publish`):
- sbatch reads submitit's submission script (--array=0-N%P, --job-name, --output), takes the next
  job id and appends the submission to `sbatch.jsonl`; `tick` ingests it.
- sacct -X -n -P -o JobID,State,ElapsedRaw,AllocTRES [-j ids | --name N]: array tasks by their own
  ids ('12_3'), an array's pending tasks collapsed into one row ('12_[4-99%8]'), an array id ('12')
  standing for all of its tasks; jobs the accounting has not seen yet (`Faults.sacct_lag`) are not
  listed; with probability `Faults.sacct_fail` it fails as a busy slurmdbd does. Every call appends
  its argument length to `sacct_calls.jsonl` (what the benchmark reports).
- squeue -h [-r] [-j ids | --name N] -o '%i %T' | '%i' | '%T': queued and running tasks.
- scancel ids: appended to `scancel.jsonl`.
- srun: only there to be found. submitit's SlurmExecutor refuses to start unless `srun` is on PATH
  (`SlurmExecutor.affinity`, its test for "on a SLURM cluster"); the batch scripts that would call it
  never run here, so a call fails loudly. With it the simulator needs no SLURM installed, and a
  real SLURM on PATH changes nothing (the fake commands come first).
Time is a tick counter (`tick()`): tasks start (at most `array_parallelism` per array, `capacity`
in all), run a random number of ticks, and end COMPLETED, or PREEMPTED / NODE_FAIL and requeued
under the same id (SLURM --requeue), or NODE_FAIL without requeue (lost: the coordinator must redo
its shard). What a job leaves on disk is scripted (`_finish`): the submitit result pickle, and for
a generation task the chunk markers of its shard; for a training job a checkpoint's
train_state.json; for an evaluation eval.json. The pool's arrays are not written: see
bench/coordinator_scale.py for why.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from submitit.core.utils import cloudpickle_dump, pickle_load

from dp_hpc.contracts import TrainState
from dp_hpc.io import atomic_write_json
from dp_hpc.layout import TRAIN_STATE_FILE, RunDir


@dataclass
class Faults:
    preempt: float = 0.0  # per running task per tick: preempted, requeued under the same id
    node_fail_requeue: float = 0.0  # per running task per tick: node failure, requeued
    lost: float = 0.0  # per running task per tick: node failure without requeue (the shard is redone)
    sacct_fail: float = 0.0  # per sacct call: slurmdbd busy, exit 1
    sacct_lag: int = 1  # ticks before accounting knows a new job
    min_ticks: int = 1  # a task runs this many ticks at least...
    max_ticks: int = 3  # ...and at most


def _array_text(ids: list[int], parallelism: int) -> str:
    """[1,2,3,7] -> '1-3,7%P' as sacct and squeue print pending array tasks."""
    parts, start, prev = [], None, None
    for i in sorted(ids):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts) + f"%{parallelism}"


COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "srun")

# The fake commands. They import nothing of dp_hpc (a fresh interpreter per call, as SLURM's are).
FAKE = r'''#!{python}
import json, os, random, re, sys, time
CLUSTER = {cluster!r}
WHAT = {what!r}
args = sys.argv[1:]

def opt(name, default=None):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default

def load():
    with open(os.path.join(CLUSTER, "cluster.json")) as f:
        return json.load(f)

def append(name, rec):
    with open(os.path.join(CLUSTER, name), "a") as f:
        f.write(json.dumps(rec) + "\n")

def selected(c, ids, name, known_only):
    """(array id or None, task id, record) of the jobs named by -j ids / --name."""
    arrays = c["arrays"]
    if name is not None:
        keys = [a for a, rec in arrays.items() if rec["name"] == name]
        want = None
    else:
        want = set(ids)
        keys = {{i.split("_")[0] for i in ids}}
    for a in keys:
        rec = arrays.get(a)
        if rec is None or (known_only and rec["known_at"] > c["tick"]):
            continue
        whole = want is None or a in want
        for t, task in rec["tasks"].items():
            jid = a if rec["single"] else f"{{a}}_{{t}}"
            if whole or jid in want:
                yield a, jid, rec, task

if WHAT == "sbatch":
    script = open(args[-1]).read()
    path = os.path.join(CLUSTER, "next_id")
    jid = int(open(path).read()) if os.path.exists(path) else 1000
    open(path, "w").write(str(jid + 1))
    arr = re.search(r"#SBATCH --array=0-(\d+)%(\d+)", script)
    append("sbatch.jsonl", {{"id": str(jid), "name": re.search(r"#SBATCH --job-name=(\S+)", script).group(1),
                             "n": int(arr.group(1)) + 1 if arr else 1, "parallelism": int(arr.group(2)) if arr else 1,
                             "single": arr is None,
                             "output": re.search(r"#SBATCH --output=(\S+)", script).group(1)}})
    print(f"Submitted batch job {{jid}}")
elif WHAT == "scancel":
    append("scancel.jsonl", {{"ids": [a for a in args if not a.startswith("-")]}})
elif WHAT == "sacct":
    c = load()
    ids = (opt("-j") or "").split(",") if opt("-j") else []
    append("sacct_calls.jsonl", {{"tick": c["tick"], "arg_len": sum(len(a) + 1 for a in args),
                                  "longest_arg": max(len(a) for a in args), "n_ids": len(ids)}})
    rng = random.Random(hash((c["seed"], c["tick"], c["sacct_calls"])))
    if rng.random() < c["sacct_fail"]:
        print("sacct: error: slurmdbd: Socket timed out on send/recv operation", file=sys.stderr)
        sys.exit(1)
    pending, out = {{}}, []
    for a, jid, rec, task in selected(c, ids, opt("--name"), known_only=True):
        if task["state"] == "PENDING" and not rec["single"]:
            pending.setdefault(a, []).append(int(jid.split("_")[1]))
            continue
        tres = "billing=10,cpu=10,gres/gpu=1,mem=64G,node=1" if task["state"] != "PENDING" else ""
        out.append(f"{{jid}}|{{task['state']}}|{{task['elapsed']}}|{{tres}}")
    for a, ts in pending.items():
        out.append(f"{{a}}_[{{_array_text(ts, c['arrays'][a]['parallelism'])}}]|PENDING|0|")
    fields = (opt("-o") or "JobID").split(",")
    for line in out:
        print("|".join(line.split("|")[: len(fields)]))
elif WHAT == "srun":
    print("srun: the simulated cluster (bench/slurm_sim.py) runs no job steps", file=sys.stderr)
    sys.exit(1)
elif WHAT == "squeue":
    c = load()
    ids = (opt("-j") or "").split(",") if opt("-j") else []
    fmt = opt("-o", "%i %T")
    for a, jid, rec, task in selected(c, ids, opt("--name"), known_only=False):
        if task["state"] in ("PENDING", "RUNNING") or task.get("requeued"):
            print(fmt.replace("%i", jid).replace("%T", "PENDING" if task.get("requeued") else task["state"]))
'''


class SimCluster:
    def __init__(self, root: Path, seed: int = 0, faults: Faults | None = None, capacity: int = 10**9):
        self.root = Path(root)
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.seed, self.capacity = seed, capacity
        self.tick_no = 0
        self.arrays: dict[str, dict] = {}
        self._offsets = {"sbatch.jsonl": 0, "scancel.jsonl": 0}
        self.finished_shards: list[tuple[str, int, int, int]] = []  # (run, round, start, stop) of successful tasks
        self.submitted_shards: list[tuple[str, int, int, int]] = []  # ... of every generation task submitted
        self.lost_tasks = 0
        self.lost_shards: list[tuple[str, int, int, int]] = []  # ... of generation tasks lost (not requeued)
        self.requeued_tasks = 0
        src = FAKE.replace("{python}", sys.executable)
        helper = "import json\n" + _array_source()
        for what in COMMANDS:
            p = self.bin / what
            text = src.format(python=sys.executable, cluster=str(self.root), what=what)
            text = text.replace("import json, os, random, re, sys, time\n",
                                "import json, os, random, re, sys, time\n" + helper, 1)
            p.write_text(text)
            p.chmod(0o755)
        self.publish()

    @contextlib.contextmanager
    def on_path(self):
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{self.bin}{os.pathsep}{old}"
        try:
            yield self
        finally:
            os.environ["PATH"] = old

    # -- the cluster's side
    def _read_new(self, name: str) -> list[dict]:
        p = self.root / name
        if not p.exists():
            return []
        with p.open() as f:
            f.seek(self._offsets[name])
            lines = f.readlines()
            self._offsets[name] = f.tell()
        return [json.loads(x) for x in lines if x.strip()]

    def ingest(self) -> None:
        for s in self._read_new("sbatch.jsonl"):
            folder = str(Path(s["output"]).parent)
            self.arrays[s["id"]] = {"name": s["name"], "parallelism": s["parallelism"], "single": s["single"],
                                    "folder": folder, "known_at": self.tick_no + self.faults.sacct_lag,
                                    "tasks": {str(t): {"state": "PENDING", "left": 0, "elapsed": 0}
                                              for t in range(s["n"])}}
            if not s["single"] and "-generate-" in s["name"]:
                for t in range(s["n"]):
                    args = self._args(s["id"], str(t))
                    self.submitted_shards.append((Path(args[0]).name, args[1], args[2], args[3]))
        for c in self._read_new("scancel.jsonl"):
            for jid in c["ids"]:
                a, _, t = jid.partition("_")
                for tid, task in self.arrays.get(a, {"tasks": {}})["tasks"].items():
                    if (not t or t == tid) and task["state"] in ("PENDING", "RUNNING"):
                        task["state"] = "CANCELLED"

    def tick(self) -> None:
        """One poll interval: take new submissions, end, fail and start tasks, then publish."""
        self.ingest()
        f, rng = self.faults, self.rng
        running = sum(1 for a in self.arrays.values() for t in a["tasks"].values() if t["state"] == "RUNNING")
        for aid, a in self.arrays.items():
            for tid, task in a["tasks"].items():
                if task["state"] in ("PREEMPTED", "NODE_FAIL_RQ"):
                    task["state"] = "PENDING"  # requeued: pending again under the same id
                if task["state"] != "RUNNING":
                    continue
                task["elapsed"] += 60
                r = rng.random()
                if r < f.preempt:
                    task["state"], running = "PREEMPTED", running - 1
                    self.requeued_tasks += 1
                elif r < f.preempt + f.node_fail_requeue:
                    task["state"], running = "NODE_FAIL_RQ", running - 1
                    self.requeued_tasks += 1
                elif r < f.preempt + f.node_fail_requeue + f.lost:
                    task["state"], running = "NODE_FAIL", running - 1
                    self.lost_tasks += 1
                    if not a["single"] and "-generate-" in a["name"]:
                        args = self._args(aid, tid)
                        self.lost_shards.append((Path(args[0]).name, args[1], args[2], args[3]))
                else:
                    task["left"] -= 1
                    if task["left"] <= 0:
                        self._finish(aid, tid, a)
                        task["state"], running = "COMPLETED", running - 1
        for aid, a in self.arrays.items():
            active = sum(1 for t in a["tasks"].values() if t["state"] == "RUNNING")
            for tid, task in a["tasks"].items():
                if running >= self.capacity or active >= a["parallelism"]:
                    break
                if task["state"] == "PENDING":
                    task["state"], task["left"] = "RUNNING", rng.randint(f.min_ticks, f.max_ticks)
                    running, active = running + 1, active + 1
        self.tick_no += 1
        self.publish()

    def publish(self) -> None:
        """cluster.json for the fake commands; NODE_FAIL_RQ (requeued) shows as NODE_FAIL."""
        arrays = {aid: {**a, "tasks": {t: {**v, "state": "NODE_FAIL" if v["state"] == "NODE_FAIL_RQ" else v["state"],
                                           "requeued": v["state"] in ("PREEMPTED", "NODE_FAIL_RQ")}
                                       for t, v in a["tasks"].items()}} for aid, a in self.arrays.items()}
        atomic_write_json(self.root / "cluster.json", {"tick": self.tick_no, "seed": self.seed, "sacct_calls": 0,
                                                       "sacct_fail": self.faults.sacct_fail, "arrays": arrays})

    def sacct_calls(self) -> list[dict]:
        p = self.root / "sacct_calls.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    # -- what a job leaves on disk (scripted)
    def _args(self, aid: str, tid: str) -> tuple:
        a = self.arrays[aid]
        name = f"{aid}_{tid}" if not a["single"] else aid
        return pickle_load(Path(a["folder"]) / f"{name}_submitted.pkl").args

    def _finish(self, aid: str, tid: str, a: dict) -> None:
        jid = aid if a["single"] else f"{aid}_{tid}"
        kind = re.search(r"-(generate|train|eval|generator)-[0-9a-f]{8}$", a["name"]).group(1)
        args = self._args(aid, tid)
        run = RunDir(args[0])
        if kind == "generate":
            _, r, start, stop = args[:4]
            d = run.round_markers(r)
            d.mkdir(parents=True, exist_ok=True)
            for c in range(start, stop):
                run.chunk_marker(r, c).touch()
            self.finished_shards.append((run.path.name, r, start, stop))
        elif kind == "train":
            plateau = args[1]
            done = sorted(run.complete_rounds())
            steps = [s for s, _ in run.checkpoint_folders()]
            step = (steps[-1] if steps else 0) + 1000
            ck = run.checkpoint(step)
            ck.mkdir(parents=True, exist_ok=True)
            ts = TrainState(round=max(done), pool_rounds=tuple(done), pool_size=0, step=step, best_val_acc=0.5,
                            best_step=step, patience_counter=0, patience_limit=1,
                            stop_reason="plateau" if plateau else "budget", last_val_acc=0.5, lr=0.0, world_size=1,
                            time="")
            atomic_write_json(ck / TRAIN_STATE_FILE, ts.to_json())
        elif kind == "eval":
            atomic_write_json(run.eval, {"acc": 0.5})
        cloudpickle_dump(("success", None), Path(a["folder"]) / f"{jid}_0_result.pkl")


def _array_source() -> str:
    import inspect

    return inspect.getsource(_array_text)
