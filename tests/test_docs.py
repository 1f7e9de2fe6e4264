"""README and CI agree (the set-up commands), and the documentation (README.md, docs/*.md) stays honest:
every link and image resolves, every command and sweep file named exists, every quoted flag is in its --help."""

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\n[^#]*?```bash\n(.*?)```", readme, re.S)
    assert block, "README must open with the two set-up commands in a bash block"
    launch_cmd, test_cmd = [line.strip() for line in block.group(1).strip().splitlines()]
    assert "dp_hpc.launch --sweep sweeps/digits.yaml" in launch_cmd
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines, f"{test_cmd!r} is not a line of .ci/run"


# --- The documentation stays honest: links, commands, sweep files and flags that exist. ---

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INVOCATION = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)|(?<![\w/.-])(?:python3?\s+)?(bench/\w+\.py)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
REPO_PACKAGES = ("dp_hpc", "analysis", "bench", "tests")


def split_fences(text: str) -> tuple[str, list[str]]:
    """The prose of a Markdown page (code blocks blanked) and the lines of its code blocks."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            prose.append("")
            continue
        (code if inside else prose).append(line)
        if inside:
            prose.append("")
    return "\n".join(prose), code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = heading.strip().replace("`", "").replace("*", "").lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose, re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return frozenset(out)


def command_lines(text: str) -> list[str]:
    """Every command line a page quotes: code-block lines (a line starting with '[' or '--' continues
    the one before, as does a trailing backslash) and inline code spans."""
    prose, code = split_fences(text)
    lines: list[str] = []
    joining = False
    for line in code:
        s = line.strip()
        if lines and (joining or s.startswith(("[", "--"))):
            lines[-1] = lines[-1].rstrip("\\ ") + " " + s
        else:
            lines.append(s)
        joining = s.endswith("\\")
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return lines


def invocations(line: str):
    """(module or script, the flags quoted after it on the same command line) for each invocation."""
    line = re.split(r"\s#\s|\s#$", line)[0]  # a shell comment
    found = list(INVOCATION.finditer(line))
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(line)
        rest = re.split(r"&&|;", line[m.end():end])[0]
        yield m.group(1) or m.group(2), FLAG.findall(rest)


@functools.cache
def help_text(target: str) -> str:
    args = [target, "--help"] if target.endswith(".py") else ["-m", target, "--help"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{target} --help failed: {r.stderr[-500:]}"
    return r.stdout


def module_exists(module: str) -> bool:
    if module.split(".")[0] in REPO_PACKAGES:
        base = ROOT.joinpath(*module.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    return importlib.util.find_spec(module) is not None


def test_every_doc_page_is_checked_and_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert len(DOCS) > 10
    for page in DOCS[1:]:
        assert f"](docs/{page.name})" in readme, f"README's index does not link docs/{page.name}"


def test_links_and_images_resolve():
    problems = []
    for page in DOCS:
        prose, _ = split_fences(page.read_text())
        for target in LINK.findall(prose):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{page.relative_to(ROOT)}: link {target!r}: {path} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{page.relative_to(ROOT)}: link {target!r}: no heading #{anchor} in {path or page.name}")
    assert not problems, "\n".join(problems)


def test_commands_and_sweep_files_named_exist():
    problems = []
    for page in DOCS:
        text = page.read_text()
        for line in command_lines(text):
            for target, _ in invocations(line):
                exists = (ROOT / target).is_file() if target.endswith(".py") else module_exists(target)
                if not exists:
                    problems.append(f"{page.relative_to(ROOT)}: {target!r} (in {line!r}) does not exist")
        for sweep in set(re.findall(r"sweeps/[\w.-]+\.ya?ml", text)):
            if not (ROOT / sweep).is_file():
                problems.append(f"{page.relative_to(ROOT)}: {sweep} does not exist")
    assert not problems, "\n".join(problems)


def test_every_flag_quoted_for_a_command_is_one_its_help_lists():
    problems = []
    for page in DOCS:
        for line in command_lines(page.read_text()):
            for target, flags in invocations(line):
                ours = target.endswith(".py") or target.split(".")[0] in REPO_PACKAGES
                if not flags or not ours or not (target.endswith(".py") or module_exists(target)):
                    continue
                text = help_text(target)
                for flag in flags:
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                        problems.append(f"{page.relative_to(ROOT)}: {target} {flag} (in {line!r}) is not in its --help")
    assert not problems, "\n".join(problems)
