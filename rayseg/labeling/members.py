"""PSSL ensemble members: torchvision classifiers with weight files (no Ray).

A member is an architecture name (any torchvision classification model, see
:func:`rayseg.models.build_classifier`) plus a weights file (a path, or an object-store URI read through
:mod:`rayseg.storage`): a raw state dict or a dict with a ``"state_dict"`` key, read by
:func:`rayseg.models.weights.read_weight_file` (``weights_only=True``). With ``label.allow_random_weights`` (tests
only) a member without a file is randomly initialised, seeded from its index.

The driver calls :func:`check_members` once: it reads each file once, checks that it fits its architecture with
the job's class count and hashes its bytes. Each explainer actor then calls :func:`load_members` once.
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
from rayseg.config import ExplainerSection
from rayseg.models.weights import WeightsError, read_weight_file

__all__ = ["Member", "check_members", "label_version", "load_members", "member_names"]

RANDOM = "random"  # the sha256 of a member without a weights file


@dataclass(frozen=True)
class Member:
    """One checked ensemble member: architecture, weights file (``""``: random weights) and the sha256 of its
    bytes (``"random"`` without a file)."""

    arch: str
    weights: str = ""
    sha256: str = RANDOM


def member_names(members: Sequence[Member]) -> list[str]:
    """Unique display names ``<arch>#<index>`` (the same architecture may appear twice)."""
    return [f"{m.arch}#{i}" for i, m in enumerate(members)]


def _state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (expected a dict of tensors or {{'state_dict': ...}})")
    return obj


def _build(arch: str, num_classes: int) -> nn.Module:
    from rayseg.models import build_classifier  # torchvision: imported only where models are built

    try:
        return build_classifier(arch, num_classes)
    except ValueError as exc:
        raise WeightsError(f"ensemble member {arch}: {exc}") from None


def _fit(model: nn.Module, state: dict[str, torch.Tensor], member: Member, num_classes: int) -> None:
    """Raise one WeightsError line when ``state`` does not fit ``model`` (keys or shapes)."""
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    wrong = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. "
                  f"{unexpected[:2]}" if missing or unexpected else
                  f"{wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, {tuple(target[wrong[0]].shape)} in the "
                  f"model")
        raise WeightsError(f"{member.weights}: weights do not fit {member.arch} with {num_classes} classes "
                           f"({detail}); is label.num_classes the member's class count?")


def check_members(specs: Sequence[tuple[str, str]], num_classes: int) -> list[Member]:
    """Driver side, before Ray starts: each ``(arch, weights)`` of ``label.members`` as a checked :class:`Member`.
    Each file is read once: it must hold a state dict that fits ``arch`` with ``num_classes`` outputs (checked on
    the meta device: nothing is allocated) and its bytes are hashed. A member without a file (allowed by the
    label section) stays random. Raises one-line ``WeightsError``."""
    members = []
    for arch, weights in specs:
        if not weights:
            with torch.device("meta"):
                _build(arch, num_classes)
            members.append(Member(arch))
            continue
        if not storage.is_file(weights):
            raise WeightsError(f"ensemble member {arch}: weights file not found: {weights}")
        data = storage.read_bytes(weights)
        member = Member(arch, weights, hashlib.sha256(data).hexdigest())
        with torch.device("meta"):
            _fit(_build(arch, num_classes), _state_dict(read_weight_file(weights, data), weights), member,
                 num_classes)
        members.append(member)
    if not members:
        raise WeightsError("the ensemble needs at least one member")
    return members


def load_members(members: Sequence[Member], num_classes: int, device: str | torch.device = "cpu") -> list[nn.Module]:
    """Actor side: build every member with ``build_classifier(arch, num_classes)`` and load its (checked) weights,
    eval mode, on ``device``; a member without a file gets random weights seeded with its index (and a warning)."""
    models = []
    for index, member in enumerate(members):
        if member.weights:
            with torch.device("meta"):  # no random initialisation: the file's tensors are assigned instead
                model = _build(member.arch, num_classes)
            state = _state_dict(read_weight_file(member.weights), member.weights)
            _fit(model, state, member, num_classes)
            model.load_state_dict(state, strict=True, assign=True)
        else:
            warnings.warn(f"ensemble member {member.arch}#{index}: no weights file, using random weights "
                          f"(seed {index})", stacklevel=2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(index)
                model = _build(member.arch, num_classes)
        on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if on_meta:  # a non-persistent buffer the file cannot hold
            raise WeightsError(f"{member.arch}: tensors {on_meta[:3]} are not in the weights file")
        models.append(model.eval().to(device))
    return models


# explainer settings that change how the maps are computed, not what they are (chunking, compilation)
EXECUTION_ONLY = ("batch_cap", "compile", "fixed_chunks")


def label_version(members: Sequence[Member], explainer: ExplainerSection, input_size: int, num_classes: int,
                  geometry: str = "square") -> str:
    """12 hex digits of a sha256 over: member architectures and the sha256 of each weights file (``"random"``
    when there is none), the explainer settings but those that only say how the same maps are computed
    (:data:`EXECUTION_ONLY`: a new chunk size does not re-label), the input size and geometry, the class count and
    ``rayseg.__version__`` (the square geometry adds nothing, so versions written before it existed stay valid)."""
    settings = {k: v for k, v in dataclasses.asdict(explainer).items() if k not in EXECUTION_ONLY}
    payload = {
        "members": [[m.arch, m.sha256] for m in members],
        "explainer": settings,
        "input_size": int(input_size),
        "extra": {"num_classes": int(num_classes), **({"geometry": geometry} if geometry != "square" else {})},
        "code": rayseg.__version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
