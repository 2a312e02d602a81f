"""Exports of models whose inputs and outputs are a tensor, a tuple or a dict, checked against PyTorch."""

import importlib.util

import pytest
import torch
from conftest import TwoLayer

from nas_prune import export as export_mod
from nas_prune import prune
from nas_prune.batch import call_model, randomized, resize_batch, tensors
from nas_prune.export import EXPORT_ATOL, export_model, onnx_available

ORT = importlib.util.find_spec("onnxruntime") is not None
FORMATS = [pytest.param("onnx", marks=pytest.mark.skipif(not onnx_available(), reason="needs onnx")), "pt2"]
# Graph input and output names: flattened tensors in order, named by key or position.
NAMES = {
    "dict_detector": (["image", "scale"], ["boxes", "scores"]),
    "two_stream": (["input_0", "input_1"], ["output_0", "output_1"]),
}


def _run_export(path, fmt, inputs):
    """The exported file run on ``inputs``: its output tensors in order, and its graph's names."""
    if fmt == "pt2":
        return tensors(call_model(torch.export.load(path).module(), inputs)), None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {n: t.numpy() for n, t in zip(names, tensors(inputs), strict=True)}
    outputs = [torch.from_numpy(a) for a in session.run(None, feed)]
    return outputs, (names, [o.name for o in session.get_outputs()])


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_inputs_and_outputs_export_verified_with_a_dynamic_batch(
    fmt, multi_input_model, tmp_path, monkeypatch
):
    name, model, inputs = multi_input_model
    monkeypatch.setattr(export_mod, "onnx_available", lambda: fmt == "onnx")
    slim = prune(model, inputs, 0.5).eval()
    info = export_model(slim, resize_batch(inputs, 1), tmp_path)  # a batch of 1 is repeated to 2
    assert info["export"] == f"model.{fmt}" and info["export_error"] is None
    if fmt == "pt2" or ORT:
        assert info["export_verified"] and info["export_max_abs_diff"] <= EXPORT_ATOL
    if fmt == "onnx" and not ORT:
        return
    x = randomized(resize_batch(inputs, 3), torch.Generator().manual_seed(1))
    got, names = _run_export(tmp_path / info["export"], fmt, x)
    with torch.no_grad():
        want = tensors(call_model(slim, x))
    assert len(got) == len(want) and all(
        torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True)
    )
    if names is not None:
        assert names == NAMES[name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_input_tensor_keeps_its_names(fmt, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "onnx_available", lambda: fmt == "onnx")
    model, x = TwoLayer().eval(), torch.randn(2, 1, 8, 8)
    info = export_model(model, x, tmp_path)
    assert info["export"] == f"model.{fmt}" and info["export_verified"] is not False
    if fmt == "onnx" and ORT:
        assert _run_export(tmp_path / "model.onnx", "onnx", x)[1] == (["input"], ["logits"])
