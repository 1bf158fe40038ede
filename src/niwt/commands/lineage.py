"""``niwt lineage``: write each stage's code dependencies into ``dvc.yaml``, or check them.

A stage's code deps are exactly the files of ``niwt`` that run inside its computation: the import
closure of ``niwt/stages/<stage>.py`` (read with ``ast``, so a lazy import inside a function counts
as much as one at the top, and every package ``__init__`` on the way counts). The wiring around a
stage (the CLI, the params loader and bounds, the stage list, MLflow tracking, the commands) is not
in it, and no stage may import it (``tests/test_architecture.py``), so editing the wiring reruns
nothing. ``niwt lineage`` rewrites the ``src/niwt/...`` entries of every stage's ``deps:`` in place
(data deps, comments and everything else are kept); ``niwt lineage --check`` changes nothing and
exits 1, naming each stage and file, when ``dvc.yaml`` differs from what the code imports.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

CODE_PREFIX = "src/niwt/"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="the pipeline file (default: %(default)s)")
    sp.add_argument("--check", action="store_true", help="change nothing; exit 1 if dvc.yaml's code deps differ")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports when it runs (absolute names; ``from a import b`` yields ``a``
    and ``a.b``); imports under ``if TYPE_CHECKING:`` never run and do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for stmt in node.body for inner in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_path(src: Path, name: str) -> Path | None:
    """The file that defines module ``name`` under ``src`` (a module or a package's ``__init__``)."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# The injection-method loader imports the registry's method modules by name (importlib), which
# ``ast`` cannot see: importing the loader counts as importing every module the registry lists.
METHOD_LOADER = ("niwt", "injection", "methods", "__init__.py")
METHOD_REGISTRY = ("niwt", "injection", "registry.py")


def registered_methods(src: Path) -> list[Path]:
    """The files of the method modules ``registry.MODULES`` lists (read with ``ast``: a literal tuple)."""
    registry = src.joinpath(*METHOD_REGISTRY)
    for node in ast.walk(ast.parse(registry.read_text(encoding="utf-8"))):
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "MODULES" for t in targets):
                names = ast.literal_eval(node.value)
                return [f for name in names if (f := module_path(src, name)) is not None]
    return []


def closure(src: Path, path: Path, package: str = "niwt") -> set[Path]:
    """The files of ``package`` under ``src`` that ``path`` imports, transitively, itself included;
    importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``, so all three count."""
    seen: set[Path] = set()
    todo = [path]
    loader = src.joinpath(*METHOD_LOADER)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current == loader:
            todo += registered_methods(src)
        for name in imports(current):
            if name != package and not name.startswith(package + "."):
                continue
            parts = name.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := module_path(src, ".".join(parts[:i]))) is not None]
    return seen


def stage_code_deps(repo: Path, stage: str) -> list[str]:
    """The sorted repo-relative code deps of ``stage``: the import closure of its stage module."""
    src = repo / "src"
    files = closure(src, src / "niwt" / "stages" / f"{stage}.py")
    return sorted(f.relative_to(repo).as_posix() for f in files)


def rewrite(text: str, deps: dict[str, list[str]]) -> str:
    """``dvc.yaml`` text with each named stage's ``src/niwt/`` deps replaced by ``deps[stage]``.

    Line-based, so comments and layout stay as written: inside ``stages:``, a stage starts at a
    two-space key, its ``deps:`` list is the run of ``- item`` lines under the four-space ``deps:``
    key; the code entries go after the other entries of that list."""
    out: list[str] = []
    lines = text.splitlines()
    stage, i = None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line):
            stage = m.group(1)
        if stage in deps and re.match(r"^    deps:\s*$", line):
            out.append(line)
            i += 1
            items = []
            while i < len(lines) and re.match(r"^      - ", lines[i]):
                items.append(lines[i])
                i += 1
            kept = [item for item in items if not item.strip()[2:].strip().startswith(CODE_PREFIX)]
            out += kept + [f"      - {dep}" for dep in deps[stage]]
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def listed_code_deps(text: str) -> dict[str, list[str]]:
    """Each stage's ``src/niwt/`` deps as ``dvc.yaml`` lists them."""
    import yaml

    stages = yaml.safe_load(text)["stages"]
    return {name: sorted(d for d in body.get("deps", []) if isinstance(d, str) and d.startswith(CODE_PREFIX))
            for name, body in stages.items()}


def differences(text: str, deps: dict[str, list[str]]) -> list[str]:
    """One line per stage whose listed code deps differ from its import closure."""
    listed = listed_code_deps(text)
    problems = []
    for stage, want in deps.items():
        have = listed.get(stage, [])
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            problems.append(f"{stage}: missing {missing}, not imported {extra}")
    return problems


def command(args: argparse.Namespace) -> int:
    from niwt.pipeline import STAGES

    path = Path(args.dvc_yaml)
    if not path.is_file():
        print(f"niwt lineage: error: {path}: not found (run from the repository root or pass --dvc-yaml)",
              file=sys.stderr)
        return 2
    repo = path.absolute().parent
    if not (repo / CODE_PREFIX).is_dir():
        print(f"niwt lineage: error: {repo / CODE_PREFIX}: not found; the lineage is read from the source tree "
              "beside dvc.yaml", file=sys.stderr)
        return 2
    text = path.read_text(encoding="utf-8")
    deps = {s.name: stage_code_deps(repo, s.name) for s in STAGES}
    problems = differences(text, deps)
    if args.check:
        for line in problems:
            print(f"niwt lineage: {path}: {line}", file=sys.stderr)
        if problems:
            print("niwt lineage: run `niwt lineage` to write them", file=sys.stderr)
        return 1 if problems else 0
    if problems:
        path.write_text(rewrite(text, deps), encoding="utf-8")
    print(f"niwt lineage: {path}: " + (f"{len(problems)} stage(s) updated" if problems else "up to date"))
    return 0
