"""The ``label`` config section -> a :class:`rayseg.labeling.pipeline.LabelingJob`, checked before Ray starts."""

from __future__ import annotations

from pathlib import Path

from rayseg.config import Config, ConfigError
from rayseg.labeling.explainers import SmoothGradConfig
from rayseg.labeling.members import MemberSpec, check_weights
from rayseg.labeling.pipeline import LabelingJob, list_images, list_parquet_images


def parse_member(text: str) -> MemberSpec:
    """``"resnet18:/w/resnet18.pt"`` -> MemberSpec; ``"resnet18"`` -> no weights file (random, tests only)."""
    arch, _, weights = text.partition(":")
    if not arch:
        raise ConfigError(f"label.members: '{text}' is not ARCH:WEIGHTS_FILE")
    return MemberSpec(arch=arch, weights=weights)


def labeling_job(cfg: Config) -> LabelingJob:
    lab = cfg.label
    if bool(lab.images) == bool(lab.images_parquet):
        raise ConfigError("label.images, label.images_parquet: give exactly one (an ImageFolder root or a Parquet "
                          f"table), got {'both' if lab.images else 'neither'}")
    if lab.images and not Path(lab.images).is_dir():
        raise ConfigError(f"label.images: folder not found: {lab.images}")
    if lab.images_parquet and not Path(lab.images_parquet).exists():
        raise ConfigError(f"label.images_parquet: not found: {lab.images_parquet}")
    if lab.true_masks and not Path(lab.true_masks).is_dir():
        raise ConfigError(f"label.true_masks: folder not found: {lab.true_masks}")
    if not lab.members:
        raise ConfigError("label.members: at least one ensemble member (ARCH:WEIGHTS_FILE) is required")
    members = [parse_member(m) for m in lab.members]
    try:
        check_weights(members, lab.allow_random_weights)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"label.members: {e}") from None
    key = "label.images_parquet" if lab.images_parquet else "label.images"
    try:
        _, class_of = list_parquet_images(lab.images_parquet) if lab.images_parquet else list_images(lab.images)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(f"{key}: {e}") from None
    num_classes = lab.num_classes or max(class_of.values()) + 1
    if max(class_of.values()) >= num_classes:
        raise ConfigError(f"label.num_classes: {num_classes} but {key} has class index {max(class_of.values())}")
    explainer = SmoothGradConfig(samples=lab.samples, noise_level=lab.noise_level, target=lab.target,
                                 target_from=lab.target_from, batch_cap=lab.batch_cap, method=lab.method,
                                 fold_batchnorm=lab.fold_batchnorm, channels_last=lab.channels_last, amp=lab.amp,
                                 polyphase_stem=lab.polyphase_stem)
    return LabelingJob(images=lab.images, output=lab.output, members=members, num_classes=num_classes,
                       explainer=explainer, input_size=lab.input_size, shard_size=lab.shard_size,
                       batch_size=lab.batch_size, num_actors=lab.num_actors, num_gpus_per_actor=lab.gpus_per_actor,
                       num_cpus_per_actor=lab.cpus_per_actor, num_cpus_per_task=lab.cpus_per_task,
                       allow_random_weights=lab.allow_random_weights,
                       seed=cfg.run.seed, true_masks=lab.true_masks, images_parquet=lab.images_parquet)
