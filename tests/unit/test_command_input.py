"""The helper commands (``niwt layers``, ``niwt predict``) refuse impossible input in one line, exit 2,
before building a network or reading an image."""

from __future__ import annotations

from pathlib import Path

import pytest

from niwt.cli import main


def _run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("size", [100_000, -5, 8])
def test_layers_image_size_out_of_bounds_is_one_line(size: int, capsys: pytest.CaptureFixture) -> None:
    rc, err = _run(capsys, "layers", "--image-size", size)
    assert rc == 2 and err == f"niwt layers: error: --image-size must be between 16 and 2048, got {size}\n"


def test_predict_image_size_out_of_bounds_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, err = _run(capsys, "predict", tmp_path / "a.jpg", "--model", tmp_path / "m.pth", "--arch", "smallcnn",
                   "--image-size", 16_000_000)
    assert rc == 2 and err == "niwt predict: error: --image-size must be between 16 and 2048, got 16000000\n"


def test_predict_explain_into_a_file_is_one_line_and_touches_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    rc, err = _run(capsys, "predict", tmp_path / "a.jpg", "--model", tmp_path / "m.pt", "--explain", target)
    assert rc == 2 and err == f"niwt predict: error: --explain {target}: exists and is not a directory\n"
    assert target.read_text() == "root:x:0:0\n"


def test_third_party_noise_is_silenced_and_other_warnings_stay():
    import warnings

    from niwt.cli import quiet_third_party_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning,
                      stacklevel=1)
        warnings.warn("There is a performance drop because we have not yet implemented the batching rule for "
                      "aten::as_strided_", UserWarning, stacklevel=1)
        warnings.warn("a warning about your data", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning about your data"]


@pytest.mark.parametrize("name", ["bad/name with spaces", "a:b", "", "x" * 200])
def test_register_refuses_a_bad_model_name_before_mlflow(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("NIWT_TRACKING", raising=False)
    rc, err = _run(capsys, "register", "--model", tmp_path / "m.pt", "--name", name)
    assert rc == 2 and err.startswith(f"niwt register: error: --name {name!r}: a registered model name is")
    assert err.count("\n") == 1 and not (tmp_path / "m.db").exists()


def test_register_refuses_a_checkpoint_that_was_not_injected(tmp_path: Path, capsys, monkeypatch) -> None:
    from niwt.models.checkpoint import CheckpointMeta, save_checkpoint
    from niwt.models.networks import mlp

    save_checkpoint(tmp_path / "finetuned.pt", mlp(3, 4, hidden=4), CheckpointMeta("mlp", ("a", "b", "c"), 3, 64,
                                                                                   hidden=4, in_features=4))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("NIWT_TRACKING", raising=False)
    repo = Path(__file__).resolve().parents[2]
    rc, err = _run(capsys, "register", "--model", tmp_path / "finetuned.pt", "--params", repo / "params.yaml")
    assert rc == 2 and err.splitlines()[-1] == (f"niwt register: error: {tmp_path / 'finetuned.pt'}: not an injected "
                                                "checkpoint (it predicts only its 3 seen classes); register one of "
                                                "models/injected/<method>.pt")
