"""Bad params and execution settings fail the stage at once with one line naming the file, key and
problem: unknown keys and sections, wrong types, out-of-range values, YAML errors and alias bombs,
an unknown importance layer, a held-out class count the dataset cannot give, negative loader workers.

Each case runs a stage of the tiny project through ``niwt.cli.main`` as ``dvc.yaml`` types it and
asserts exit status 2, no traceback, no output left behind and, where marked, the project untouched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from _project import Project, assert_failed_cleanly, cli, stage_argv, write_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import REPO  # noqa: E402

pytestmark = pytest.mark.usefixtures("_quiet")


# ------------------------------------------------------------------------------ params files


PARAM_CASES = {
    "unknown section": ({"finetuen": {"epochs": 2}}, r"params\.yaml: unknown key 'finetuen'; valid keys: \['base'"),
    "unknown key": ({"finetune": {"epoch": 2}},
                    r"params\.yaml\.finetune: unknown key 'epoch'; valid keys: \[.*'epochs'"),
    "nested unknown key": ({"data": {"synthetic": {"n_clases": 5}}},
                           r"params\.yaml\.data\.synthetic: unknown key 'n_clases'"),
    "string for an integer": ({"finetune": {"epochs": "two"}},
                              r"params\.yaml\.finetune\.epochs: expected an integer, got str 'two'"),
    "float for an integer": ({"inject": {"pool_size": 40.5}},
                             r"params\.yaml\.inject\.pool_size: expected an integer, got float 40\.5"),
    "bool for an integer": ({"finetune": {"batch_size": True}},
                            r"params\.yaml\.finetune\.batch_size: expected an integer, got bool True"),
    "string for a bool": ({"finetune": {"amp": "yes"}}, r"params\.yaml\.finetune\.amp: expected true/false"),
    "not one of the choices": ({"finetune": {"mode": "head"}},
                               r"params\.yaml\.finetune\.mode: 'head' is not one of \['fixed', 'full', 'none'\]"),
    "execution setting in params": ({"base": {"device": "cpu"}},
                                    r"params\.yaml\.base: unknown key 'device'; valid keys: \['seed'\]"),
    "section not a mapping": ({"model": 3}, r"params\.yaml\.model: expected a mapping, got int 3"),
    "scalar for a list": ({"inject": {"methods": "niwt"}}, r"params\.yaml\.inject\.methods: expected a list"),
    "unknown inject method": ({"inject": {"methods": ["niwt", "nwit"]}},
                              r"params\.yaml: inject\.methods: unknown \['nwit'\]"),
    "non-positive batch size": ({"finetune": {"batch_size": 0}},
                                r"params\.yaml: finetune\.batch_size must be positive"),
    # bounds a real run never needs: beyond them a run would crash, fill the disk or never end
    "negative seed": ({"base": {"seed": -1}}, r"params\.yaml: base\.seed must be between 0 and 2\^32-1 = 4294967295"),
    "seed above 2^32-1": ({"base": {"seed": 2**32}}, r"params\.yaml: base\.seed must be between 0 and 2\^32-1"),
    "image size in the millions": ({"model": {"image_size": 16_000_000}},
                                   r"params\.yaml: model\.image_size must be between 16 and 2048 \(a real run never "
                                   r"needs more\), got 16000000"),
    "image size 16e6 (YAML reads a string)": ({"model": {"image_size": "16e6"}},
                                              r"params\.yaml\.model\.image_size: expected an integer, got str '16e6'"),
    "epochs 1e30": ({"finetune": {"epochs": 10**30}},
                    r"params\.yaml: finetune\.epochs must be between 0 and 10000 \(a real run never needs more\)"),
    "epochs 1.0e30 (a float)": ({"finetune": {"epochs": 1.0e30}},
                                r"params\.yaml\.finetune\.epochs: expected an integer, got float 1e\+30"),
    "negative head epochs": ({"finetune": {"head_epochs": -3}}, r"params\.yaml: finetune\.head_epochs must be >= 0"),
    "inject lr 0 (nothing would learn)": ({"inject": {"lr": [0.0, 0.01]}},
                                          r"params\.yaml: inject\.lr: candidates must be between 1e-12 and 1000\.0, "
                                          r"got \[0\.0\]"),
    "num_workers in params (an execution setting: NIWT_WORKERS)": (
        {"finetune": {"num_workers": -1}}, r"params\.yaml\.finetune: unknown key 'num_workers'"),
}


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bad_params_name_file_and_key(case: str, proj: Project, tmp_path: Path,
                                      capsys: pytest.CaptureFixture, untouched: None) -> None:
    override, pattern = PARAM_CASES[case]
    params = write_params(tmp_path / "params.yaml", override)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, re.escape(str(tmp_path)) + "/" + pattern, out)


def test_params_not_yaml_or_missing(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("finetune: {epochs: [\n")
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, r"params\.yaml: not valid YAML", out)
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, tmp_path / "absent.yaml"))
    assert_failed_cleanly(rc, err, r"absent\.yaml: params file not found", out)


def test_duplicate_params_key_is_an_error(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_params(tmp_path / "params.yaml")
    # the second value would make the run fail fast if the duplicate were silently accepted
    params.write_text(params.read_text().replace("  epochs: 2\n", "  epochs: 2\n  epochs: 0\n", 1))
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, r"params\.yaml.*duplicate.*epochs", out)


def test_yaml_alias_bomb_in_params_is_refused_at_once(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     untouched: None) -> None:
    """YAML aliases are refused as soon as the first one is read, so an alias bomb (which DVC would
    expand to gigabytes) fails within 5 s."""
    import time

    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        bomb.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text() + "bomb:\n" + "".join(f"  {line}\n" for line in bomb))
    out = tmp_path / "out"
    start = time.monotonic()
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert time.monotonic() - start < 5
    line = len((REPO / "params.yaml").read_text().splitlines()) + 3
    assert_failed_cleanly(rc, err, rf"^niwt finetune: error: \S*params\.yaml:{line}: YAML alias \*a is not allowed "
                                   r"in a params file \(DVC expands every alias", out)


# ----------------------------------------------------------------------------- model choices


def test_unknown_layer_lists_valid_layers(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          untouched: None) -> None:
    params = write_params(tmp_path / "params.yaml", {"extract": {"layer": "body.block9"}})
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("extract", proj, out, params))
    assert_failed_cleanly(rc, err, r"unknown importance layer 'body\.block9'; valid layers: body\.block1\.conv, "
                                   r".*body\.block4, body\.pool4", out)


def test_too_many_held_out_classes_adapts_with_a_note(proj: Project, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A limit that depends on the dataset's shape adapts to it, saying so, instead of failing after the
    stages before it ran (the README's own-data example has three seen classes)."""
    from niwt.cli import main
    from niwt.mapping.store import load_map

    params = write_params(tmp_path / "params.yaml", {"mapping": {"n_val_classes": 9}})
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main([str(a) for a in stage_argv("fit_mapping", proj, out, params)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert ("mapping.n_val_classes: 9 is more than the 9 seen classes allow (two stay to fit the map); "
            "holding out 7") in printed.out
    assert len(load_map(out / "mapping.pt").provenance.val_classes) == 7


# ------------------------------------------------------------------------ execution settings


@pytest.mark.parametrize("how", ["NIWT_WORKERS=-1", "--workers -1"])
def test_negative_loader_workers_is_one_line(how: str, proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, untouched: None) -> None:
    out = tmp_path / "out"
    argv = stage_argv("finetune", proj, out, proj.params)
    if how.startswith("NIWT_"):
        monkeypatch.setenv("NIWT_WORKERS", "-1")
    else:
        argv += ["--workers", "-1"]
    rc, err = cli(capsys, *argv)
    assert_failed_cleanly(rc, err, r"^niwt finetune: error: execution setting NIWT_WORKERS \(or --workers\) must be "
                                   r"between 0 and 512, got -1\n$", out)
