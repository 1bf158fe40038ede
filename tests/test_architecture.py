"""The architecture, checked on the source: layering by imports, DVC lineage by import closure,
one stage list and one params owner per knob.

Imports are read with ``ast`` (top-level and function-local alike), so a lazy import inside a
function counts as much as one at the top of a module; for DVC lineage, an import only type
checkers run (``if TYPE_CHECKING:``) does not count: it never runs in a stage.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from niwt.params import Params, load_params, parse_params
from niwt.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = SRC / "niwt"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
CORE = ("data", "models", "importance", "mapping", "injection", "peers", "evaluation", "explain", "io")
ORCHESTRATION = ("prefect", "prefect_dask", "mlflow", "dvc", "flows", "tasks")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` yields ``a`` and ``a.b``);
    ``runtime_only``: without those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


LOADER = PKG / "injection" / "methods" / "__init__.py"


def registered_method_files() -> list[Path]:
    """The files of the method modules the registry lists (the ones inside ``niwt``)."""
    from niwt.injection.registry import MODULES

    return [found for m in MODULES if (found := module_path(m)) is not None]


def niwt_closure(path: Path) -> set[Path]:
    """The files of ``niwt`` that ``path`` imports, transitively (package ``__init__`` files included).

    The method loader (``niwt.injection.methods``) imports the registry's method modules by name,
    which ``ast`` cannot see: importing it counts as importing every one of them."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current == LOADER:
            todo += registered_method_files()
        for name in imports(current, runtime_only=True):
            if name != "niwt" and not name.startswith("niwt."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, ...
                found = module_path(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return seen


def layer_of(path: Path) -> str:
    parts = path.relative_to(PKG).parts
    if len(parts) == 1:
        return parts[0].removesuffix(".py")  # cli, params, __init__
    return "core" if parts[0] in CORE else parts[0]


SOURCES = sorted(PKG.rglob("*.py"))


def test_package_root_holds_only_entry_points_and_params() -> None:
    assert {p.name for p in PKG.glob("*.py")} == {"__init__.py", "cli.py", "params.py"}
    assert {p.parent.name for p in PKG.glob("*/__init__.py")} == set(CORE) | {"integration", "stages", "commands"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_layering(path: Path) -> None:
    """core -> (core, params); integration -> (+ MLflow); stages -> (+ integration, never each other);
    commands -> (core, integration); nothing in niwt imports flows or tasks."""
    layer = layer_of(path)
    mods = imports(path)
    top = {m.split(".")[0] for m in mods}
    niwt_parts = {m.split(".")[1] for m in mods if m.startswith("niwt.")}
    assert not top & {"flows", "tasks", "prefect", "prefect_dask"}, f"{path}: imports orchestration {top}"
    if layer in ("core", "params"):
        assert not top & set(ORCHESTRATION), f"{path}: the core imports {sorted(top & set(ORCHESTRATION))}"
        assert not niwt_parts & {"stages", "cli", "commands", "integration"}, f"{path}: core imports {niwt_parts}"
    if layer == "integration":
        assert not niwt_parts & {"stages", "cli", "commands"}, path
    if layer == "commands":
        assert not niwt_parts & {"stages", "cli"}, path
    if layer == "stages" and path.name != "__init__.py":
        stage_modules = {f"niwt.stages.{p.stem}" for p in (PKG / "stages").glob("*.py")} - {"niwt.stages.__init__"}
        others = mods & stage_modules
        assert not others, f"{path}: a stage imports another stage: {sorted(others)}"
        assert not niwt_parts & {"cli", "commands"}, path


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_dvc_deps_cover_the_import_closure_of_each_stage(stage: str) -> None:
    """Editing any file a stage imports (directly or not) makes `dvc status` report the stage."""
    deps = [d for d in DVC[stage]["deps"] if isinstance(d, str)]
    closure = niwt_closure(PKG / "stages" / f"{stage}.py") | niwt_closure(PKG / "cli.py")
    missing = sorted(p.relative_to(REPO).as_posix() for p in closure if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} does not depend on {missing}"


def test_stage_list_is_the_one_in_dvc_yaml_and_the_cli() -> None:
    import importlib
    import inspect

    from niwt.cli import PATHS, build_parser

    names = [s.name for s in STAGES]
    assert list(DVC) == names
    assert list(PATHS) == names
    for name in names:  # every path flag is a keyword of the stage's run()
        run = importlib.import_module(f"niwt.stages.{name}").run
        kwargs = [flag.lstrip("-").replace("-", "_") for flag, *_ in PATHS[name]]
        params = list(inspect.signature(run).parameters)
        assert params[:2] == ["p", "rt"] and set(kwargs) <= set(params), (name, params, kwargs)
    sub = next(a for a in build_parser()._actions if a.dest == "stage")
    assert set(names) <= set(sub.choices)
    for stage in STAGES:
        assert DVC[stage.name]["cmd"].split()[:2] == ["niwt", stage.name]
        assert tuple(DVC[stage.name].get("params", [])) == stage.params, stage.name


def test_prefect_uses_the_stage_list() -> None:
    from tasks.dvc_stage import PIPELINE_STAGES

    assert tuple(PIPELINE_STAGES) == tuple(s.name for s in STAGES)


def test_every_params_section_has_one_owner_and_execution_settings_have_none() -> None:
    """Each section is owned by exactly one stage (tracking: by the CLI only, no stage); base.seed is
    the one shared key; ``validate``, which rebuilds finetune .. inject on its validation problem,
    reads exactly the sections of the stages it replays, plus its own; nothing execution-only is in
    params.yaml."""
    owners: dict[str, list[str]] = {}
    replay = [s for s in STAGES if s.name in ("finetune_validation", "validate")]
    for stage in STAGES:
        if stage in replay:
            continue
        for key in stage.params:
            owners.setdefault(key, []).append(stage.name)
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    assert set(shared) == {"base.seed"}, shared
    # a single key inside another stage's section counts too; the allowed ones: the fingerprint stats
    # the raw data where prepare reads it (prepare owns `data`), and the cache is decoded at the size
    # the network takes (finetune owns `model`)
    inside = sorted((k, s) for k in owners for s in owners if k != s and k.startswith(s + "."))
    assert inside == [("data.name", "data"), ("data.root", "data"), ("model.image_size", "model")], inside
    assert [f.name for f in dataclasses.fields(Params().base)] == ["seed"]
    replayed = {k: owners[k] for s in replay for k in s.params if k != "base.seed" and not k.startswith("validate")}
    assert sorted({o for v in replayed.values() for o in v}) == ["extract", "finetune", "fit_mapping", "inject"]
    own = [k for s in replay for k in s.params if k.startswith("validate")]
    assert len(own) == len(set(own)) and not [k for k in owners if k.startswith("validate")]
    assert {k.split(".")[1] for k in own} == {f.name for f in dataclasses.fields(Params().validate)}
    listed = {k.split(".")[0] for k in owners} | {"validate"}
    assert {f.name for f in dataclasses.fields(Params)} - listed == {"tracking"}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    keys = {f"{section}.{key}" for section, body in raw.items() for key in body}
    for word in ("device", "num_workers", "workers", "runner", "dask_address", "dask_workers", "progress"):
        assert not [k for k in keys if k.endswith("." + word)], f"execution setting {word!r} in params.yaml"


def test_defaults_live_in_params_yaml() -> None:
    """The dataclass defaults equal params.yaml: a partial params file means the same as the full one."""
    assert parse_params({}) == load_params(REPO / "params.yaml")


def test_method_registry_is_the_one_list() -> None:
    """Each registered module declares its entry (name = module name, callables, one set of
    hyperparameter names per grid); params default to every registered method, in registry order."""
    from niwt.injection.methods import candidates, method
    from niwt.injection.registry import METHODS, MODULES, Method, names

    assert names() == tuple(METHODS) == ("niwt", "icis", "regression", "regression_rescaled", "eszsl")
    assert all(m.startswith("niwt.injection.methods.") for m in MODULES)
    p = Params()
    for name in names():
        entry = method(name)
        assert isinstance(entry, Method) and entry.name == name and entry.label, entry
        assert callable(entry.build) and callable(entry.settings), entry
        assert candidates(name, p.inject, p.mapping), name
    assert p.inject.methods == tuple(METHODS)
    assert load_params(REPO / "params.yaml").inject.methods == tuple(METHODS)


def test_no_stage_names_a_method() -> None:
    """What differs between methods is declared by each method's module; a stage's code holds no
    method name (docstrings aside), so adding a method touches no stage."""
    from niwt.injection.registry import names

    for path in sorted((PKG / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        named = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings
                        and isinstance(n.value, str) and n.value in names()})
        assert not named, f"{path.relative_to(REPO)} names methods {named}: declare it in the method's module"


def test_dvc_plots_list_the_pipelines_methods() -> None:
    """The per-method plot lines of dvc.yaml are generated from params.yaml (scripts/dvc_method_plots.py)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "dvc_method_plots.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dvc_baseline_is_committed() -> None:
    """`dvc metrics diff main` and `dvc exp show` compare against a committed reference run:
    dvc.lock of every stage and the headline metrics of every method."""
    from niwt.injection.registry import METHODS

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) == {s.name for s in STAGES}
    for method in METHODS:
        headline = json.loads((REPO / "metrics" / "gzsl" / f"{method}.json").read_text())
        assert set(headline) == {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"}
        assert all(isinstance(v, float) and round(v, 4) == v for v in headline.values())
    config = (REPO / ".dvc" / "config").read_text()
    assert "remote = local" in config and "niwt-dvc-remote" in config
