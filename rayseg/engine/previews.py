"""What a person looks at besides the numbers: prediction panels of a few validation images for TensorBoard, the
colour overlay ``rayseg predict`` writes, and the hyperparameters TensorBoard's HPARAMS tab compares runs by."""

from __future__ import annotations

import numpy as np
import torch

from rayseg.config import Config
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rayseg.engine.inference import infer

PREVIEW_IMAGES = 4


def overlay(rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` (uint8 ``H x W x 3``) with the palette colour of each pixel's class blended in; negative labels
    (ignore) are left as they are."""
    valid = mask >= 0
    colours = palette[np.where(valid, mask, 0) % len(palette)].astype(np.float32)
    blended = rgb.astype(np.float32)
    blended[valid] = (1 - alpha) * blended[valid] + alpha * colours[valid]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def preview_panels(model: torch.nn.Module, cfg: Config, device: torch.device,
                   count: int = PREVIEW_IMAGES) -> list[np.ndarray]:
    """For the first ``count`` readable validation images: ``[image | prediction | true mask]`` side by side
    (uint8 ``H x 3W x 3``), inferred as evaluation infers (``eval`` section)."""
    from rayseg.data import build_segmentation_dataset
    from rayseg.data.folders import voc_palette

    val_set = build_segmentation_dataset(cfg.data, train=False)
    palette = voc_palette(256)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    was_training = model.training
    model.eval()
    panels = []
    for i in range(len(val_set)):
        if len(panels) == count:
            break
        item = val_set[i]
        if item.get("bad"):  # data.skip_bad: an unreadable sample
            continue
        pred = infer(model, item["image"][None].to(device), cfg.eval)[0].argmax(0).cpu().numpy()
        rgb = ((item["image"] * std + mean).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
        panels.append(np.concatenate([rgb, overlay(rgb, pred, palette), overlay(rgb, item["mask"].numpy(), palette)],
                                     axis=1))
    model.train(was_training)
    return panels


def hyperparameters(cfg: Config, command: str) -> dict[str, str | float | int | bool]:
    """The settings runs are usually compared by, plus the run's tags (``tag.<key>``)."""
    params = {"method": cfg.method, "model.backbone": cfg.model.backbone, "model.head": cfg.model.head,
              "model.classifier": cfg.model.classifier, "model.output_stride": cfg.model.output_stride,
              "optim.name": cfg.optim.name, "optim.lr": cfg.optim.lr, "optim.weight_decay": cfg.optim.weight_decay,
              "optim.schedule": cfg.optim.schedule, "train.batch_size": cfg.train.batch_size,
              "train.num_workers": cfg.train.num_workers, "train.epochs": cfg.train.epochs,
              "data.kind": cfg.data.kind, "data.crop_size": cfg.data.crop_size, "run.seed": cfg.run.seed}
    params.update({f"tag.{k}": str(v) for k, v in cfg.tags(command).items() if k not in ("method", "seed")})
    return params
