"""Tests for nas_prune.models: every zoo model, search-space files, factories and specs."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from nas_prune.errors import NasPruneError
from nas_prune.models import (
    MODELS,
    SEARCH_SPACE_DIR,
    ShuffleUnit,
    build_from_spec,
    channel_shuffle,
    create_model,
    load_search_space,
    model_names,
    model_spec,
)


def tiny_factory(in_channels: int = 3, num_classes: int = 10, hidden: int = 4) -> nn.Module:
    """A user-style factory, imported by ``create_model`` as ``test_models:tiny_factory``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(hidden, num_classes),
    )


def fixed_factory() -> nn.Module:
    """A factory that takes no arguments (it fixes input channels and classes itself)."""
    return tiny_factory(1, 3)


not_callable = 42


def returns_string(in_channels: int = 3, num_classes: int = 10) -> str:
    return "not a model"


def test_registry_is_sorted_and_complete():
    assert model_names() == sorted(MODELS)
    assert {"convnet", "resnet20", "resnet56", "vgg11_bn", "vgg16_bn", "mobilenetv2"} <= set(MODELS)
    assert {"resnext20", "shufflenetv2"} <= set(MODELS)


def test_resnext_and_shufflenet_have_the_layers_they_are_named_for():
    resnext = create_model("resnext20")
    grouped = [m for m in resnext.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels]
    assert len(grouped) == 6 and {m.groups for m in grouped} == {8}
    shuffle = create_model("shufflenetv2")
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert sum(isinstance(m, ShuffleUnit) for m in shuffle.modules()) == 6


@pytest.mark.parametrize("name", model_names())
def test_zoo_model(name):
    with torch.no_grad():
        for shape, classes in [((1, 28, 28), 10), ((3, 32, 32), 7)]:
            model = create_model(name, in_channels=shape[0], num_classes=classes).eval()
            assert model(torch.randn(2, *shape)).shape == (2, classes)

    # A spec is plain data, survives JSON, and rebuilds a model with the same state_dict layout.
    spec = model_spec(name, 1, 10, (1, 28, 28))
    assert spec == {
        "model": name,
        "kwargs": {"in_channels": 1, "num_classes": 10},
        "input_shape": [1, 28, 28],
    }
    assert json.loads(json.dumps(spec)) == spec
    rebuilt, fresh = build_from_spec(spec), create_model(name, in_channels=1, num_classes=10)
    state = rebuilt.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(state)


@pytest.mark.parametrize("name", model_names())
def test_search_space_file(name):
    space = load_search_space(name)
    assert (SEARCH_SPACE_DIR / f"{name}.yaml").is_file()
    assert (
        {"model", "round_to", "min_fraction", "frozen"}
        <= set(space)
        <= {"model", "round_to", "min_fraction", "grid", "frozen"}
    )
    assert space["model"] == name
    assert isinstance(space["round_to"], int) and space["round_to"] >= 1
    assert 0 < space["min_fraction"] <= 1
    grid = space.get("grid", [1.0])
    assert grid == sorted(grid) and all(0 < f <= 1 for f in grid) and grid[-1] == 1.0
    assert isinstance(space["frozen"], list)


def test_search_space_missing():
    assert load_search_space(f"{__name__}:tiny_factory") is None
    assert load_search_space("no_such_model") is None


def test_factory_from_test_module():
    model = create_model(f"{__name__}:tiny_factory", in_channels=1, num_classes=5, hidden=6)
    assert isinstance(model, nn.Sequential) and model[0].out_channels == 6
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)

    spec = model_spec(f"{__name__}:tiny_factory", 1, 5, [1, 28, 28], hidden=6)
    assert spec["kwargs"] == {"in_channels": 1, "num_classes": 5, "hidden": 6}
    assert build_from_spec(spec).state_dict()["0.weight"].shape == (6, 1, 3, 3)


def test_factory_without_arguments():
    model = create_model(f"{__name__}:fixed_factory", in_channels=3, num_classes=10)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_factory_from_user_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def net(**kwargs):
                return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("user_nets:net", in_channels=4, num_classes=2)
    assert model.weight.shape == (2, 4)
    sys.modules.pop("user_nets", None)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet21", {}, "unknown model 'resnet21'; choose convnet, "),
        ("no_such_pkg.nets:net", {}, "cannot import module 'no_such_pkg.nets'"),
        (f"{__name__}:missing", {}, "has no attribute 'missing'; its callables are: "),
        (f"{__name__}:not_callable", {}, "is a int, not a callable"),
        (f"{__name__}:returns_string", {}, "returned a str, not a torch nn.Module"),
        (f"{__name__}:", {}, "not of the form pkg.module:factory"),
        ("convnet", {"width": 2}, "does not accept width; it accepts: in_channels, num_classes"),
    ],
)
def test_bad_model_raises_helpful_error(name, kwargs, message):
    with pytest.raises(NasPruneError) as info:
        create_model(name, **kwargs)
    assert message in str(info.value)
    if "choose" in message or "cannot import" in message:
        assert all(n in str(info.value) for n in model_names())


def test_bad_spec():
    with pytest.raises(NasPruneError, match="'model' name"):
        build_from_spec({"kwargs": {}})
    with pytest.raises(TypeError, match="plain data"):
        model_spec("convnet", 3, 10, (3, 32, 32), act=nn.ReLU)
