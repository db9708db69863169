"""The config schema: one :class:`~rayseg.config.fields.Section` dataclass per YAML section.

Each key is declared once, here, with its default, its doc line and its rules (choices, bounds); rules that
span several keys of a section live in that section's ``check``. Checks that read the filesystem live in the
section's ``check_inputs`` and run once, on the driver, before Ray starts (:func:`rayseg.config.validate` for the
training sections; the ``label`` command for the ``label`` section). Library code reads the keys under the same
names (``cfg.label.explainer.samples``), so a key can be followed from the YAML to its use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayseg import storage
from rayseg.config.fields import ConfigError, Section, output_location, require, setting
from rayseg.labeling.geometry import GEOMETRIES


FOLDER_KINDS = ("voc", "ade20k", "cityscapes", "coco_stuff")  # labelled datasets read from a root folder


# The ``method`` choices: the keys of :data:`rayseg.methods.METHODS`, spelled out so that checking a config
# imports no torch (tests/test_config.py keeps the two equal).
METHOD_NAMES = ("supervised", "pssl", "classifier", "mdp", "pixcon", "densecl")


def _folder(key: str, value: str, required_when: str) -> None:
    """``value`` must name an existing local folder; ``required_when`` says when the key is needed."""
    if not value:
        raise ConfigError(f"required {required_when}", key)
    if not Path(value).is_dir():
        raise ConfigError(f"folder not found: {value}", key)


@dataclass
class RunSection(Section):
    name: str = setting("", "run folder name under storage; empty = <command>-<method>-<hash of the config>")
    storage: str = setting("rayseg_runs", "root folder (or shared filesystem path) for every run's outputs",
                           path="output")
    seed: int = setting(0, "seed of data order, augmentation and initialisation")
    tags: dict[str, str] = setting({}, "labels of the run, e.g. {start: pssl, head: ssa}: written to <run>/tags.json "
                                   "with command, method, head, start and seed (these are defaults the tags "
                                   "override); `rayseg report --by` groups fine-tunes by them; not part of the "
                                   "run's hash")


@dataclass
class DataSection(Section):
    kind: str = setting("synthetic", "dataset reader: the synthetic benchmark, or a folder in the dataset's own "
                        "layout (rayseg.data.native); images: any folder of unlabelled images (pixcon, densecl)",
                        choices=("synthetic", *FOLDER_KINDS, "images"))
    root: str = setting("", "dataset folder (voc: VOC2012; ade20k: ADEChallengeData2016; cityscapes: the folder of "
                        "leftImg8bit/ and gtFine/; coco_stuff: the folder of images/ and annotations/; images: any "
                        "folder, e.g. COCO's train2017/)", path="input")
    domain: str = setting("A", "synthetic domain (A, B, C)")
    train_split: str = setting("train", "split used for training")
    val_split: str = setting("val", "split used for evaluation")
    holdout: int = setting(0, "tune without touching val_split: hold out this many images of the training split "
                           "(a fixed random choice, by data.seed) as the evaluation set and train on the rest; 0 = "
                           "off", ge=0)
    num_train: int = setting(512, "synthetic: number of training images", ge=1)
    num_val: int = setting(128, "synthetic: number of validation images", ge=1)
    image_size: int = setting(64, "synthetic: image side in pixels", ge=8)
    seed: int = setting(0, "synthetic: generator seed (fixed while run.seed varies)")
    num_classes: int = setting(0, "voc: number of classes (label ids 0..num_classes-1; 255 in 8-bit mask files = "
                               "ignore; more than 255 classes need 16-bit mask files, where 65535 = ignore)", ge=0,
                               le=65535)
    class_names: list[str] = setting([], "voc: optional class names")
    label_map: dict[int, int] = setting({}, "raw label id -> train id (Cityscapes style); unmapped ids become ignore")
    skip_bad: bool = setting(False, "skip and count unreadable or inconsistent samples instead of failing")
    crop_size: int = setting(64, "training crop side", ge=1)
    base_size: int = setting(0, "training: reference side for random scaling; 0 = the image's own size", ge=0)
    scale_min: float = setting(0.5, "training: smallest random scale", gt=0)
    scale_max: float = setting(2.0, "training: largest random scale", gt=0)
    hflip: float = setting(0.5, "training: horizontal flip probability", ge=0, le=1)
    color_jitter: float = setting(0.2, "training: brightness/contrast/saturation jitter", ge=0)
    loader_workers: int = setting(0, "DataLoader worker processes per training worker", ge=0)

    def check(self) -> None:
        require(self.scale_min <= self.scale_max, "scale_min/scale_max",
                f"need scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.kind == "synthetic":
            require(self.holdout < self.num_train, "holdout",
                    f"{self.holdout} leaves no training image of data.num_train = {self.num_train}")
        for key, value in self.label_map.items():
            require(0 <= key <= 65535 and 0 <= value <= 65535, "label_map",
                    f"{key}: {value} is outside 0..65535 (8- or 16-bit mask values)")

    def check_inputs(self) -> None:
        if self.kind != "synthetic":
            _folder("data.root", self.root, f"when data.kind is {self.kind}")
        if self.kind == "voc":
            require(self.num_classes >= 1, "data.num_classes", "required (>= 1) when data.kind is voc")


@dataclass
class ModelSection(Section):
    backbone: str = setting("resnet18", "torchvision backbone", choices=(
        "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large"))
    head: str = setting("fcn", "decode head; probe = no decoder, BatchNorm on the backbone's deepest features (a "
                        "linear probe with freeze_backbone)", choices=("fcn", "deeplabv3", "fpn", "probe"))
    output_stride: int = setting(8, "backbone output stride", choices=(8, 16, 32))
    channels: int = setting(128, "decode head width", ge=1)
    dropout: float = setting(0.1, "dropout before the classifier", ge=0, lt=1)
    init_weights: str = setting("", "local weights file (backbone-only or backbone+head); empty = random init",
                                path="input")
    classifier: str = setting("linear", "pixel classifier on the decoder features: linear (1x1 conv) or ssa "
                              "(SSA-Seg head; its losses are set in the ssa section)", choices=("linear", "ssa"))
    freeze_backbone: bool = setting(False, "train only decoder + classifier: backbone weights and BatchNorm "
                                    "statistics stay as loaded (with head: probe, a frozen-backbone linear probe)")

    def check_inputs(self) -> None:
        if self.init_weights and not storage.is_file(self.init_weights):
            raise ConfigError(f"file not found: {self.init_weights}", "model.init_weights")


@dataclass
class OptimSection(Section):
    name: str = setting("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = setting(0.01, "base learning rate (for the total batch size of all workers)", gt=0)
    momentum: float = setting(0.9, "SGD momentum", ge=0)
    weight_decay: float = setting(1e-4, "weight decay", ge=0)
    betas: list[float] = setting([0.9, 0.999], "AdamW betas")
    schedule: str = setting("poly", "learning-rate schedule", choices=("poly", "cosine", "step", "constant"))
    poly_power: float = setting(0.9, "poly schedule power", gt=0)
    step_epochs: list[int] = setting([], "step schedule: epochs at which lr is multiplied by step_gamma")
    step_gamma: float = setting(0.1, "step schedule factor", gt=0)
    warmup_steps: int = setting(0, "linear warm-up steps", ge=0)
    warmup_start: float = setting(0.1, "lr factor at the first warm-up step", gt=0, le=1)
    grad_clip: float = setting(0.0, "max gradient norm; 0 = no clipping", ge=0)
    head_lr_mult: float = setting(1.0, "lr multiplier of decoder + classifier parameters", ge=0)

    def check(self) -> None:
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                f"expected two values in [0, 1), got {self.betas}")


@dataclass
class TrainSection(Section):
    epochs: int = setting(10, "training epochs", ge=1)
    batch_size: int = setting(16, "images per worker per step", ge=1)
    num_workers: int = setting(1, "Ray Train workers; 0 = run in-process (Train local mode)", ge=0)
    use_gpu: bool = setting(False, "one GPU per worker (NCCL); false = CPU workers over gloo")
    cpus_per_worker: float = setting(1.0, "CPUs reserved per training worker", gt=0)
    amp: bool = setting(True, "bf16 autocast on GPU (ignored on CPU)")
    channels_last: bool = setting(False, "channels_last memory format")
    checkpoint_every: int = setting(1, "save a checkpoint every N epochs (and after the last)", ge=1)
    keep_checkpoints: int = setting(2, "checkpoints kept", ge=1)
    log_every: int = setting(10, "progress line every N steps", ge=1)
    eval_every: int = setting(0, "evaluate every N epochs; 0 = after the last epoch only", ge=0)
    max_failures: int = setting(0, "worker-group restarts Ray Train may do from the last checkpoint; -1 = "
                                "no limit", ge=-1)
    max_steps_per_epoch: int = setting(0, "cap steps per epoch (quick runs); 0 = whole epoch", ge=0)
    sync_bn: bool = setting(False, "convert every BatchNorm of the method (backbone, heads, predictors, momentum "
                            "target) to SyncBatchNorm under DDP, as the contrastive papers' code does (GPU workers)")

    def check(self) -> None:
        require(not self.sync_bn or self.use_gpu, "sync_bn", "needs train.use_gpu: true (SyncBatchNorm runs on GPUs)")


@dataclass
class EvalSection(Section):
    """How the val split is inferred (``rayseg.engine.inference``): whole images or sliding windows, at the image's
    own size or resized by its shorter side, optionally averaged with the horizontal flip. Metrics are always
    computed at the label's own resolution."""

    mode: str = setting("whole", "whole: each image in one forward pass; slide: crop x crop windows every stride "
                        "pixels, probabilities averaged where they overlap (large images, e.g. Cityscapes "
                        "1024x2048)", choices=("whole", "slide"))
    crop: int = setting(512, "slide: window side in pixels", ge=1)
    stride: int = setting(341, "slide: step between windows in pixels (<= crop)", ge=1)
    short_side: int = setting(0, "infer on the image resized so that its shorter side has this many pixels (the "
                              "probabilities are resized back to the label's size); 0 = the image's own size", ge=0)
    flip: bool = setting(False, "also infer on the horizontally flipped image and average the probabilities")

    def check(self) -> None:
        require(self.stride <= self.crop, "stride", f"must be <= eval.crop ({self.crop}), got {self.stride}")


@dataclass
class PSSLSection(Section):
    labels: str = setting("", "label-version folder written by `rayseg label` (holds shard-*.parquet)",
                          path="input")
    images: str = setting("", "image root the label ids are relative to (the labelled ImageFolder tree)",
                          path="input")
    num_classes: int = setting(0, "K image classes; the network predicts K+1 (index K = background)", ge=0)
    bg_weight: float = setting(0.1, "cross-entropy weight of the background class (PSSL w_bg)", ge=0)
    threshold_decile: int = setting(9, "deciles >= this are the image's class, the rest background", ge=1, le=9)
    ignore_d8: bool = setting(False, "label the decile just below the threshold as ignore instead of background")

    def check_inputs(self) -> None:
        """When method is pssl. ``pssl.labels`` may be an object-store URI (a prefix with objects counts as a
        folder); ``pssl.images`` is a local folder."""
        if not self.labels:
            raise ConfigError("required when method is pssl (the label-version folder written by `rayseg label`)",
                              "pssl.labels")
        if not storage.is_dir(self.labels):
            raise ConfigError(f"folder not found: {self.labels}", "pssl.labels")
        _folder("pssl.images", self.images, "when method is pssl (the image root the label ids are relative to)")
        require(self.num_classes >= 1, "pssl.num_classes", f"required (>= 1) when method is pssl, got "
                f"{self.num_classes}")


@dataclass
class ExplainerSection(Section):
    """How each ensemble member's input attribution is computed (``label.explainer``; methods.md §3.1 step 2).
    Defaults are the paper's: InterpretDL's SmoothGrad, target = the image's class. The same object configures
    the library functions of :mod:`rayseg.labeling.explainers`."""

    method: str = setting("smoothgrad", "explainer", choices=("smoothgrad", "integrated_gradients", "gradcam"))
    samples: int = setting(50, "SmoothGrad noisy copies per image (S)", ge=1)
    noise_level: float = setting(0.1, "SmoothGrad noise std as a fraction of each image's value range "
                                 "(max x - min x of its normalised input)", ge=0)
    target: str = setting("probability", "explained output: the target class's softmax probability or its logit",
                          choices=("probability", "logit"))
    target_from: str = setting("label", "explained class: the image's label or each model's own prediction",
                               choices=("label", "prediction"))
    batch_cap: int = setting(0, "most samples (noisy copies, IG steps or images) in one forward/backward pass "
                             "(memory cap); 0 = by the image size and device (rayseg.labeling.explainers."
                             "chunk_size)", ge=0)
    ig_steps: int = setting(32, "IntegratedGradients integration steps (baseline: the all-zero image)", ge=1)
    fold_batchnorm: bool = setting(True, "fold BatchNorm into the convolutions before explaining (same function, "
                                   "faster; SmoothGrad and IG: GradCAM reads activations folding would change)")
    channels_last: bool = setting(True, "channels-last memory format for the explained models (CPU and GPU)")
    polyphase_stem: bool = setting(True, "input gradient of the strided convolutions on the image as one "
                                   "stride-1 convolution (same gradient, faster; SmoothGrad and IG)")
    amp: bool = setting(True, "bf16 autocast of the explainers' forward pass on GPU (ignored on CPU)")
    compile: bool = setting(False, "torch.compile each member once per actor (SmoothGrad; pays on GPU over many "
                            "images; needs fixed_chunks)")
    fixed_chunks: bool = setting(False, "SmoothGrad: pad the last chunk of noisy copies to the chunk size so that "
                                 "every forward of a batch has one shape (compiled models, CUDA graphs)")

    def check(self) -> None:
        require(not self.compile or self.fixed_chunks, "compile",
                "needs fixed_chunks: true (a compiled model is specialised to one chunk shape)")


@dataclass
class LabelSection(Section):
    images: str = setting("", "ImageFolder root to label (root/<class>/<image>)", path="input")
    images_parquet: str = setting("", "Parquet file or folder with columns id (string), image (binary: encoded "
                                  "image bytes), label (int: class index); used instead of label.images",
                                  path="input")
    output: str = setting("rayseg_labels", "labels root; shards go to <output>/<label_version>/", path="output")
    true_masks: str = setting("", "optional tree of true object masks (same relative paths) to score the labels",
                              path="input")
    members: list[str] = setting([], "ensemble members as ARCH:WEIGHTS_FILE, ARCH a torchvision classifier or "
                                 "timm/<model> (ARCH alone with allow_random_weights)", path="spec")
    allow_random_weights: bool = setting(False, "members without weights get random weights (tests only)")
    num_classes: int = setting(0, "classifier output classes; 0 = the number of class folders", ge=0)
    input_size: int = setting(64, "side S of the S x S input each image is explained at", ge=1)
    geometry: str = setting("crop", "how an image becomes the S x S input (rayseg.labeling.geometry): crop: shorter "
                            "side to S, centre crop (aspect kept; pixels outside the crop get no label); pad: longer "
                            "side to S, padded; square: resized to S x S", choices=GEOMETRIES)
    explainer: ExplainerSection = field(default_factory=ExplainerSection)
    shard_size: int = setting(64, "images per committed shard", ge=1)
    batch_size: int = setting(8, "images per explain call", ge=1)
    num_actors: int = setting(1, "explainer actors; 0 = as many as the cluster holds at the start", ge=0)
    gpus_per_actor: float = setting(0.0, "GPUs per explainer actor (fractions allowed; 0 = CPU)", ge=0)
    cpus_per_actor: float = setting(1.0, "CPUs per explainer actor (its torch threads: rounded up)", gt=0)
    cpus_per_task: float = setting(1.0, "CPUs per decode/encode task (light; a fraction leaves the rest of a core "
                                   "to the explainers)", gt=0)

    def check(self) -> None:
        for i, text in enumerate(self.members):
            arch, _, weights = text.partition(":")
            require(bool(arch), f"members[{i}]", f"'{text}' is not ARCH:WEIGHTS_FILE")
            require(bool(weights) or self.allow_random_weights, f"members[{i}]",
                    f"'{text}' has no weights file (ARCH:WEIGHTS_FILE; ARCH alone needs allow_random_weights)")

    def member_specs(self) -> list[tuple[str, str]]:
        """``label.members`` as ``(arch, weights)`` pairs (weights ``""``: random, with allow_random_weights)."""
        return [(text.partition(":")[0], text.partition(":")[2]) for text in self.members]

    def check_inputs(self) -> None:
        """Before labelling: exactly one image source that exists, the true masks and at least one member."""
        if bool(self.images) == bool(self.images_parquet):
            raise ConfigError("give exactly one (an ImageFolder root or a Parquet table), got "
                              f"{'both' if self.images else 'neither'}", "label.images, label.images_parquet")
        if self.images:
            _folder("label.images", self.images, "")
        if self.images_parquet and not Path(self.images_parquet).exists():
            raise ConfigError(f"not found: {self.images_parquet}", "label.images_parquet")
        if self.true_masks:
            _folder("label.true_masks", self.true_masks, "")
        require(bool(self.members), "label.members", "at least one ensemble member (ARCH:WEIGHTS_FILE) is required")


@dataclass
class ClassifierSection(Section):
    arch: str = setting("resnet18", "torchvision classifier architecture (method classifier)")
    archs: list[str] = setting(["resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0"],
                               "ensemble members trained by `rayseg train-classifiers`")
    images: str = setting("", "ImageFolder root to train on; empty = the synthetic classification set",
                          path="input")
    num_images: int = setting(1024, "synthetic classification set: training images", ge=1)
    num_val: int = setting(256, "synthetic classification set: held-out images for accuracy", ge=1)
    image_size: int = setting(64, "input side in pixels (images are resized to it)", ge=8)

    def check(self) -> None:
        require(bool(self.archs), "archs", "empty (list the torchvision architectures of the ensemble members)")
        repeated = sorted({a for a in self.archs if self.archs.count(a) > 1})
        require(not repeated, "archs", f"{repeated[0] if repeated else ''!r} listed twice (one run folder per "
                "architecture)")

    def check_inputs(self) -> None:
        """When classifiers are trained: every architecture is a torchvision classifier."""
        from rayseg.models.segmentation import is_classifier  # torchvision's and timm's model lists

        for key, arch in [("classifier.arch", self.arch),
                          *((f"classifier.archs[{i}]", a) for i, a in enumerate(self.archs))]:
            require(is_classifier(arch), key, f"unknown classifier {arch!r} (torchvision: e.g. resnet18, "
                    "mobilenet_v3_small, shufflenet_v2_x1_0; timm: timm/<model>)")
        if self.images:
            _folder("classifier.images", self.images, "")


@dataclass
class ViewsSection(Section):
    """Two-view sampling of the contrastive methods (pixcon, densecl; methods.md §4.2). Defaults: BYOL's asymmetric
    photometric augmentations (PixCon) with crop geometry scaled to the 64 px synthetic scenes; the paper values
    at 224 px are given in each doc. ``jobs/configs/pretrain_densecl.yaml`` sets MoCo-v2's symmetric recipe."""

    crop_size: int = setting(64, "side S of each view in pixels (paper: 224)", ge=8)
    scale_min: float = setting(0.2, "RandomResizedCrop smallest area fraction (paper: 0.08 at 224 px)", gt=0, le=1)
    scale_max: float = setting(1.0, "RandomResizedCrop largest area fraction", gt=0, le=1)
    ratio_min: float = setting(0.75, "RandomResizedCrop smallest aspect ratio", gt=0)
    ratio_max: float = setting(4.0 / 3.0, "RandomResizedCrop largest aspect ratio", gt=0)
    min_overlap: float = setting(0.01, "view 2 must overlap view 1 by this fraction of view 2's area", ge=0, le=1)
    overlap_tries: int = setting(10, "view-2 draws before both views fall back to the same centre crop", ge=1)
    hflip: float = setting(0.5, "horizontal flip probability, per view", ge=0, le=1)
    jitter: list[float] = setting([0.4, 0.4, 0.2, 0.1], "colour jitter brightness, contrast, saturation, hue")
    jitter_prob: float = setting(0.8, "probability of the colour jitter, per view", ge=0, le=1)
    grayscale_prob: float = setting(0.2, "probability of grayscale, per view", ge=0, le=1)
    blur_kernel: int = setting(7, "Gaussian blur kernel side, odd (paper: 23 at 224 px)", ge=1)
    blur_sigma: list[float] = setting([0.1, 0.6], "Gaussian blur sigma range (paper: [0.1, 2.0] at 224 px)")
    blur_prob: list[float] = setting([1.0, 0.1], "Gaussian blur probability of view 1, view 2 (MoCo-v2: 0.5, 0.5)")
    solarize_prob: list[float] = setting([0.0, 0.2], "solarisation probability of view 1, view 2 (MoCo-v2: 0, 0)")
    solarize_threshold: float = setting(0.5, "solarisation threshold on [0, 1] images (128/255)", ge=0, le=1)

    def check(self) -> None:
        require(self.scale_min <= self.scale_max, "scale_min/scale_max",
                f"need scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        require(self.ratio_min <= self.ratio_max, "ratio_min/ratio_max",
                f"need ratio_min <= ratio_max, got {self.ratio_min}, {self.ratio_max}")
        require(len(self.jitter) == 4 and all(v >= 0 for v in self.jitter) and self.jitter[3] <= 0.5, "jitter",
                f"expected 4 values >= 0 (hue <= 0.5), got {self.jitter}")
        require(self.blur_kernel % 2 == 1, "blur_kernel", f"must be odd, got {self.blur_kernel}")
        require(len(self.blur_sigma) == 2 and 0.0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma",
                f"expected [min, max] with 0 < min <= max, got {self.blur_sigma}")
        for key in ("blur_prob", "solarize_prob"):
            value = getattr(self, key)
            require(len(value) == 2 and all(0.0 <= v <= 1.0 for v in value), key,
                    f"expected two probabilities (view 1, view 2), got {value}")


@dataclass
class PixConSection(Section):
    """PixCon (methods.md §4.1-4.3): constants of the official SR configuration [CODE] unless marked."""

    variant: str = setting("sr", "positives of the dense loss: coord (same location, in-box queries only), "
                           "sim (backbone-similarity argmax, all queries), sr (sim + semantic reweighting)",
                           choices=("coord", "sim", "sr"))
    temperature: float = setting(0.2, "tau of the global and the dense InfoNCE", gt=0)
    loss_lambda: float = setting(0.5, "lambda: L = sum over both directions of (1 - lambda) L_g + lambda L_d",
                                 ge=0, le=1)
    gamma: float = setting(2.0, "SR sharpening exponent of the out-of-box weights", ge=0)
    sr_eps: float = setting(1e-6, "SR: added to the weight denominator max_out - min_all (guards 0/0) [PROPOSED]",
                            ge=0)
    queue_size: int = setting(65536, "entries of each FIFO queue (global keys; per-image pooled dense keys)", ge=1)
    proj_dim: int = setting(128, "output width of the global and dense heads and predictors", ge=1)
    proj_hidden_dim: int = setting(2048, "hidden width of the global and dense heads", ge=1)
    pred_hidden_dim: int = setting(2048, "hidden width of the global and dense predictors", ge=1)
    momentum: float = setting(0.99, "target EMA momentum at step 0", ge=0, le=1)
    momentum_schedule: str = setting("cosine", "cosine: m rises to 1 at the last step (BYOL); constant: fixed",
                                     choices=("cosine", "constant"))


@dataclass
class DenseCLSection(Section):
    """DenseCL (methods.md §4.7): MoCo-v2 global loss + similarity-matched dense loss, no predictors."""

    temperature: float = setting(0.2, "tau of the global and the dense InfoNCE", gt=0)
    loss_lambda: float = setting(0.5, "lambda: L = (1 - lambda) L_g + lambda L_d once the warm-up is over",
                                 ge=0, le=1)
    dense_warmup_steps: int = setting(1000, "optimizer steps with lambda = 0 (dense loss off) first [MEMORY]", ge=0)
    symmetric: bool = setting(False, "also the swapped direction (view 2 queries), summed; DenseCL: false")
    queue_size: int = setting(65536, "entries of each FIFO queue (global keys; per-image pooled dense keys)", ge=1)
    proj_dim: int = setting(128, "output width of the global and dense heads", ge=1)
    proj_hidden_dim: int = setting(2048, "hidden width of the global and dense heads", ge=1)
    head_batch_norm: bool = setting(False, "BatchNorm in the global and dense heads; DenseCL's neck (MoCo-v2's MLP) "
                                    "has none; true gives PixCon's BYOL-style heads")
    momentum: float = setting(0.999, "target EMA momentum (MoCo-v2)", ge=0, le=1)
    momentum_schedule: str = setting("constant", "constant (MoCo-v2) or cosine (rising to 1)",
                                     choices=("cosine", "constant"))


@dataclass
class MDPSection(Section):
    """MDP multi-dataset pre-training (methods.md §1); defaults marked [PROPOSED] there are reconstructions."""

    datasets: list[str] = setting([], "datasets whose label spaces are concatenated: 'synthetic:DOMAIN' or "
                                  "'KIND:ROOT' with a data.kind (voc: classes from ROOT/class_names.txt, else "
                                  "data.num_classes); the other data.* keys apply to each; empty = the one dataset "
                                  "of data.*", path="spec")
    sampling: str = setting("proportional", "proportional: plain union; balanced: smaller datasets repeated up to "
                            "the largest one's size", choices=("proportional", "balanced"))
    proj_hidden: int = setting(512, "hidden width of the dense projection head (1x1 conv, BN, ReLU, 1x1 conv)",
                               ge=1)
    proj_dim: int = setting(128, "D: width of the L2-normalised pixel embedding and of each prototype", ge=1)
    temperature: float = setting(0.1, "tau of the pixel-to-prototype logits z.p/tau [PROPOSED]", gt=0)
    momentum: float = setting(0.99, "mu of the prototype update p <- n(mu p + (1 - mu) c) [PROPOSED]", ge=0, lt=1)
    csc: str = setting("csc2", "cross-class sparse coding: csc2 pulls the top-k similar prototypes closer (paper), "
                       "csc1 drops them from the denominator, none disables it", choices=("none", "csc1", "csc2"))
    top_k: int = setting(5, "k: most similar other prototypes per pixel used by CSC [PROPOSED]", ge=1)
    beta: float = setting(0.1, "weight of the CSC2 pull term [PROPOSED]", ge=0)
    other_datasets_only: bool = setting(True, "CSC candidates only among other datasets' classes (so with one "
                                        "dataset CSC adds 0) [PROPOSED]")
    region_mix_fraction: float = setting(1.0 / 3.0, "fraction of each batch region-mixed (CutMix-like box) "
                                         "[PROPOSED]", ge=0, le=1)
    class_mix_fraction: float = setting(1.0 / 3.0, "fraction of each batch class-mixed (ClassMix-like) [PROPOSED]",
                                        ge=0, le=1)
    lambda_min: float = setting(0.0, "region mixing: lambda ~ U(lambda_min, lambda_max); box area ratio 1 - lambda",
                                ge=0, le=1)
    lambda_max: float = setting(1.0, "region mixing: upper end of the lambda range", ge=0, le=1)
    mix_same_dataset_fallback: bool = setting(True, "an image with no other-dataset partner in its batch (e.g. one "
                                              "dataset) mixes with an image of its own dataset; false: stays clean")
    export_head: bool = setting(False, "also export projection_head.pt (head, prototypes, label table)")

    def check(self) -> None:
        for i, spec in enumerate(self.datasets):
            kind, sep, arg = str(spec).partition(":")
            require(bool(sep) and kind in ("synthetic", *FOLDER_KINDS) and bool(arg.strip()), f"datasets[{i}]",
                    f"expected 'synthetic:DOMAIN' or 'KIND:ROOT' with KIND one of {', '.join(FOLDER_KINDS)}, "
                    f"got {spec!r}")
        total = self.region_mix_fraction + self.class_mix_fraction
        require(total <= 1.0 + 1e-9, "region_mix_fraction",
                f"region_mix_fraction + class_mix_fraction must be <= 1, got {total}")
        require(self.lambda_min <= self.lambda_max, "lambda_min/lambda_max",
                f"need lambda_min <= lambda_max, got {self.lambda_min}, {self.lambda_max}")

    def check_inputs(self) -> None:
        """When method is mdp: every ``KIND:ROOT`` folder exists."""
        for i, spec in enumerate(self.datasets):
            kind, _, arg = spec.partition(":")
            if kind != "synthetic":
                _folder(f"mdp.datasets[{i}]", arg.strip(), "")


@dataclass
class SSASection(Section):
    """Losses of the SSA-Seg classifier head (``model.classifier: ssa``; methods.md §2.4, official-code defaults)."""

    edge_border: int = setting(6, "response distillation: label edges within this many pixels of the feature-map "
                               "border are dropped (official 6; a feature map <= 2*edge_border has no boundary band)",
                               ge=0)
    smoothing: float = setting(0.5, "response distillation: target = smoothing * teacher + (1 - smoothing) * "
                               "one-hot", ge=0, le=1)
    semantic_weight: float = setting(10.0, "weight inside the semantic-domain distillation (prototype relations)",
                                     ge=0)
    spatial_weight: float = setting(0.4, "weight inside the spatial-domain distillation (position prototypes)", ge=0)
    dice_weight: float = setting(1.0, "weight of each Dice term (student and teacher)", ge=0)


@dataclass
class MlflowSection(Section):
    """Optional experiment tracking with MLflow's own client (``pip install 'rayseg[mlflow]'``): rank 0 logs the
    run's hyperparameters, each epoch's losses, lr and mIoU, and at the end metrics.json, the confusion matrix,
    config.yaml, tags.json and summary.json as artifacts. A resumed run continues its MLflow run."""

    enabled: bool = setting(False, "log this run to MLflow")
    tracking_uri: str = setting("", "MLflow tracking URI (http://host:5000, file:///path, ...); empty = a local file "
                                "store <run.storage>/mlruns")
    experiment: str = setting("rayseg", "MLflow experiment name")

    def check_inputs(self) -> None:
        if self.enabled and importlib.util.find_spec("mlflow") is None:
            raise ConfigError("true, but MLflow is not installed: pip install 'rayseg[mlflow]'", "mlflow.enabled")


@dataclass
class PredictSection(Section):
    """``rayseg predict``: a trained export applied to new images, inferred as the ``eval`` section says (the same
    code as evaluation)."""

    weights: str = setting("", "a run's export/model.pt", path="input")
    input: str = setting("", "an image file, a folder of images (searched recursively), or a Parquet table of "
                         "images (.parquet file or folder; columns id string, image bytes)", path="input")
    output: str = setting("rayseg_predictions", "folder for masks/, overlays/ (and probabilities/)", path="output")
    probabilities: bool = setting(False, "also write each image's class probabilities (float16 K x H x W .npy)")
    overlay_alpha: float = setting(0.5, "weight of the mask colours in overlays/", ge=0, le=1)
    shard_size: int = setting(64, "folder input: images per committed shard (the unit a re-run skips)", ge=1)
    num_actors: int = setting(1, "folder input: inference actors", ge=1)
    gpus_per_actor: float = setting(0.0, "GPUs per inference actor (fractions allowed; 0 = CPU)", ge=0)
    cpus_per_actor: float = setting(1.0, "CPUs per inference actor (its torch threads: rounded up)", gt=0)

    def check_inputs(self) -> None:
        if not self.weights:
            raise ConfigError("required: a run's export/model.pt", "predict.weights")
        if not Path(self.weights).is_file():
            raise ConfigError(f"file not found: {self.weights}", "predict.weights")
        if not self.input:
            raise ConfigError("required: an image file or a folder of images", "predict.input")
        if not Path(self.input).exists():
            raise ConfigError(f"not found: {self.input}", "predict.input")


@dataclass
class Config(Section):
    method: str = setting("supervised", "training objective (a key of rayseg.methods.METHODS)", choices=METHOD_NAMES)
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    pssl: PSSLSection = field(default_factory=PSSLSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    ssa: SSASection = field(default_factory=SSASection)
    label: LabelSection = field(default_factory=LabelSection)
    views: ViewsSection = field(default_factory=ViewsSection)
    pixcon: PixConSection = field(default_factory=PixConSection)
    densecl: DenseCLSection = field(default_factory=DenseCLSection)
    mdp: MDPSection = field(default_factory=MDPSection)
    predict: PredictSection = field(default_factory=PredictSection)
    mlflow: MlflowSection = field(default_factory=MlflowSection)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of everything that defines the run's result (not where it is stored)."""
        d = self.to_dict()
        d.pop("predict")  # how a trained model is applied later, not how it is trained
        d.pop("mlflow")  # where the run is also reported
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "storage", "tags")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def tags(self, command: str) -> dict:
        """What ``<run>/tags.json`` holds: the command, method, head (``model.classifier``), start (the pre-training
        run whose export ``model.init_weights`` names, its file name otherwise, ``scratch`` without one), seed and
        eval (``probe`` with ``model.freeze_backbone``, else ``finetune``), then ``run.tags`` over them."""
        init = self.model.init_weights
        if not init:
            start = "scratch"
        elif storage.basename(storage.parent(init)) == "export":
            start = storage.basename(storage.parent(storage.parent(init)))
        else:
            start = storage.basename(init).rsplit(".", 1)[0]
        return {"command": command, "method": self.method, "head": self.model.classifier, "start": start,
                "seed": self.run.seed, "eval": "probe" if self.model.freeze_backbone else "finetune",
                **self.run.tags}

    def run_dir(self, command: str) -> str:
        name = self.run.name or f"{command}-{self.method}-{self.fingerprint()}"
        return storage.join(output_location(self.run.storage, "run.storage"), name)

    def check(self) -> None:
        # DeepLabV3's image pooling leaves one value per channel and image: its BatchNorm cannot train on one image
        # (unless SyncBatchNorm pools the batch over several workers). Only these methods train the decode head.
        pooled = self.train.sync_bn and self.train.num_workers > 1
        require(not (self.method in ("supervised", "pssl") and self.model.head == "deeplabv3"
                     and self.train.batch_size < 2 and not pooled), "train.batch_size",
                "model.head deeplabv3 needs 2 or more images per worker (its image-pooling BatchNorm trains on one "
                "value per image), got 1")

    def check_inputs(self) -> None:
        """The inputs of a training run exist (on the driver, before Ray starts)."""
        self.data.check_inputs()
        self.model.check_inputs()
        self.mlflow.check_inputs()
        if self.method == "pssl":
            self.pssl.check_inputs()
        if self.method == "classifier":
            self.classifier.check_inputs()
        if self.method == "mdp":
            self.mdp.check_inputs()


__all__ = ["ClassifierSection", "Config", "DataSection", "DenseCLSection", "EvalSection", "ExplainerSection",
           "LabelSection", "MDPSection", "MlflowSection", "ModelSection", "OptimSection", "PSSLSection",
           "PixConSection", "PredictSection", "RunSection", "SSASection", "TrainSection", "ViewsSection",
           "METHOD_NAMES"]
