"""``rayseg export``: a trained export (``<run>/export/model.pt``) as a self-contained TorchScript or ONNX model
with its metadata file (:mod:`rayseg.models.deploy`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rayseg.config import ConfigError

SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="a run's export/model.pt")
    p.add_argument("--format", choices=tuple(SUFFIX), default="onnx", help="torchscript or onnx (default onnx)")
    p.add_argument("--out", default="", help="file to write (default: beside --weights, model.ts / model.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")


def run(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    if not weights.is_file():
        raise ConfigError(f"file not found: {weights}", "--weights")
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it
        except ImportError:
            raise ConfigError("ONNX export needs the onnx package: pip install 'rayseg[onnx]'", "--format") from None
    from rayseg.models.deploy import export_model

    out = Path(args.out) if args.out else weights.with_suffix(SUFFIX[args.format])
    info = export_model(weights, args.format, out, args.opset)
    print(f"[rayseg] wrote {info['file']} ({args.format}: float RGB in [0, 1], N x 3 x H x W of any size -> logits "
          f"N x {info['output']['K']} x H x W) and {info['metadata_file']}")
    return 0
