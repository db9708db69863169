"""Typed run configuration: dataclasses filled from one YAML file plus dotted ``key=value`` overrides.

Every command validates its whole config before any Ray work starts. An unknown key, a value of the wrong
type, a value outside its allowed choices or a missing file raises :class:`ConfigError` whose message is
one line naming the key or the path; the CLI prints it and exits with code 2.

A section is a dataclass; a field's ``metadata`` may carry ``choices`` (allowed values) and
``doc`` (one line shown by ``rayseg config --explain``). Later methods add their own sections here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayseg import storage


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


def _field(default: Any, doc: str = "", choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"doc": doc}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class RunSection:
    name: str = _field("", "run folder name under storage; empty = <command>-<method>-<hash of the config>")
    storage: str = _field("rayseg_runs", "root folder (or shared filesystem path) for every run's outputs")
    seed: int = _field(0, "seed of data order, augmentation and initialisation")


@dataclass
class DataSection:
    kind: str = _field("synthetic", "dataset reader", choices=("synthetic", "voc"))
    root: str = _field("", "dataset folder (voc)")
    domain: str = _field("A", "synthetic domain (A, B, C)")
    train_split: str = _field("train", "split used for training")
    val_split: str = _field("val", "split used for evaluation")
    num_train: int = _field(512, "synthetic: number of training images")
    num_val: int = _field(128, "synthetic: number of validation images")
    image_size: int = _field(64, "synthetic: image side in pixels")
    seed: int = _field(0, "synthetic: generator seed (fixed while run.seed varies)")
    num_classes: int = _field(0, "voc: number of classes (label ids 0..num_classes-1, 255 = ignore)")
    class_names: list[str] = _field([], "voc: optional class names")
    label_map: dict[int, int] = _field({}, "raw label id -> train id (Cityscapes style); unmapped ids become ignore")
    skip_bad: bool = _field(False, "skip and count unreadable or inconsistent samples instead of failing")
    crop_size: int = _field(64, "training crop side")
    base_size: int = _field(0, "training: reference side for random scaling; 0 = the image's own size")
    scale_min: float = _field(0.5, "training: smallest random scale")
    scale_max: float = _field(2.0, "training: largest random scale")
    hflip: float = _field(0.5, "training: horizontal flip probability")
    color_jitter: float = _field(0.2, "training: brightness/contrast/saturation jitter")
    loader_workers: int = _field(0, "DataLoader worker processes per training worker")


@dataclass
class ModelSection:
    backbone: str = _field("resnet18", "torchvision backbone", choices=(
        "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large"))
    head: str = _field("fcn", "decode head", choices=("fcn", "deeplabv3", "fpn"))
    output_stride: int = _field(8, "backbone output stride", choices=(8, 16, 32))
    channels: int = _field(128, "decode head width")
    dropout: float = _field(0.1, "dropout before the classifier")
    init_weights: str = _field("", "local weights file (backbone-only or backbone+head); empty = random init")
    classifier: str = _field("linear", "pixel classifier on the decoder features: linear (1x1 conv) or ssa "
                             "(SSA-Seg head; its losses are set in the ssa section)", choices=("linear", "ssa"))


@dataclass
class OptimSection:
    name: str = _field("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = _field(0.01, "base learning rate (for the total batch size of all workers)")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(1e-4, "weight decay")
    betas: list[float] = _field([0.9, 0.999], "AdamW betas")
    schedule: str = _field("poly", "learning-rate schedule", choices=("poly", "cosine", "step", "constant"))
    poly_power: float = _field(0.9, "poly schedule power")
    step_epochs: list[int] = _field([], "step schedule: epochs at which lr is multiplied by step_gamma")
    step_gamma: float = _field(0.1, "step schedule factor")
    warmup_steps: int = _field(0, "linear warm-up steps")
    warmup_start: float = _field(0.1, "lr factor at the first warm-up step")
    grad_clip: float = _field(0.0, "max gradient norm; 0 = no clipping")
    head_lr_mult: float = _field(1.0, "lr multiplier of decoder + classifier parameters")


@dataclass
class TrainSection:
    epochs: int = _field(10, "training epochs")
    batch_size: int = _field(16, "images per worker per step")
    num_workers: int = _field(1, "Ray Train workers; 0 = run in-process (Train local mode)")
    use_gpu: bool = _field(False, "one GPU per worker (NCCL); false = CPU workers over gloo")
    cpus_per_worker: float = _field(1.0, "CPUs reserved per training worker")
    amp: bool = _field(True, "bf16 autocast on GPU (ignored on CPU)")
    channels_last: bool = _field(False, "channels_last memory format")
    checkpoint_every: int = _field(1, "save a checkpoint every N epochs (and after the last)")
    keep_checkpoints: int = _field(2, "checkpoints kept")
    log_every: int = _field(10, "progress line every N steps")
    eval_every: int = _field(0, "evaluate every N epochs; 0 = after the last epoch only")
    max_failures: int = _field(0, "worker-group restarts Ray Train may do from the last checkpoint")
    max_steps_per_epoch: int = _field(0, "cap steps per epoch (quick runs); 0 = whole epoch")


@dataclass
class PSSLSection:
    labels: str = _field("", "label-version folder written by `rayseg label` (holds shard-*.parquet)")
    images: str = _field("", "image root the label ids are relative to (the labelled ImageFolder tree)")
    num_classes: int = _field(0, "K image classes; the network predicts K+1 (index K = background)")
    bg_weight: float = _field(0.1, "cross-entropy weight of the background class (PSSL w_bg)")
    threshold_decile: int = _field(9, "deciles >= this are the image's class, the rest background")
    ignore_d8: bool = _field(False, "label the decile just below the threshold as ignore instead of background")


@dataclass
class LabelSection:
    images: str = _field("", "ImageFolder root to label (root/<class>/<image>)")
    images_parquet: str = _field("", "Parquet file or folder with columns id (string), image (binary: encoded image "
                                 "bytes), label (int: class index); used instead of label.images")
    output: str = _field("rayseg_labels", "labels root; shards go to <output>/<label_version>/")
    true_masks: str = _field("", "optional tree of true object masks (same relative paths) to score the labels")
    members: list[str] = _field([], "ensemble members as ARCH:WEIGHTS_FILE (ARCH alone with allow_random_weights)")
    allow_random_weights: bool = _field(False, "members without weights get random weights (tests only)")
    num_classes: int = _field(0, "classifier output classes; 0 = the number of class folders")
    input_size: int = _field(64, "images are resized to input_size x input_size for explanation")
    method: str = _field("smoothgrad", "explainer", choices=("smoothgrad", "integrated_gradients", "gradcam"))
    samples: int = _field(50, "SmoothGrad noise samples")
    noise_level: float = _field(0.1, "SmoothGrad noise std as a fraction of each image's value range")
    target: str = _field("probability", "explained output", choices=("probability", "logit"))
    target_from: str = _field("label", "explained class", choices=("label", "prediction"))
    batch_cap: int = _field(256, "most noisy samples in one forward/backward pass (memory cap)")
    fold_batchnorm: bool = _field(True, "fold BatchNorm into the convolutions before explaining (same function, "
                                  "faster; SmoothGrad and IG)")
    channels_last: bool = _field(True, "channels-last memory format for the explained models (CPU and GPU)")
    polyphase_stem: bool = _field(True, "input gradient of the strided convolutions on the image as one stride-1 "
                                  "convolution (same gradient, faster; SmoothGrad and IG)")
    amp: bool = _field(True, "bf16 autocast of the explainers' forward pass on GPU (ignored on CPU)")
    shard_size: int = _field(64, "images per committed shard")
    batch_size: int = _field(8, "images per explain call")
    num_actors: int = _field(1, "explainer actors; 0 = as many as the cluster holds at the start")
    gpus_per_actor: float = _field(0.0, "GPUs per explainer actor (fractions allowed; 0 = CPU)")
    cpus_per_actor: float = _field(1.0, "CPUs per explainer actor (its torch threads: rounded up)")
    cpus_per_task: float = _field(1.0, "CPUs per decode/encode task (light; a fraction leaves the rest of a core "
                                  "to the explainers)")


@dataclass
class ClassifierSection:
    arch: str = _field("resnet18", "torchvision classifier architecture (method classifier)")
    archs: list[str] = _field(["resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0"],
                              "ensemble members trained by `rayseg train-classifiers`")
    images: str = _field("", "ImageFolder root to train on; empty = the synthetic classification set")
    num_images: int = _field(1024, "synthetic classification set: training images")
    num_val: int = _field(256, "synthetic classification set: held-out images for accuracy")
    image_size: int = _field(64, "input side in pixels (images are resized to it)")


def _check(ok: bool, key: str, message: str) -> None:
    """Raise the one-line ConfigError ``'<key>: <message>'`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class ViewsSection:
    """Two-view sampling of the contrastive methods (pixcon, densecl; methods.md §4.2). Defaults: BYOL's asymmetric
    photometric augmentations (PixCon) with crop geometry scaled to the 64 px synthetic scenes; the paper values
    at 224 px are given in each doc. ``jobs/configs/pretrain_densecl.yaml`` sets MoCo-v2's symmetric recipe."""

    crop_size: int = _field(64, "side S of each view in pixels (paper: 224)")
    scale_min: float = _field(0.2, "RandomResizedCrop smallest area fraction (paper: 0.08 at 224 px)")
    scale_max: float = _field(1.0, "RandomResizedCrop largest area fraction")
    ratio_min: float = _field(0.75, "RandomResizedCrop smallest aspect ratio")
    ratio_max: float = _field(4.0 / 3.0, "RandomResizedCrop largest aspect ratio")
    min_overlap: float = _field(0.01, "view 2 must overlap view 1 by this fraction of view 2's area")
    overlap_tries: int = _field(10, "view-2 draws before both views fall back to the same centre crop")
    hflip: float = _field(0.5, "horizontal flip probability, per view")
    jitter: list[float] = _field([0.4, 0.4, 0.2, 0.1], "colour jitter brightness, contrast, saturation, hue")
    jitter_prob: float = _field(0.8, "probability of the colour jitter, per view")
    grayscale_prob: float = _field(0.2, "probability of grayscale, per view")
    blur_kernel: int = _field(7, "Gaussian blur kernel side, odd (paper: 23 at 224 px)")
    blur_sigma: list[float] = _field([0.1, 0.6], "Gaussian blur sigma range (paper: [0.1, 2.0] at 224 px)")
    blur_prob: list[float] = _field([1.0, 0.1], "Gaussian blur probability of view 1, view 2 (MoCo-v2: 0.5, 0.5)")
    solarize_prob: list[float] = _field([0.0, 0.2], "solarisation probability of view 1, view 2 (MoCo-v2: 0, 0)")
    solarize_threshold: float = _field(0.5, "solarisation threshold on [0, 1] images (128/255)")

    def __post_init__(self) -> None:
        _check(self.crop_size >= 8, "views.crop_size", f"must be >= 8, got {self.crop_size}")
        _check(0.0 < self.scale_min <= self.scale_max <= 1.0, "views.scale_min/scale_max",
               f"need 0 < scale_min <= scale_max <= 1, got {self.scale_min}, {self.scale_max}")
        _check(0.0 < self.ratio_min <= self.ratio_max, "views.ratio_min/ratio_max",
               f"need 0 < ratio_min <= ratio_max, got {self.ratio_min}, {self.ratio_max}")
        _check(0.0 <= self.min_overlap <= 1.0, "views.min_overlap", f"must be in [0, 1], got {self.min_overlap}")
        _check(self.overlap_tries >= 1, "views.overlap_tries", f"must be >= 1, got {self.overlap_tries}")
        _check(len(self.jitter) == 4 and all(v >= 0 for v in self.jitter) and self.jitter[3] <= 0.5,
               "views.jitter", f"expected 4 values >= 0 (hue <= 0.5), got {self.jitter}")
        _check(self.blur_kernel >= 1 and self.blur_kernel % 2 == 1, "views.blur_kernel",
               f"must be odd and >= 1, got {self.blur_kernel}")
        _check(len(self.blur_sigma) == 2 and 0.0 < self.blur_sigma[0] <= self.blur_sigma[1], "views.blur_sigma",
               f"expected [min, max] with 0 < min <= max, got {self.blur_sigma}")
        for key in ("hflip", "jitter_prob", "grayscale_prob", "solarize_threshold"):
            value = getattr(self, key)
            _check(0.0 <= value <= 1.0, f"views.{key}", f"must be in [0, 1], got {value}")
        for key in ("blur_prob", "solarize_prob"):
            value = getattr(self, key)
            _check(len(value) == 2 and all(0.0 <= v <= 1.0 for v in value), f"views.{key}",
                   f"expected two probabilities (view 1, view 2), got {value}")


def _check_contrast(section: str, c: Any) -> None:
    """Checks shared by the pixcon and densecl sections."""
    _check(c.temperature > 0, f"{section}.temperature", f"must be > 0, got {c.temperature}")
    _check(0.0 <= c.loss_lambda <= 1.0, f"{section}.loss_lambda", f"must be in [0, 1], got {c.loss_lambda}")
    _check(0.0 <= c.momentum <= 1.0, f"{section}.momentum", f"must be in [0, 1], got {c.momentum}")
    for key in ("queue_size", "proj_dim", "proj_hidden_dim"):
        _check(getattr(c, key) >= 1, f"{section}.{key}", f"must be >= 1, got {getattr(c, key)}")


@dataclass
class PixConSection:
    """PixCon (methods.md §4.1-4.3): constants of the official SR configuration [CODE] unless marked."""

    variant: str = _field("sr", "positives of the dense loss: coord (same location, in-box queries only), "
                          "sim (backbone-similarity argmax, all queries), sr (sim + semantic reweighting)",
                          choices=("coord", "sim", "sr"))
    temperature: float = _field(0.2, "tau of the global and the dense InfoNCE")
    loss_lambda: float = _field(0.5, "lambda: L = sum over both directions of (1 - lambda) L_g + lambda L_d")
    gamma: float = _field(2.0, "SR sharpening exponent of the out-of-box weights")
    sr_eps: float = _field(1e-6, "SR: added to the weight denominator max_out - min_all (guards 0/0) [PROPOSED]")
    queue_size: int = _field(65536, "entries of each FIFO queue (global keys; per-image pooled dense keys)")
    proj_dim: int = _field(128, "output width of the global and dense heads and predictors")
    proj_hidden_dim: int = _field(2048, "hidden width of the global and dense heads")
    pred_hidden_dim: int = _field(2048, "hidden width of the global and dense predictors")
    momentum: float = _field(0.99, "target EMA momentum at step 0")
    momentum_schedule: str = _field("cosine", "cosine: m rises to 1 at the last step (BYOL); constant: fixed",
                                    choices=("cosine", "constant"))

    def __post_init__(self) -> None:
        _check_contrast("pixcon", self)
        _check(self.gamma >= 0, "pixcon.gamma", f"must be >= 0, got {self.gamma}")
        _check(self.sr_eps >= 0, "pixcon.sr_eps", f"must be >= 0, got {self.sr_eps}")
        _check(self.pred_hidden_dim >= 1, "pixcon.pred_hidden_dim", f"must be >= 1, got {self.pred_hidden_dim}")


@dataclass
class DenseCLSection:
    """DenseCL (methods.md §4.7): MoCo-v2 global loss + similarity-matched dense loss, no predictors."""

    temperature: float = _field(0.2, "tau of the global and the dense InfoNCE")
    loss_lambda: float = _field(0.5, "lambda: L = (1 - lambda) L_g + lambda L_d once the warm-up is over")
    dense_warmup_steps: int = _field(1000, "optimizer steps with lambda = 0 (dense loss off) first [MEMORY]")
    symmetric: bool = _field(False, "also the swapped direction (view 2 queries), summed; DenseCL: false")
    queue_size: int = _field(65536, "entries of each FIFO queue (global keys; per-image pooled dense keys)")
    proj_dim: int = _field(128, "output width of the global and dense heads")
    proj_hidden_dim: int = _field(2048, "hidden width of the global and dense heads")
    momentum: float = _field(0.999, "target EMA momentum (MoCo-v2)")
    momentum_schedule: str = _field("constant", "constant (MoCo-v2) or cosine (rising to 1)",
                                    choices=("cosine", "constant"))

    def __post_init__(self) -> None:
        _check_contrast("densecl", self)
        _check(self.dense_warmup_steps >= 0, "densecl.dense_warmup_steps",
               f"must be >= 0, got {self.dense_warmup_steps}")


@dataclass
class MDPSection:
    """MDP multi-dataset pre-training (methods.md §1); defaults marked [PROPOSED] there are reconstructions."""

    datasets: list[str] = _field([], "datasets whose label spaces are concatenated: 'synthetic:DOMAIN' or 'voc:ROOT' "
                                 "(classes from ROOT/class_names.txt, else data.num_classes); the other data.* keys "
                                 "apply to each; empty = the one dataset of data.*")
    sampling: str = _field("proportional", "proportional: plain union; balanced: smaller datasets repeated up to "
                           "the largest one's size", choices=("proportional", "balanced"))
    proj_hidden: int = _field(512, "hidden width of the dense projection head (1x1 conv, BN, ReLU, 1x1 conv)")
    proj_dim: int = _field(128, "D: width of the L2-normalised pixel embedding and of each prototype")
    temperature: float = _field(0.1, "tau of the pixel-to-prototype logits z.p/tau [PROPOSED]")
    momentum: float = _field(0.99, "mu of the prototype update p <- n(mu p + (1 - mu) c) [PROPOSED]")
    csc: str = _field("csc2", "cross-class sparse coding: csc2 pulls the top-k similar prototypes closer (paper), "
                      "csc1 drops them from the denominator, none disables it", choices=("none", "csc1", "csc2"))
    top_k: int = _field(5, "k: most similar other prototypes per pixel used by CSC [PROPOSED]")
    beta: float = _field(0.1, "weight of the CSC2 pull term [PROPOSED]")
    other_datasets_only: bool = _field(True, "CSC candidates only among other datasets' classes (so with one "
                                       "dataset CSC adds 0) [PROPOSED]")
    region_mix_fraction: float = _field(1.0 / 3.0, "fraction of each batch region-mixed (CutMix-like box) [PROPOSED]")
    class_mix_fraction: float = _field(1.0 / 3.0, "fraction of each batch class-mixed (ClassMix-like) [PROPOSED]")
    lambda_min: float = _field(0.0, "region mixing: lambda ~ U(lambda_min, lambda_max); box area ratio 1 - lambda")
    lambda_max: float = _field(1.0, "region mixing: upper end of the lambda range")
    mix_same_dataset_fallback: bool = _field(True, "an image with no other-dataset partner in its batch (e.g. one "
                                             "dataset) mixes with an image of its own dataset; false: stays clean")
    export_head: bool = _field(False, "also export projection_head.pt (head, prototypes, label table)")

    def __post_init__(self) -> None:
        for i, spec in enumerate(self.datasets):
            kind, sep, arg = str(spec).partition(":")
            _check(bool(sep) and kind in ("synthetic", "voc") and bool(arg.strip()), f"mdp.datasets[{i}]",
                   f"expected 'synthetic:DOMAIN' or 'voc:ROOT', got {spec!r}")
        _check(self.temperature > 0, "mdp.temperature", f"must be > 0, got {self.temperature}")
        _check(0.0 <= self.momentum < 1.0, "mdp.momentum", f"must be in [0, 1), got {self.momentum}")
        for key in ("proj_hidden", "proj_dim", "top_k"):
            _check(getattr(self, key) >= 1, f"mdp.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.beta >= 0, "mdp.beta", f"must be >= 0, got {self.beta}")
        for key in ("region_mix_fraction", "class_mix_fraction"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"mdp.{key}", f"must be in [0, 1], got {getattr(self, key)}")
        _check(self.region_mix_fraction + self.class_mix_fraction <= 1.0 + 1e-9, "mdp.region_mix_fraction",
               f"region_mix_fraction + class_mix_fraction must be <= 1, got "
               f"{self.region_mix_fraction + self.class_mix_fraction}")
        _check(0.0 <= self.lambda_min <= self.lambda_max <= 1.0, "mdp.lambda_min/lambda_max",
               f"need 0 <= lambda_min <= lambda_max <= 1, got {self.lambda_min}, {self.lambda_max}")


@dataclass
class SSASection:
    """Losses of the SSA-Seg classifier head (``model.classifier: ssa``; methods.md §2.4, official-code defaults)."""

    edge_border: int = _field(6, "response distillation: label edges within this many pixels of the feature-map "
                              "border are dropped (official 6; a feature map <= 2*edge_border has no boundary band)")
    smoothing: float = _field(0.5, "response distillation: target = smoothing * teacher + (1 - smoothing) * one-hot")
    semantic_weight: float = _field(10.0, "weight inside the semantic-domain distillation (prototype relations)")
    spatial_weight: float = _field(0.4, "weight inside the spatial-domain distillation (position prototypes)")
    dice_weight: float = _field(1.0, "weight of each Dice term (student and teacher)")

    def __post_init__(self) -> None:
        if self.edge_border < 0:
            raise ConfigError(f"ssa.edge_border: must be >= 0, got {self.edge_border}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"ssa.smoothing: must be in [0, 1], got {self.smoothing}")
        for key in ("semantic_weight", "spatial_weight", "dice_weight"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"ssa.{key}: must be >= 0, got {getattr(self, key)}")


@dataclass
class Config:
    method: str = _field("supervised", "training objective", choices=("supervised", "pssl", "classifier", "pixcon", "densecl", "mdp"))
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    pssl: PSSLSection = field(default_factory=PSSLSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    ssa: SSASection = field(default_factory=SSASection)
    label: LabelSection = field(default_factory=LabelSection)
    views: ViewsSection = field(default_factory=ViewsSection)
    pixcon: PixConSection = field(default_factory=PixConSection)
    densecl: DenseCLSection = field(default_factory=DenseCLSection)
    mdp: MDPSection = field(default_factory=MDPSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short hash of everything that defines the run's result (not where it is stored)."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "storage")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def run_dir(self, command: str) -> str:
        name = self.run.name or f"{command}-{self.method}-{self.fingerprint()}"
        return storage.join(storage.absolute(self.run.storage), name)


# ---------------------------------------------------------------------------------------------------------
# Building a config from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type (int -> float allowed)."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, f"{key} key"): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _suggest(name: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (known: {', '.join(prefix + o for o in sorted(options))})"


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}'{_suggest(str(key), names, prefix)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key, tp, value = prefix + f.name, hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(tp, value, key + ".")
            continue
        value = _coerce(value, tp, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=3'`` -> ``('train.epochs', 3)``; the value is read as YAML (numbers, lists, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply ``overrides`` and validate."""
    return config_from_dict(read_yaml(path) if path else {}, overrides)


# Keys whose value may be an object-store URI (rayseg.storage); every other path is read by many processes
# through plain file APIs and must be on a filesystem every node mounts.
URI_KEYS = ("run.storage", "label.output", "pssl.labels", "model.init_weights")
URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


def _check_uris(tree: dict[str, Any], prefix: str = "") -> None:
    """A ``scheme://`` value is accepted for URI_KEYS with a scheme pyarrow.fs opens; anywhere else it would
    become a local folder named ``s3:`` without a word, so it is one ConfigError line."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _check_uris(value, dotted + ".")
            continue
        for item in value if isinstance(value, list) else [value]:
            if not (isinstance(item, str) and storage.is_uri(item)):
                continue
            if dotted not in URI_KEYS:
                raise ConfigError(f"{dotted}: {item}: URIs are accepted for {', '.join(URI_KEYS)} only; put this "
                                  f"input on a filesystem every node mounts (NFS, EFS, or a bucket through s3fs)")
            scheme = item.split("://", 1)[0].lower()
            if scheme not in URI_SCHEMES:
                raise ConfigError(f"{dotted}: {item}: unknown scheme {scheme}://, expected one of "
                                  f"{', '.join(s + '://' for s in URI_SCHEMES)}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a dataclass cannot express; each raises a one-line ConfigError."""
    _check_uris(cfg.to_dict())
    d, t, o = cfg.data, cfg.train, cfg.optim
    if d.kind == "voc":
        if not d.root:
            raise ConfigError("data.root: required when data.kind is voc")
        if not Path(d.root).is_dir():
            raise ConfigError(f"data.root: folder not found: {d.root}")
        if d.num_classes < 1:
            raise ConfigError("data.num_classes: required (>= 1) when data.kind is voc")
    for key, value in d.label_map.items():
        if not (0 <= key <= 255) or not (0 <= value <= 255):
            raise ConfigError(f"data.label_map: {key}: {value} is outside 0..255")
    if cfg.model.init_weights and not storage.is_file(cfg.model.init_weights):
        raise ConfigError(f"model.init_weights: file not found: {cfg.model.init_weights}")
    if not 0.0 < d.scale_min <= d.scale_max:
        raise ConfigError(f"data.scale_min/scale_max: need 0 < scale_min <= scale_max, got {d.scale_min}, {d.scale_max}")
    positives = {"train.epochs": t.epochs, "train.batch_size": t.batch_size, "data.crop_size": d.crop_size,
                 "train.checkpoint_every": t.checkpoint_every, "train.log_every": t.log_every,
                 "train.keep_checkpoints": t.keep_checkpoints, "model.channels": cfg.model.channels}
    for key, value in positives.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers: must be >= 0, got {t.num_workers}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {o.lr}")
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas: expected two values, got {o.betas}")


def explain(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``dotted.key (type, default): doc``."""
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += explain(tp, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        extra = f" one of {', '.join(map(str, choices))}" if choices else ""
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, default {getattr(defaults, f.name)!r}{extra}): "
                      f"{f.metadata.get('doc', '')}")
    return lines


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (what the run actually used) to a path or URI, atomically."""
    storage.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
