"""The package's structure: no import circle among its modules, no library module importing an entry
point, no source file over 450 lines, and the run folder spelled in one module (dp_hpc/layout.py)
only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dp_hpc"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Package modules that `name` imports anywhere in it (function-local imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if not node.level else name.rsplit(".", node.level)[0] + "." + node.module
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names} & mods.keys()
    return out - {name}


def test_no_module_of_the_package_imports_itself_through_others():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    # a package imports its parent packages implicitly: __init__ files are no edges back
    for m in mods:
        seen, stack = set(), [(m, (m,))]
        while stack:
            cur, path = stack.pop()
            for nxt in graph[cur]:
                assert nxt != m, f"import circle: {' -> '.join(path + (m,))}"
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + (nxt,)))


# the command-line modules (`python -m dp_hpc.<verb>`): they put the library together, and no library
# module imports them (an engine that depends on a command line cannot be used without it)
ENTRY_POINTS = {"dp_hpc.launch", "dp_hpc.status", "dp_hpc.cancel", "dp_hpc.verify", "dp_hpc.dry_run"}


def test_no_library_module_imports_an_entry_point():
    mods = _modules()
    library = {m: p for m, p in mods.items() if m not in ENTRY_POINTS and not m.endswith(".__main__")}
    offenders = [f"{m} imports {e}" for m, p in sorted(library.items())
                 for e in sorted(_imports(m, p, mods) & ENTRY_POINTS)]
    assert not offenders, ("library modules import entry points (move what they use into the library):\n"
                           + "\n".join(offenders))


MAX_LINES = 450
# files over MAX_LINES that another step of issue 23 is to split; remove each entry once it is
LONG_FILES_TO_SPLIT: set[str] = set()
LONG_FILES_KEPT = {"analysis/theory.py"}  # one self-contained idea: the random-matrix toy model of Fig. 3


def test_no_source_file_is_over_450_lines():
    too_long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_FILES_KEPT | LONG_FILES_TO_SPLIT:
            too_long.append(f"{rel}: {n} lines")
    assert not too_long, f"over {MAX_LINES} lines (split where its ideas part):\n" + "\n".join(too_long)


RUN_FOLDER_NAMES = {"sweep.yaml", "manifest.json", "launch.lock", "launcher.json", "coordinator.json", "logs",
                    "generators", "report", "job.json", "generator.json", "config.yaml", "state.json", "pool.zarr",
                    "pool_markers", "COMPLETE", "checkpoints", "metrics.jsonl", "eval.json", "test_predictions.npz", "train.lock", "generator.lock", "branches",
                    "branch.json", "torchrun", "state.pt", "train_state.json", "checkpoint.pt", "text_embeddings.pt",
                    "tensorboard", "wandb", "run_id", "code", "current", "progress.json"}
FOLDER_PREFIXES = {"step_", "round_", "chunk_", "round_*", "chunk_*.done", "*/config.yaml", "branches/round_*"}


def test_only_the_layout_module_spells_run_folder_names():
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]:
        if path == PACKAGE / "layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in RUN_FOLDER_NAMES or node.value.split("{")[0] in FOLDER_PREFIXES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "run-folder paths built outside dp_hpc/layout.py:\n" + "\n".join(offenders)


def test_a_run_and_its_branch_outs_know_their_sweep_folder(tmp_path):
    from dp_hpc.layout import SweepDir

    run = SweepDir(tmp_path / "out" / "s").run("dp-seed0")
    assert run.sweep == run.branch(2).sweep == SweepDir(tmp_path / "out" / "s")
