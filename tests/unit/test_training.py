"""The training loop: a head-only phase leaves the backbone exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from niwt.models.networks import small_cnn
from niwt.models.training import train_one_epoch

pytestmark = pytest.mark.usefixtures("single_thread")


def _epoch(frozen: bool) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = small_cnn(4, width=4, hidden=8, image_size=16)
    for prm in model.body.parameters():
        prm.requires_grad_(False)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    batches = [(torch.randn(6, 3, 16, 16) * 3 + 1, torch.randint(0, 4, (6,)), None) for _ in range(3)]
    opt = torch.optim.SGD(model.classifier.parameters(), lr=0.1)
    train_one_epoch(model, nn.CrossEntropyLoss(), opt, batches, torch.device("cpu"), 1, progress=False,
                    frozen=model.body if frozen else None)
    return before, model.body.state_dict()


def test_head_only_epoch_keeps_batch_norm_statistics() -> None:
    """finetune.mode: fixed trains the head on a frozen backbone: BN running stats stay put."""
    before, after = _epoch(frozen=True)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_without_freezing_batch_norm_statistics_move() -> None:
    """The failure the freeze prevents: ``model.train()`` alone updates the body's BN statistics."""
    before, after = _epoch(frozen=False)
    assert not torch.equal(before["block1.bn.running_mean"], after["block1.bn.running_mean"])


def _feature_loaders():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 6, generator=g), torch.arange(16) % 3, torch.arange(16))
    return DataLoader(data, batch_size=8, generator=g, shuffle=True), DataLoader(data, batch_size=8)


def test_a_diverging_run_stops_at_the_first_non_finite_loss() -> None:
    """finetune.lr_full 1e30: one line naming the epoch and the knob, before a NaN network is kept."""
    from niwt.models.finetuning import TrainingDiverged, train_phases
    from niwt.models.networks import mlp
    from niwt.params import FinetuneParams

    torch.manual_seed(0)
    model = mlp(3, 6, hidden=8)
    train, val = _feature_loaders()
    f = FinetuneParams(epochs=3, lr_full=1e30, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at full epoch \d \(learning rate 1e\+30\): "
                                               r"the weights diverged; lower finetune\.lr_full; nothing was written"):
        train_phases(model, f, train, val, torch.device("cpu"), log=lambda m: None)
    torch.manual_seed(0)
    acc, history = train_phases(mlp(3, 6, hidden=8), FinetuneParams(epochs=2), train, val, torch.device("cpu"),
                                log=lambda m: None)
    assert len(history) == 2 and 0 <= acc <= 1  # a sane learning rate trains as before


def test_user_weights_with_nan_are_refused_before_any_epoch() -> None:
    from niwt.models.finetuning import train_phases
    from niwt.models.networks import ModelError, mlp
    from niwt.params import FinetuneParams

    model = mlp(3, 6, hidden=8)
    with torch.no_grad():
        model.classifier.weight[1, 2] = float("nan")
    train, val = _feature_loaders()
    with pytest.raises(ModelError, match=r"model\.weights: NaN or infinite values in \['classifier\.weight'\]"):
        train_phases(model, FinetuneParams(mode="none"), train, val, torch.device("cpu"), log=lambda m: None)


def test_user_files_resolve_against_the_project_not_the_experiment_copy(tmp_path) -> None:
    """model.weights / model.class_names relative to the project root, like data.root: a `dvc exp run --temp`
    copy (under .dvc/tmp/exps/) lacks the user's untracked weights file, the workspace has it."""
    from niwt.models.finetuning import located
    from niwt.params import ModelParams

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    anchor = tmp_path / ".dvc" / "tmp" / "exps" / "tmpx1" / "models" / "finetuned.pt"
    m = located(ModelParams(weights="models/w.pth", class_names="models/w.txt"), anchor)
    assert (m.weights, m.class_names) == (str(tmp_path / "models/w.pth"), str(tmp_path / "models/w.txt"))
    assert located(ModelParams(), anchor) == ModelParams()  # none / imagenet / no class list stay as they are
    assert located(ModelParams(weights="/abs/w.pth", class_names="/abs/n.txt"), anchor).weights == "/abs/w.pth"
