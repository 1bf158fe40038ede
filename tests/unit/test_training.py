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
