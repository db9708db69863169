"""Weight files: export a model or its backbone, load weights of several origins into a model.

A rayseg weight file is a ``torch.save``'d plain dict, readable with ``torch.load(weights_only=True)``::

    {"format": "rayseg-weights-v1", "part": "model" | "backbone", "arch": model.arch,
     "state_dict": {"backbone.conv1.weight": ..., "decoder.0.weight": ..., "classifier.weight": ...},
     "meta": {...plain python values...}}

``load_weights`` also reads a raw ``SegmentationModel`` state dict, a torchvision classifier state dict (loaded
into the backbone, its classification head dropped) and a dict wrapping one of those under "state_dict" or "model".
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rayseg import storage
from rayseg.models.segmentation import SegmentationModel

FORMAT = "rayseg-weights-v1"
PARTS = ("model", "backbone")
TORCHVISION_HEADS = ("fc.", "classifier.")  # classification heads of torchvision resnets / mobilenets
SHOWN = 10  # keys shown per kind in error messages


class WeightsError(RuntimeError):
    """A weights file cannot be read or does not fit the model (one-line message)."""


@dataclass
class LoadReport:
    """What ``load_weights`` did: tensors loaded, file tensors dropped (``"key: reason"``), model tensors not loaded."""

    path: str
    source: str  # "rayseg model", "rayseg backbone", "model state dict", "torchvision classifier"
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    classifier_explained: bool = False  # a notice already says what became of the model's classifier

    def summary(self) -> str:
        """One line: ``loaded 120 tensors from x.pt (rayseg backbone); decoder, classifier left as initialised``."""
        parts = [f"loaded {self.loaded} tensors from {self.path} ({self.source})", *self.notices]
        dropped = {entry.split(":")[0] for entry in self.dropped}  # already explained by a notice
        absent = [key for key in self.missing if key not in dropped and not _is_bn_counter(key)]
        if self.classifier_explained:
            absent = [key for key in absent if not key.startswith("classifier.")]
        kept = list(dict.fromkeys(key.split(".", 1)[0] for key in absent))
        if kept:
            parts.append(f"{', '.join(kept)} left as initialised")
        return "; ".join(parts)


def export_weights(
    model: SegmentationModel, path: str | os.PathLike, part: str = "model", meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (``part="model"``) or only its backbone (``part="backbone"``) to ``path`` atomically."""
    if part not in PARTS:
        raise ValueError(f"part must be 'model' or 'backbone', got {part!r}")
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    state = {
        key: tensor.detach().cpu()
        for key, tensor in model.state_dict().items()
        if part == "model" or key.startswith("backbone.")
    }
    payload = {"format": FORMAT, "part": part, "arch": dict(model.arch), "state_dict": state, "meta": meta}
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes(path, buf.getbuffer())  # creates the parent folders
    return path


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file of any accepted origin, normalised to the rayseg layout.

    Returns ``{"format", "part", "arch", "state_dict", "meta", "source", "dropped"}``: ``arch`` is None and
    ``part`` inferred for raw state dicts; torchvision classifier keys are renamed to ``backbone.*`` and their
    classification head is listed in ``dropped``.
    """
    path = str(path)  # a path or an object-store URI (rayseg.storage)
    return _normalise(read_weight_file(path), path)


def read_weight_file(path: str | os.PathLike, data: bytes | None = None) -> Any:
    """What a weights file holds, read safely (``torch.load(weights_only=True)``, tensors and plain values only):
    the one reader of every weight file rayseg opens. ``path`` is a path or an object-store URI; ``data``, when
    given, is its bytes already read. Missing, unreadable or unsafe files raise one-line ``WeightsError``."""
    path = str(path)
    if data is None and not storage.is_file(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        source = io.BytesIO(data) if data is not None else storage.readable(path)
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before refusing it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is one line for the user
        raise WeightsError(f"cannot read weights file {path}: {_why_unreadable(err)}") from None


def load_weights(model: SegmentationModel, path: str | os.PathLike, strict_backbone: bool = True) -> LoadReport:
    """Load the weights file ``path`` into ``model``; see the module docstring for the accepted files.

    A classifier that does not fit (another number of classes) is dropped and stays as constructed. Any other
    mismatch (unexpected keys, missing backbone keys, other shapes, another backbone) raises ``WeightsError``;
    with ``strict_backbone=False`` it is reported in the ``LoadReport`` instead and what fits is loaded.
    Missing decoder/classifier keys are expected when the file holds no decoder (backbone-only files).
    """
    weights = read_weights(path)
    arch, file_arch = model.arch, weights["arch"]
    report = LoadReport(str(path), weights["source"], meta=weights["meta"], dropped=list(weights["dropped"]))
    if weights["dropped"]:
        keys = ", ".join(d.split(":")[0] for d in weights["dropped"])
        report.notices.append(f"dropped {keys} (torchvision classification head)")

    if arch["head"] == "probe":  # a linear probe reads the backbone's features only
        unused = [key for key in weights["state_dict"] if not key.startswith("backbone.")]
        if unused:
            weights["state_dict"] = {k: v for k, v in weights["state_dict"].items() if k.startswith("backbone.")}
            weights["part"] = "backbone"
            report.notices.append(f"head probe: only the backbone is loaded; the file's decoder and classifier "
                                  f"({len(unused)} tensors) are not used")
    mismatch = []
    if file_arch is not None:
        if file_arch.get("backbone") != arch["backbone"]:
            mismatch.append(f"backbone {file_arch.get('backbone')} in the file, {arch['backbone']} in the model")
        if weights["part"] == "model" and file_arch.get("head") != arch["head"]:
            mismatch.append(f"head {file_arch.get('head')} in the file, {arch['head']} in the model")
    if mismatch and strict_backbone:
        raise WeightsError(f"weights file {path} was exported from another architecture: {'; '.join(mismatch)}")
    report.notices += mismatch

    state, target = weights["state_dict"], model.state_dict()
    unexpected = [key for key in state if key not in target]
    wrong_shape = [key for key in state if key in target and state[key].shape != target[key].shape]
    absent = [key for key in target if key not in state]

    # the classifier is task-specific: if it does not fit, drop all of it and keep the model's own
    bad_classifier = [key for key in unexpected + wrong_shape if key.startswith("classifier.")]
    dropped_classifier = [key for key in state if key.startswith("classifier.")] if bad_classifier else []
    for key in dropped_classifier:
        report.dropped.append(f"{key}: {_shape_note(key, state, target)}")
    file_kind, model_kind = _classifier_kind(state), _classifier_kind(target)
    if dropped_classifier and file_kind != model_kind:  # linear <-> SSA head (rayseg.models.ssa)
        report.notices.append(
            f"dropped the file's {file_kind} classifier ({len(dropped_classifier)} tensors; the model has "
            f"{'an' if model_kind == 'SSA' else 'a'} {model_kind} classifier); the classifier starts from scratch"
        )
        report.classifier_explained = True
    elif dropped_classifier:
        first = next((k for k in wrong_shape if k in dropped_classifier), bad_classifier[0])
        what = ", ".join(dropped_classifier) if file_kind == "linear" else \
            f"the file's SSA classifier ({len(dropped_classifier)} tensors)"
        report.notices.append(f"dropped {what}: {_shape_note(first, state, target)}; "
                              "the classifier starts from scratch")
    elif file_kind != model_kind and model_kind == "SSA" and "classifier.weight" in state:
        report.notices.append("the SSA classifier's prototypes (classifier.weight, classifier.bias) come from the "
                              "file's linear classifier; its other modules start from scratch")
        report.classifier_explained = True
    unexpected = [key for key in unexpected if key not in dropped_classifier]
    wrong_shape = [key for key in wrong_shape if key not in dropped_classifier]

    file_has_decoder = any(key.startswith("decoder.") for key in state)
    missing_backbone = [k for k in absent if k.startswith("backbone.") and not _is_bn_counter(k)]
    missing_decoder = [k for k in absent if k.startswith("decoder.")] if file_has_decoder else []
    problems = [
        _listing(len(unexpected), "unexpected keys", unexpected),
        _listing(len(missing_backbone), "missing backbone keys", missing_backbone),
        _listing(len(missing_decoder), "missing decoder keys", missing_decoder),
        _listing(len(wrong_shape), "shape mismatches", [f"{k} {_shape_note(k, state, target)}" for k in wrong_shape]),
    ]
    problems = [p for p in problems if p]
    if problems and strict_backbone:
        raise WeightsError(
            f"weights file {path} ({weights['source']}) does not match the model "
            f"({arch['backbone']}/{arch['head']}): {', '.join(problems)}{_arch_hint(file_arch, arch)}"
        )
    if problems:
        report.notices.append(f"not loaded: {', '.join(problems)}")
        report.dropped += [f"{key}: not in the model" for key in unexpected]
        report.dropped += [f"{key}: {_shape_note(key, state, target)}" for key in wrong_shape]

    skip = set(unexpected) | set(wrong_shape) | set(dropped_classifier)
    to_load = {key: tensor for key, tensor in state.items() if key not in skip}
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.missing = [key for key in target if key not in to_load]
    return report


# ----------------------------------------------------------------------------------------------- helpers


def _arch_hint(file_arch: dict | None, arch: dict) -> str:
    """How to make an export fit: the ``model.*`` keys it was built with that the model differs in."""
    differing = {k: v for k, v in (file_arch or {}).items()
                 if k in arch and k not in ("num_classes", "backbone", "head") and arch[k] != v}
    if not differing:
        return ""
    keys = " ".join(f"model.{k}={v}" for k, v in differing.items())
    return (f"; the file was built with {keys} (this model: "
            f"{', '.join(f'{arch[k]}' for k in differing)}): set {'them' if len(differing) > 1 else 'it'}, or "
            f"start from the export's backbone.pt for a fresh decoder")


def _normalise(obj: Any, path: str) -> dict[str, Any]:
    """Turn whatever the file holds into the rayseg layout (see ``read_weights``)."""
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, not a dict of tensors")
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise WeightsError(f"weights file {path} has format {obj['format']!r}; this rayseg reads {FORMAT!r}")
        if obj.get("part") not in PARTS or not _is_state_dict(obj.get("state_dict")):
            raise WeightsError(f"weights file {path} is a damaged {FORMAT} file (bad 'part' or 'state_dict')")
        return {
            **obj,
            "arch": dict(obj.get("arch") or {}),
            "meta": dict(obj.get("meta") or {}),
            "source": f"rayseg {obj['part']}",
            "dropped": [],
        }
    if not _is_state_dict(obj):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                return _normalise(obj[wrapper], path)
        shown = ", ".join(map(str, list(obj)[:SHOWN]))
        raise WeightsError(f"weights file {path} holds no state dict (top-level keys: {shown})")

    state = _strip_prefix(obj, "module.")  # saved from a DistributedDataParallel wrapper
    dropped = []
    if not any(key.startswith(("backbone.", "decoder.")) for key in state):  # a torchvision classifier
        dropped = [f"{key}: torchvision classification head" for key in state if key.startswith(TORCHVISION_HEADS)]
        state = {f"backbone.{key}": t for key, t in state.items() if not key.startswith(TORCHVISION_HEADS)}
        source = "torchvision classifier"
    else:
        source = "model state dict"
    has_head = any(key.startswith(("decoder.", "classifier.")) for key in state)
    return {
        "format": None,
        "part": "model" if has_head else "backbone",
        "arch": None,
        "state_dict": state,
        "meta": {},
        "source": source,
        "dropped": dropped,
    }


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    while state and all(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: tensor for key, tensor in state.items()}
    return state


def _classifier_kind(state: dict[str, Any]) -> str:
    """``"SSA"`` when the state dict holds an SSA classifier (its position basis), else ``"linear"``."""
    return "SSA" if "classifier.position_basis.weight" in state else "linear"


def _is_bn_counter(key: str) -> bool:
    """BatchNorm ``num_batches_tracked`` buffers: absent from old checkpoints, harmless to miss."""
    return key.endswith("num_batches_tracked")


def _shape_note(key: str, state: dict, target: dict) -> str:
    if key not in target:
        return "not in the model"
    have, want = list(state[key].shape), list(target[key].shape)
    note = f"shape {have} != {want}"
    if key.startswith("classifier.") and len(have) == len(want) and have[1:] == want[1:]:
        note += " (different number of classes)"
    return note


def _listing(count: int, what: str, keys: list[str]) -> str:
    if not count:
        return ""
    more = f", ... {count - SHOWN} more" if count > SHOWN else ""
    return f"{count} {what} [{', '.join(keys[:SHOWN])}{more}]"


def _why_unreadable(err: Exception) -> str:
    text = str(err)
    refused = (re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
               or re.search(r"unsupported GLOBAL ([\w.]+)", text))  # torch >= 2.10 words it so
    if refused:
        return (
            f"it holds a python object ({refused.group(1)}) that a safe load (weights_only=True) refuses; "
            "weight files may hold only tensors and plain python values"
        )
    if "Unsupported operand" in text:
        return ("not a torch weights file (torch.save): a safe load (weights_only=True) refuses its bytes and "
                "runs nothing from it")
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = text.strip().splitlines()
    detail = unpickler.group(1) if unpickler else lines[0] if lines else "empty or truncated file"
    return f"not a torch weights file ({type(err).__name__}: {detail.strip()[:200]})"


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is made of str/int/float/bool/None, lists, tuples and str-keyed dicts."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; weight-file meta must be plain python values")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; weight-file meta must be plain python values")
