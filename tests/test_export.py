"""`rayseg export`: TorchScript and ONNX files that compute what the PyTorch model computes, on inputs of sizes
other than the one they were traced at; the metadata a user needs beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rayseg import __version__
from rayseg.cli import main
from rayseg.models import build_model
from rayseg.models.deploy import Segmenter
from rayseg.models.weights import export_weights

SIZES = [(1, 3, 64, 96), (2, 3, 45, 77), (1, 3, 120, 64)]  # the trace size, then odd and portrait ones
NAMES = ["background", "disc", "square", "ring", "cross"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", num_classes=5, output_stride=16, channels=16).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = export_weights(model, root / "export" / "model.pt", part="model",
                          meta={"class_names": NAMES, "config_fingerprint": "1a2b3c4d", "method": "supervised"})
    return model, path


def _reference(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return Segmenter(model)(x).numpy()


def test_torchscript_matches_pytorch_at_any_size(exported, capsys):
    model, weights = exported
    out = weights.parent / "model.ts"
    assert main(["export", "--weights", str(weights), "--format", "torchscript", "--out", str(out)]) == 0
    scripted = torch.jit.load(str(out))
    for size in SIZES:
        x = torch.rand(size, generator=torch.Generator().manual_seed(sum(size)))
        got = scripted(x).detach().numpy()
        assert got.shape == (size[0], 5, size[2], size[3])
        np.testing.assert_allclose(got, _reference(model, x), atol=1e-5, rtol=0)  # the same kernels: fp32 noise
    info = json.loads(out.with_name("model.ts.json").read_text())
    assert info["classes"] == NAMES and info["output"]["K"] == 5 and len(info["palette"]) == 5
    assert (info["rayseg_version"], info["config_fingerprint"], info["format"]) == (__version__, "1a2b3c4d",
                                                                                    "torchscript")
    assert info["normalisation"]["mean"] == [0.485, 0.456, 0.406]


def test_onnx_matches_pytorch_at_any_size(exported):
    ort = pytest.importorskip("onnxruntime")
    model, weights = exported
    assert main(["export", "--weights", str(weights), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(weights.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    for size in SIZES:
        x = torch.rand(size, generator=torch.Generator().manual_seed(sum(size)))
        (got,) = session.run(["logits"], {"image": x.numpy()})
        # another runtime's kernels: agreement to 1e-4 on logits of magnitude ~1
        np.testing.assert_allclose(got, _reference(model, x), atol=1e-4, rtol=0)


def test_export_refuses_what_is_not_a_model(exported, tmp_path, capsys):
    model, weights = exported
    backbone = export_weights(model, tmp_path / "backbone.pt", part="backbone")
    assert main(["export", "--weights", str(backbone), "--format", "torchscript"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {backbone}: not a rayseg model export")
    assert main(["export", "--weights", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err == f"error: --weights: file not found: {tmp_path / 'none.pt'}\n"
