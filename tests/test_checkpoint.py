"""Pruned-model files of models whose inputs are a tuple or a dict: stored example inputs, reload."""

import pytest
import torch
from conftest import TwoLayer, randomize_bn

from nas_prune import NasPruneError, channel_groups, prune
from nas_prune.batch import call_model, tensors
from nas_prune.checkpoint import example_from_spec, load_pruned, save_pruned

SPECS = {"dict_detector": "conftest:DictDetector", "two_stream": "conftest:TwoStream"}


def test_a_model_with_several_inputs_round_trips_with_identical_outputs(multi_input_model, tmp_path):
    name, model, inputs = multi_input_model
    widths = {g.name: g.channels // 2 for g in channel_groups(model, inputs)}
    slim = prune(model, inputs, widths)
    path = save_pruned(
        tmp_path / "model.pt", slim, widths, {"model": SPECS[name]}, "l2", example_inputs=inputs
    )

    spec = torch.load(path, weights_only=True)["spec"]  # plain containers and tensors only
    stored = spec["example_inputs"]
    assert type(stored) is type(inputs) and "input_shape" not in spec
    assert [(t.shape[1:], t.dtype) for t in tensors(stored)] == [
        (t.shape[1:], t.dtype) for t in tensors(inputs)
    ]
    assert all(t.shape[0] == 2 and not t.any() for t in tensors(stored))

    loaded = load_pruned(path)
    with torch.no_grad():
        want, got = call_model(slim.eval(), inputs), call_model(loaded, inputs)
    assert type(got) is type(want)
    assert all(torch.equal(a, b) for a, b in zip(tensors(got), tensors(want), strict=True))


def test_example_inputs_in_the_spec_are_kept_and_used(tmp_path):
    model, inputs = randomize_bn(TwoLayer()).eval(), (torch.randn(3, 1, 8, 8),)
    slim = prune(model, inputs, {"conv1": 4})
    spec = {"model": "conftest:TwoLayer", "kwargs": {}, "input_shape": [1, 8, 8], "example_inputs": inputs}
    path = save_pruned(tmp_path / "model.pt", slim, {"conv1": 4}, spec)
    saved = torch.load(path, weights_only=True)["spec"]
    assert saved["input_shape"] == [1, 8, 8] and isinstance(saved["example_inputs"], tuple)
    example = example_from_spec(saved)
    assert isinstance(example, tuple) and example[0].shape == (2, 1, 8, 8)
    assert torch.equal(load_pruned(path)(inputs[0]), slim(inputs[0]))


def test_files_without_example_inputs_rebuild_from_the_input_shape(tmp_path):
    model, x = randomize_bn(TwoLayer()).eval(), torch.randn(2, 1, 8, 8)
    slim = prune(model, x, {"conv2": 2})
    spec = {"model": "conftest:TwoLayer", "kwargs": {}, "input_shape": [1, 8, 8]}
    path = save_pruned(tmp_path / "model.pt", slim, {"conv2": 2}, spec)
    assert "example_inputs" not in torch.load(path, weights_only=True)["spec"]  # the file as before
    assert torch.equal(example_from_spec(spec), torch.zeros(2, 1, 8, 8))
    assert torch.equal(load_pruned(path)(x), slim(x))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"model": "convnet"}, "no valid 'input_shape'"),
        ({"model": "convnet", "input_shape": [1, 0, 28]}, "no valid 'input_shape'"),
        ({"model": "convnet", "example_inputs": {"image": None}}, "hold no tensor"),
    ],
)
def test_a_spec_to_rebuild_from_needs_example_inputs_or_an_input_shape(spec, message):
    with pytest.raises(NasPruneError, match=message):
        example_from_spec(spec, "model.pt")
