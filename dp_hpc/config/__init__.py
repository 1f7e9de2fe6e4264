"""The run and sweep configuration: one typed dataclass per component (beside its code), nested
into `RunConfig`; a sweep is a `base` run config plus a `grid` of overrides.

Everything is validated once, here at the edge: unknown keys, wrong types and impossible values
raise `ConfigError` naming the file, the dotted key and what is allowed.

Precedence: dataclass defaults -> sweep YAML `base` -> `--set key=value` -> the sweep's `grid`.

By role: schema.py (RunConfig, ExecutorConfig, SweepConfig), loader.py (the generic typed loader:
dict <-> dataclass, dotted keys), sweep.py (a sweep file read and its grid expanded), run_folder.py
(a run folder's config.yaml), keys.py (`--list-keys`). The names below are the package's surface:
`from dp_hpc.config import RunConfig, load_sweep, ...`. A generator's key (which runs share one) is
dp_hpc.generate.cache.generator_key.
"""

from dp_hpc.config.loader import flatten, from_dict, parse_override, set_dotted, to_dict  # noqa: F401
from dp_hpc.config.run_folder import dump_run_config, load_run_config, load_sweep_tracking  # noqa: F401
from dp_hpc.config.schema import ExecutorConfig, RunConfig, SweepConfig  # noqa: F401
from dp_hpc.config.sweep import PlannedRun, expand_grid, load_sweep, run_name  # noqa: F401
