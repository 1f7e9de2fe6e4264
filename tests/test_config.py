"""Config loading and sweep expansion: pure, no jobs."""

import subprocess
import sys
from pathlib import Path

import pytest

from dp_hpc.config import RunConfig, expand_grid, from_dict, load_sweep, run_name, to_dict
from dp_hpc.errors import ConfigError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_grid_expansion_is_a_cartesian_product_per_mapping():
    combos = expand_grid([{"a": [1, 2], "b": ["x", "y"]}, {"a": [3]}])
    assert combos == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3}]
    assert run_name({"method.name": "dp", "method.budget": 1000, "seed": 0}) == "dp-budget1000-seed0"


def test_roundtrip_of_the_resolved_config():
    cfg = from_dict(RunConfig, {"method": {"name": "prune", "budget": 800}, "sampler": {"omega": 0.07}})
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg and again.method.budget == 800 and again.sampler.omega == 0.07


def test_sweep_expands_runs_with_overrides_and_set(tmp_path):
    p = write(tmp_path, """
name: t
base: {train: {total_steps: 1000, warmup_steps: 100, cooldown_steps: 200}}
grid: {method.name: [static, dp], seed: [0, 1]}
""")
    sweep, runs = load_sweep(p, ["train.lr=0.01"])
    assert [r.name for r in runs] == ["static-seed0", "static-seed1", "dp-seed0", "dp-seed1"]
    assert runs[3].config.method.name == "dp" and runs[3].config.seed == 1
    assert all(r.config.train.lr == 0.01 and r.config.train.total_steps == 1000 for r in runs)


@pytest.mark.parametrize("text, key, allowed", [
    ("name: t\nbase: {sampler: {omega: -1}}\n", "base.sampler.omega", ">= 0"),
    ("name: t\nbase: {sampler: {omegaa: 1}}\n", "base.sampler.omegaa", "valid keys here"),
    ("name: t\nbase: {train: {total_steps: abc}}\n", "base.train.total_steps", "integer"),
    ("name: t\nbase: {method: {name: magic}}\n", "base.method.name", "'dp', 'static', 'prune'"),
    ("name: t\nbase: {train: {total_steps: 100, warmup_steps: 200}}\n", "base.train.total_steps", "warmup"),
    ("name: t\nbase: {train: {adam_beta2: 1.0}}\n", "base.train.adam_beta2", "(0, 1)"),
    ("name: t\nbase: {train: {fused_adamw: true}}\n", "base.train.fused_adamw", "no update clipping"),
    ("name: t\ngrid: {sampler.omega: [0.05, -0.1]}\n", "sampler.omega", ">= 0"),
    ("name: t\nbogus: 1\n", "bogus", "valid keys"),
    ("name: t\nbase: [1, 2\n", "", "not valid YAML"),
    ("name: t\nbase: {seed: 1, train: {lr: 0.1}, seed: 2}\n", "", "key 'seed' appears twice"),
    ("name: t\nbase: {train: {lr: 0.1, lr: 0.2}}\n", "", "key 'lr' appears twice"),
    ("name: t\ntracking: {wandb: {project: p, mode: offlin}}\n", "tracking.wandb.mode", "'offline', 'online'"),
    ("name: t\ntracking: {wandb: {mode: offline}}\n", "tracking.wandb.project", "required"),
    ("name: t\ntracking: {wandb: {project: a/b}}\n", "tracking.wandb.project", "without /"),
    ("name: t\ntracking: {wandb: {project: p, team: x}}\n", "tracking.wandb.team", "project, entity, mode"),
    ("name: t\ntracking: {mlflow: {}}\n", "tracking.mlflow", "valid keys here: wandb"),
])
def test_bad_sweeps_name_file_key_and_allowed_values(tmp_path, text, key, allowed):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_sweep(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and allowed in msg, msg


def test_tracking_is_a_sweep_section_off_by_default_and_set_like_the_others(tmp_path):
    p = write(tmp_path, "name: t\n")
    assert load_sweep(p)[0].tracking.wandb is None
    sweep, runs = load_sweep(p, ["tracking.wandb.project=dp", "tracking.wandb.entity=lab"])
    assert (sweep.tracking.wandb.project, sweep.tracking.wandb.entity, sweep.tracking.wandb.mode) == ("dp", "lab", "offline")
    assert "tracking" not in to_dict(runs[0].config), "not a run's setting: turning it on changes no run"


def test_shipped_sweeps_are_valid():
    for path in sorted(SWEEPS.glob("*.yaml")):
        sweep, runs = load_sweep(path)
        assert runs, path


@pytest.mark.parametrize("args, needle", [
    (["--sweep", "does/not/exist.yaml"], "sweep file not found"),
    (["--sweep", "{bad}", "--set", "sampler.omega=-2"], "base.sampler.omega"),
    (["--sweep", "{bad}", "--set", "method.prune_factor=0"], "base.method.prune_factor"),
    (["--sweep", "{bad}", "--set", "train.total_steps=10"], "base.train.total_steps"),
    # smoke.yaml's grid sets method.name (zipped with branch_at): the grid would win silently
    (["--sweep", "{bad}", "--set", "method.name=dp"], "the grid also sets it (grid key 'method.name,method.branch_at')"),
    (["--sweep", "{bad}", "--set", "name=x"], "--set name: a run's name comes from its grid values"),
    (["--sweep", "{latin1}"], "not UTF-8 text"),
])
def test_launch_rejects_bad_input_with_exit_2_one_line_and_writes_nothing(tmp_path, args, needle):
    good = SWEEPS / "smoke.yaml"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    args = [a.replace("{bad}", str(good)).replace("{latin1}", str(latin1)) for a in args]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dp_hpc.launch", *args, "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_relaunch_with_changed_values_is_refused_naming_the_keys(tmp_path):
    from dp_hpc.preflight import config_changes
    from dp_hpc.config import dump_run_config

    cfg = from_dict(RunConfig, {"method": {"budget": 800}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_run_config(cfg))
    assert config_changes(path, cfg) == []
    path.write_text(path.read_text().replace("  omega: 0.05\n", ""))  # a key added to the code later
    assert config_changes(path, cfg) == []
    other = from_dict(RunConfig, {"method": {"budget": 900}, "seed": 3})
    assert config_changes(path, other) == ["method.budget", "seed"]


def test_other_commands_reject_bad_input_with_exit_2_one_line(tmp_path):
    cases = [(["-m", "dp_hpc.train", "--run-dir", str(tmp_path / "missing")], "not a run folder"),
             (["-m", "analysis.theory", "--p", "1.5", "--out", str(tmp_path / "th")], "--p must be in (0, 1]"),
             (["-m", "analysis.theory", "--d", "-3", "--out", str(tmp_path / "th")], "--d must be >= 1"),
             (["-m", "dp_hpc.cancel", str(tmp_path / "missing")], "is not a sweep folder")]
    for args, needle in cases:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert not (tmp_path / "th").exists()


def test_dry_run_into_a_closed_pipe_exits_quietly():
    """`--dry-run | head -1`: the reader goes away before the output ends. Deterministic here: the
    pipe's read end is closed before the launcher writes anything."""
    import os

    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "dp_hpc.launch", "--sweep", str(SWEEPS / "digits.yaml"), "--dry-run"],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 0 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_list_keys_names_every_key_with_its_type_default_and_help():
    """Read from the dataclasses: every key a run config or a sweep section has, none without help."""
    from dp_hpc.config import SweepConfig, flatten
    from dp_hpc.config.keys import sweep_keys

    keys = {k.key: k for k in sweep_keys()}
    run_keys = set(flatten(to_dict(RunConfig()))) - {"name"}
    sweep = SweepConfig(name="x", base=RunConfig(), grid=[])
    own = {f"{section}.{k}" for section in ("executor", "slurm") for k in flatten(to_dict(getattr(sweep, section)))}
    empty_mappings = {f"slurm.{kind}.additional_parameters" for kind in ("generation", "training", "coordinator")}
    optional = {f"tracking.wandb.{k}" for k in ("project", "entity", "mode")}  # a section whose default is null
    assert run_keys | own | {"name", "grid"} | empty_mappings | optional == set(keys)  # flatten() drops empty mappings
    assert not [k for k, d in keys.items() if not d.help], "a key without help text"
    assert keys["slurm.coordinator.time_min"].default == 1440, "a section's own defaults, not its class's"
    assert keys["train.total_steps"].default == RunConfig().train.total_steps
    r = subprocess.run([sys.executable, "-m", "dp_hpc.launch", "--list-keys"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "executor.warm_start: bool = True" in r.stdout, r.stderr
    assert all(f"\n{k}: " in "\n" + r.stdout for k in keys)


def test_print_config_prints_each_runs_resolved_config_and_writes_nothing(tmp_path):
    import yaml

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dp_hpc.launch", "--sweep", str(SWEEPS / "digits.yaml"), "--print-config",
                        "--set", "train.total_steps=700", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _, runs = load_sweep(SWEEPS / "digits.yaml", ["train.total_steps=700"])
    printed = [yaml.safe_load(doc.split("\n", 1)[1]) for doc in r.stdout.split("# run ")[1:]]
    assert [p["name"] for p in printed] == [run.name for run in runs]
    assert all(p == to_dict(run.config) and p["train"]["total_steps"] == 700 for p, run in zip(printed, runs))
    assert not out.exists()


def test_dry_run_runs_the_launchs_checks_and_exits_2_where_the_launch_would(tmp_path):
    """A run folder written with other settings: the launch refuses it (exit 2), so the dry run does
    too, after the plan; unchanged, the dry run exits 0. Nothing is written either way."""
    from dp_hpc.config import dump_run_config

    smoke = SWEEPS / "smoke.yaml"
    _, runs = load_sweep(smoke)
    folder = tmp_path / "out" / "smoke" / runs[0].name
    folder.mkdir(parents=True)
    changed = from_dict(RunConfig, {**to_dict(runs[0].config), "seed": 7})
    (folder / "config.yaml").write_text(dump_run_config(changed))
    cmd = [sys.executable, "-m", "dp_hpc.launch", "--sweep", str(smoke), "--out", str(tmp_path / "out"), "--dry-run"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "other values of seed" in r.stderr and "the launch would stop here" in r.stdout, r.stderr
    assert runs[0].name in r.stdout, "the plan is printed first"
    (folder / "config.yaml").write_text(dump_run_config(runs[0].config))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "smoke").iterdir()) == [runs[0].name]
