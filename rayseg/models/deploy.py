"""A trained export as a self-contained inference model: TorchScript or ONNX, normalisation included.

:class:`Segmenter` wraps a :class:`~rayseg.models.segmentation.SegmentationModel` so that its input is what an
image file gives: ``N x 3 x H x W`` float RGB in ``[0, 1]``, of any size. It normalises with the ImageNet mean
and std (as rayseg trains) and returns logits ``N x K x H x W`` at the input size. :func:`export_model` writes it
as TorchScript (``torch.jit.trace``: the height and width stay free because the model reads them from its input)
or ONNX (``torch.onnx.export``'s ``torch.export``-based exporter, batch, height and width dynamic), and beside it
a small JSON file with what a user of the file needs: classes, palette, input and output, normalisation, rayseg
version, the training config's hash.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayseg import __version__
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rayseg.models.segmentation import SegmentationModel, build_model
from rayseg.models.weights import WeightsError, load_weights, read_weights

__all__ = ["FORMATS", "Segmenter", "export_model", "load_segmentation_export"]

FORMATS = ("torchscript", "onnx")


class Segmenter(nn.Module):
    """``x`` (float RGB in [0, 1], ``N x 3 x H x W``) -> logits ``N x K x H x W``: ImageNet normalisation, then the
    segmentation model."""

    def __init__(self, model: SegmentationModel, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)  # logits at the input size (SegmentationModel.forward)


def load_segmentation_export(path: str | os.PathLike) -> tuple[SegmentationModel, dict[str, Any]]:
    """The model of a rayseg export (``<run>/export/model.pt``: architecture + weights) in eval mode, and the
    export's meta (class names, config fingerprint). ``WeightsError`` for a file without a full model."""
    weights = read_weights(path)
    if weights["arch"] is None or weights["part"] != "model":
        raise WeightsError(f"{path}: not a rayseg model export (export/model.pt of a pretrain or finetune run); "
                           f"it holds {'a backbone only' if weights['part'] == 'backbone' else 'a bare state dict'}")
    model = build_model(**weights["arch"])
    load_weights(model, path)
    return model.eval(), dict(weights["meta"])


def metadata(model: SegmentationModel, meta: dict[str, Any], fmt: str, source: str) -> dict[str, Any]:
    from rayseg.data.folders import voc_palette

    k = model.num_classes
    names = list(meta.get("class_names") or [f"class{i}" for i in range(k)])
    return {
        "format": fmt,
        "source": str(source),
        "rayseg_version": __version__,
        "config_fingerprint": meta.get("config_fingerprint", ""),
        "method": meta.get("method", ""),
        "architecture": dict(model.arch),
        "classes": names,
        "palette": voc_palette(max(k, 1)).tolist(),
        "input": {"layout": "N x 3 x H x W", "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB",
                  "size": "any (at least 32 x 32)"},
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "applied": "inside the model: (x - mean) / std"},
        "output": {"name": "logits", "layout": "N x K x H x W", "K": k, "dtype": "float32",
                   "meaning": "class scores at the input size; argmax over K is the mask"},
    }


def export_model(weights: str | os.PathLike, fmt: str, out: str | os.PathLike, opset: int = 18) -> dict[str, Any]:
    """Write the export ``weights`` as ``fmt`` to ``out`` and its metadata to ``<out>.json``; returns the
    metadata (with ``file`` and ``metadata_file``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model, meta = load_segmentation_export(weights)
    segmenter = Segmenter(model).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch 2.10+ marks TorchScript deprecated; the file still loads
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.trace(segmenter, example, check_trace=False), str(out))
        else:
            dynamic = torch.export.Dim.DYNAMIC  # batch, height and width free
            torch.onnx.export(segmenter, (example,), str(out), input_names=["image"], output_names=["logits"],
                              dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic}}, opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
    info = metadata(model, meta, fmt, str(weights))
    metadata_file = out.with_name(out.name + ".json")
    metadata_file.write_text(json.dumps(info, indent=1))
    return {**info, "file": str(out), "metadata_file": str(metadata_file)}
