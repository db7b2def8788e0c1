"""The ``dropout`` spec field: its bounds, where the layers go, and that it acts only in
training mode."""

import pydantic
import pytest
import torch
from torch import nn

from bncore.models import build_model, parameter_count
from bncore.spec import JobSpec, ModelSpec


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_must_be_in_0_to_1(rate):
    with pytest.raises(pydantic.ValidationError) as caught:
        JobSpec(model={"dropout": rate})
    (error,) = caught.value.errors()
    assert error["loc"] == ("model", "dropout")
    assert ("less than 1" if rate >= 1 else "greater than or equal to 0") in error["msg"]


def test_default_is_no_dropout_layers():
    assert ModelSpec().dropout == 0.0
    model = build_model(ModelSpec(), (1, 12), 10)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_one_dropout_after_each_hidden_nonlinearity(arch):
    spec = ModelSpec(arch=arch, hidden=[6, 6, 6], dropout=0.3)
    model = build_model(spec, (1, 8, 8), 10)
    assert [b.drop.p for b in model.blocks] == [0.3, 0.3, 0.3]
    # Dropout has no parameters: the count (and so the spec's own count) is unchanged.
    without = build_model(ModelSpec(arch=arch, hidden=[6, 6, 6]), (1, 8, 8), 10)
    assert parameter_count(model) == parameter_count(without)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_active_in_training_only(arch):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, hidden=[32], dropout=0.5, norm="none"), (1, 6), 10)
    x = torch.randn(16, 1, 6)
    model.train()
    assert not torch.equal(model(x), model(x))  # a fresh mask each pass
    # Half of the block's outputs are zeroed (the rest scaled by 2).
    out = model.blocks[0](x)
    assert 0.3 < (out == 0).float().mean().item() < 0.7
    model.eval()
    assert torch.equal(model(x), model(x))
