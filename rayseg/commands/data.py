"""``rayseg data synthetic``: the built-in benchmark written to disk in real formats, so that every command (and
the PSSL path from an ImageFolder) can be tried without the demo's internals.

``<out>/classification/<class>/*.png`` is an ImageFolder of the synthetic classification set (the dominant
object's true mask beside it in ``classification_masks/``, which ``label.true_masks`` scores against);
``<out>/voc_<domain>/`` holds each segmentation domain as a VOC tree (``JPEGImages``, ``SegmentationClass``,
``ImageSets/Segmentation/{train,val}.txt``). Writing is idempotent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rayseg.config import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["synthetic"], help="what to write (the built-in synthetic benchmark)")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--num-images", type=int, default=256, help="training images per set (default 256)")
    p.add_argument("--num-val", type=int, default=64, help="validation images per domain (default 64)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--domains", default="A,B,C", help="segmentation domains to write (default A,B,C)")
    p.add_argument("--seed", type=int, default=0)


def write_synthetic(out: Path, num_images: int, num_val: int, image_size: int, domains: list[str],
                    seed: int = 0) -> dict[str, Path]:
    """Write the classification ImageFolder and one VOC tree per domain; returns ``{name: folder}``."""
    from rayseg.data.synthetic import (DOMAINS, SyntheticClassification, SyntheticSegmentation, write_image_folder,
                                       write_voc_folder)

    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ConfigError(f"unknown domain(s) {', '.join(unknown)}; the domains are {', '.join(DOMAINS)}", "--domains")
    for key, value in (("--num-images", num_images), ("--num-val", num_val), ("--image-size", image_size)):
        if value < 1:
            raise ConfigError(f"must be >= 1, got {value}", key)
    written = {"classification": out / "classification"}
    write_image_folder(SyntheticClassification(num_images=num_images, image_size=image_size, seed=seed),
                       written["classification"])
    for domain in domains:
        root = written[f"voc_{domain}"] = out / f"voc_{domain}"
        for split, count in (("train", num_images), ("val", num_val)):
            write_voc_folder(SyntheticSegmentation(domain, split, count, image_size, seed), root)
    return written


def run(args: argparse.Namespace) -> int:
    from rayseg.data.synthetic import DOMAINS

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    out = Path(args.out)
    written = write_synthetic(out, args.num_images, args.num_val, args.image_size, domains, args.seed)
    for name, folder in written.items():
        print(f"[rayseg] wrote {name}: {folder}")
    first = domains[0] if domains else "A"
    print(f"next, for example:\n"
          f"  rayseg train-classifiers classifier.images={written['classification']}\n"
          f"  rayseg label label.images={written['classification']} "
          f"label.true_masks={written['classification']}_masks label.members=[resnet18:WEIGHTS.pt]\n"
          f"  rayseg finetune data.kind=voc data.root={out / f'voc_{first}'} "
          f"data.num_classes={len(DOMAINS[first].classes) + 1}")
    return 0
