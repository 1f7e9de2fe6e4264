"""The coordinator's state of one run, in three roles:
- run.py: `RunState` (phase, rounds, lost work, the pending submission, the jobs), plain data;
- table.py: `JobRecord` and `JobTable`, the one owner of the job list: `add` and `end` are the only
  changes to it, so it keeps the running jobs and what the next save writes up to date job by job;
- store.py: the files (state.json, jobs.jsonl, jobs/<array>.json, jobs/pending-<name>.json) and
  their older formats: `load_state`, `save_state`, `full_state_json`.
"""

from dp_hpc.coordinate.state.run import PHASES, RoundRecord, RunState
from dp_hpc.coordinate.state.store import full_state_json, load_state, running_jobs_in, save_state, state_from_json
from dp_hpc.coordinate.state.table import JobRecord, JobTable, compact_jobs, parse_ranges, ranges_text

__all__ = ["PHASES", "JobRecord", "JobTable", "RoundRecord", "RunState", "compact_jobs", "full_state_json",
           "load_state", "parse_ranges", "ranges_text", "running_jobs_in", "save_state", "state_from_json"]
