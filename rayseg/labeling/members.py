"""PSSL ensemble members: torchvision classifiers with local weight files (no Ray).

A member is an architecture name (any torchvision classification model, see
:func:`rayseg.models.build_classifier`) plus a weights file (a path, or an object-store URI read through
:mod:`rayseg.storage`): a raw state dict or a dict with a ``"state_dict"`` key, read with
``torch.load(weights_only=True)``. A missing file is an error unless
``allow_random_weights`` (tests only): then the member is randomly initialised, seeded from its index.

:func:`label_version` hashes everything that changes the labels, so label runs with different members, weights,
explainer settings, input size or code version write to different folders and never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import rayseg
from rayseg import storage
from rayseg.labeling.explainers import SmoothGradConfig

__all__ = ["MemberSpec", "label_version", "load_members", "member_names"]


@dataclass
class MemberSpec:
    """One ensemble member: torchvision architecture name and local weights file."""

    arch: str
    weights: str = ""


def member_names(specs: Sequence[MemberSpec]) -> list[str]:
    """Unique display names ``<arch>#<index>`` (the same architecture may appear twice)."""
    return [f"{s.arch}#{i}" for i, s in enumerate(specs)]


def _as_spec(spec) -> MemberSpec:
    if isinstance(spec, MemberSpec):
        return spec
    if isinstance(spec, dict):
        return MemberSpec(arch=spec["arch"], weights=spec.get("weights", "") or "")
    raise TypeError(f"ensemble member must be a MemberSpec or a dict, got {type(spec).__name__}")


def _has_weights(spec: MemberSpec) -> bool:
    return bool(spec.weights) and storage.is_file(spec.weights)


def check_weights(specs: Sequence[MemberSpec], allow_random_weights: bool = False) -> None:
    """Raise ``FileNotFoundError`` for the first member whose weights file is missing (unless allowed)."""
    for spec in map(_as_spec, specs):
        if not allow_random_weights and not _has_weights(spec):
            raise FileNotFoundError(f"ensemble member {spec.arch}: weights file not found: {spec.weights}")


def _read_state_dict(path: str) -> dict:
    try:
        obj = torch.load(storage.readable(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: one line naming the file
        raise ValueError(f"{path}: cannot read weights file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (expected a dict of tensors or {{'state_dict': ...}})")
    return obj


def load_members(
    specs: Sequence[MemberSpec],
    num_classes: int,
    allow_random_weights: bool = False,
    device: str | torch.device = "cpu",
) -> list[nn.Module]:
    """Build every member with ``build_classifier(arch, num_classes)``, load its weights, eval mode, on ``device``.

    * Missing weights file: ``FileNotFoundError`` naming the member and the file, unless ``allow_random_weights``;
      then random initialisation seeded with the member index (deterministic) and a warning.
    * Weights that do not fit the architecture (missing / unexpected keys, wrong shapes): ``ValueError``, one line
      naming the file.
    """
    from rayseg.models import build_classifier  # torchvision: imported only where models are built

    specs = [_as_spec(s) for s in specs]
    if not specs:
        raise ValueError("the ensemble needs at least one member")
    check_weights(specs, allow_random_weights)
    models = []
    for index, spec in enumerate(specs):
        if _has_weights(spec):
            # built on the meta device (no random initialisation: the file's tensors are assigned instead)
            with torch.device("meta"):
                model = build_classifier(spec.arch, num_classes)
            state = _read_state_dict(spec.weights)
            expected, got = set(model.state_dict()), set(state)
            if expected != got:
                missing, unexpected = sorted(expected - got), sorted(got - expected)
                raise ValueError(
                    f"{spec.weights}: weights do not fit {spec.arch} with {num_classes} classes "
                    f"({len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]})"
                )
            try:
                model.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as exc:  # shape mismatch
                first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
                raise ValueError(f"{spec.weights}: weights do not fit {spec.arch} with {num_classes} classes "
                                 f"({first})") from None
        else:
            warnings.warn(f"ensemble member {spec.arch}#{index}: no weights file ({spec.weights or 'none given'}), "
                          f"using random weights (seed {index})", stacklevel=2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(index)
                model = build_classifier(spec.arch, num_classes)
        on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if on_meta:  # a non-persistent buffer the file cannot hold
            raise ValueError(f"{spec.arch}: tensors {on_meta[:3]} are not in the weights file")
        models.append(model.eval().to(device))
    return models


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    filesystem, fs_path = storage.resolve(path)
    with filesystem.open_input_stream(fs_path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_version(
    specs: Sequence[MemberSpec],
    explainer_cfg: SmoothGradConfig,
    input_size: int,
    extra: dict | None = None,
) -> str:
    """12 hex digits of a sha256 over: member architectures, the sha256 of each weights file (``"random"`` when
    there is none), the explainer settings, the input size, ``extra`` (JSON, sorted keys) and ``rayseg.__version__``."""
    specs = [_as_spec(s) for s in specs]
    payload = {
        "members": [[s.arch, _file_sha256(s.weights) if _has_weights(s) else "random"] for s in specs],
        "explainer": dataclasses.asdict(explainer_cfg),
        "input_size": int(input_size),
        "extra": extra or {},
        "code": rayseg.__version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
