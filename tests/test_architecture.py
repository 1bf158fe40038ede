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

from niwt.commands.lineage import closure, differences, imports, rewrite, stage_code_deps
from niwt.config.load import load_params, parse_params
from niwt.params import Params
from niwt.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = SRC / "niwt"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
CORE = ("data", "models", "importance", "mapping", "injection", "peers", "evaluation", "explain", "io", "distributed")
ORCHESTRATION = ("prefect", "prefect_dask", "mlflow", "dvc", "flows", "tasks")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(path: Path) -> str:
    parts = path.relative_to(PKG).parts
    if len(parts) == 1:
        return parts[0].removesuffix(".py")  # cli, params, errors, pipeline, __init__
    return "core" if parts[0] in CORE else parts[0]


SOURCES = sorted(PKG.rglob("*.py"))


def test_package_root_holds_only_entry_points_schema_and_errors() -> None:
    assert {p.name for p in PKG.glob("*.py")} == {"__init__.py", "cli.py", "params.py", "errors.py", "pipeline.py"}
    assert {p.parent.name for p in PKG.glob("*/__init__.py")} == set(CORE) | {"integration", "stages", "commands",
                                                                              "config"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_layering(path: Path) -> None:
    """errors -> nothing; params (the schema) -> errors; core -> (core, params, errors); config and
    integration (wiring) -> (+ core); stages -> (core, params, errors, never each other, never the
    wiring: it stays out of their DVC lineage); commands -> (core, config, integration); nothing in
    niwt imports flows or tasks."""
    layer = layer_of(path)
    mods = imports(path)
    top = {m.split(".")[0] for m in mods}
    niwt_parts = {m.split(".")[1] for m in mods if m.startswith("niwt.")}
    assert not top & {"flows", "tasks", "prefect", "prefect_dask"}, f"{path}: imports orchestration {top}"
    if layer == "errors":
        assert not mods - {"__future__"}, f"{path}: errors must import nothing, imports {sorted(mods)}"
    if layer == "params":
        assert niwt_parts <= {"errors"}, f"{path}: the schema imports {niwt_parts}"
    if layer in ("core", "params"):
        assert not top & set(ORCHESTRATION), f"{path}: the core imports {sorted(top & set(ORCHESTRATION))}"
        assert not niwt_parts & {"stages", "cli", "commands", "integration", "config", "pipeline"}, \
            f"{path}: core imports {niwt_parts}"
    if layer == "config":
        assert not niwt_parts & {"stages", "cli", "commands", "integration"}, path
    if layer == "integration":
        assert not niwt_parts & {"stages", "cli", "commands"}, path
    if layer == "commands":
        assert not niwt_parts & {"stages", "cli"}, path
    if layer == "stages" and path.name != "__init__.py":
        stage_modules = {f"niwt.stages.{p.stem}" for p in (PKG / "stages").glob("*.py")} - {"niwt.stages.__init__"}
        others = mods & stage_modules
        assert not others, f"{path}: a stage imports another stage: {sorted(others)}"
        wiring = niwt_parts & {"cli", "commands", "config", "pipeline", "integration"}
        assert not wiring, f"{path}: a stage imports the wiring {sorted(wiring)} (it would enter its DVC lineage)"


def test_dvc_code_deps_are_exactly_each_stages_import_closure() -> None:
    """Editing a file a stage runs reruns the stage, and nothing else does: `niwt lineage` wrote the
    deps, and they still match the code (else: run `niwt lineage`)."""
    deps = {s.name: stage_code_deps(REPO, s.name) for s in STAGES}
    assert differences((REPO / "dvc.yaml").read_text(), deps) == []


@pytest.mark.parametrize("stage", ["finetune", "finetune_validation"])
def test_training_lineage_holds_no_wiring_and_nothing_downstream(stage: str) -> None:
    """Editing the CLI, MLflow tracking, the params loader or a method's label never retrains."""
    code = [d for d in DVC[stage]["deps"] if d.startswith("src/")]
    for part in ("injection/", "mapping/", "explain/", "integration/", "config/", "commands/", "peers/"):
        assert not [d for d in code if d.startswith("src/niwt/" + part)], (stage, part)
    for wiring in ("src/niwt/cli.py", "src/niwt/pipeline.py"):
        assert wiring not in code, (stage, wiring)


def test_lineage_reads_lazy_imports_and_package_inits(tmp_path: Path) -> None:
    """The closure on a hand-made package: a function-local import counts, package ``__init__`` files
    on the way count, a module that is not imported does not."""
    pkg = tmp_path / "niwt"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from niwt.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "top.py").write_text("from niwt.sub.a import f\n")
    found = {p.relative_to(tmp_path).as_posix() for p in closure(tmp_path, pkg / "top.py")}
    assert found == {"niwt/top.py", "niwt/__init__.py", "niwt/sub/__init__.py", "niwt/sub/a.py", "niwt/sub/b.py"}
    assert imports(pkg / "sub" / "b.py") == {"os"}


def test_lineage_rewrite_keeps_data_deps_and_comments() -> None:
    text = ("stages:\n  # a comment\n  one:\n    cmd: x\n    deps:\n      - data/in\n      - src/niwt/old.py\n"
            "    outs:\n      - out\n  two:\n    deps:\n      - src/niwt/keep.py\n")
    new = rewrite(text, {"one": ["src/niwt/a.py", "src/niwt/b.py"]})
    assert new == ("stages:\n  # a comment\n  one:\n    cmd: x\n    deps:\n      - data/in\n      - src/niwt/a.py\n"
                   "      - src/niwt/b.py\n    outs:\n      - out\n  two:\n    deps:\n      - src/niwt/keep.py\n")
    assert differences(new, {"one": ["src/niwt/a.py", "src/niwt/b.py"]}) == []
    assert differences(text, {"one": ["src/niwt/a.py"]}) == ["one: missing ['src/niwt/a.py'], not imported "
                                                              "['src/niwt/old.py']"]


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
    # the raw data where prepare reads it (prepare owns `data`: name, root and the xlsa17 dataset), and
    # the cache is decoded at the size the network takes (finetune owns `model`),
    inside = sorted((k, s) for k in owners for s in owners if k != s and k.startswith(s + "."))
    # and the files params name (model.weights, model.class_names, inject.pool), fingerprinted by content
    # so that editing one reruns its readers; and the importance layer against the architecture (extract.layer
    # on model.arch at model.width/hidden), which fingerprint checks before any training (fingerprint always
    # runs, and its outputs do not change with these keys: nothing downstream reruns for them)
    assert inside == [("data.dataset", "data"), ("data.name", "data"), ("data.root", "data"),
                      ("extract.allow_degenerate", "extract"), ("extract.layer", "extract"),
                      ("inject.pool", "inject"), ("model.arch", "model"), ("model.class_names", "model"),
                      ("model.hidden", "model"), ("model.image_size", "model"), ("model.weights", "model"),
                      ("model.width", "model")], inside
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
    hyperparameter names per grid); params default to every registered method but the opt-in ones
    (the classic compatibility models), in registry order."""
    from niwt.injection.methods import candidates, method
    from niwt.injection.registry import METHODS, MODULES, OPT_IN, Method, defaults, names

    assert names() == tuple(METHODS) == ("niwt", "icis", "regression", "regression_rescaled", "eszsl",
                                         "devise", "ale", "sje", "sae")
    assert OPT_IN <= set(names()) and defaults() == ("niwt", "icis", "regression", "regression_rescaled", "eszsl")
    assert all(m.startswith("niwt.injection.methods.") for m in MODULES)
    p = parse_params({})
    for name in names():
        entry = method(name)
        assert isinstance(entry, Method) and entry.name == name and entry.label, entry
        assert callable(entry.build) and callable(entry.settings), entry
        assert candidates(name, p.inject, p.mapping), name
    assert p.inject.methods == defaults()
    assert load_params(REPO / "params.yaml").inject.methods == defaults()


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
    dvc.lock of every stage and the headline metrics of every method the default run runs."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) == {s.name for s in STAGES}
    for method in load_params(REPO / "params.yaml").inject.methods:
        headline = json.loads((REPO / "metrics" / "gzsl" / f"{method}.json").read_text())
        assert set(headline) == {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"}
        assert all(isinstance(v, float) and round(v, 4) == v for v in headline.values())
    config = (REPO / ".dvc" / "config").read_text()
    assert "remote = local" in config and "niwt-dvc-remote" in config
