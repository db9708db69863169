"""Is synthetic generation ever the input bottleneck? Generation vs reading the same images from PNG.

For 64x64 and 128x128, generates 500 segmentation samples (cycling domains A, B, C) with
``SyntheticSegmentation.__getitem__`` and compares against a baseline run in the same process: the same
500 images + masks written once as PNG files to a temporary directory and read back with PIL
(``Image.open(...).convert("RGB")`` + mask, to float / int64 tensors). Also shows the validating
``VOCSegmentationFolder`` reader on the same files. One core (``torch.set_num_threads(1)``), process CPU
time, best of 5 rounds with the three measures interleaved.

Run: ``python bench/bench_synthetic.py``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rayseg.data.folders import VOCSegmentationFolder
from rayseg.data.synthetic import DOMAINS, SyntheticSegmentation, write_voc_folder

NUM_IMAGES, REPEATS = 500, 5


def best_rates(fns: dict, n: int) -> dict[str, float]:
    """Images/s of each ``fn(i)`` over ``i in range(n)`` in CPU time of this process (so other processes on a
    busy machine do not count), best of REPEATS rounds with the functions interleaved within each round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start = time.process_time()
            for i in range(n):
                fn(i)
            best[name] = min(best[name], time.process_time() - start)
    return {name: n / seconds for name, seconds in best.items()}


def read_png_pair(image_path: Path, mask_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with Image.open(image_path) as img:
        image = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float().div_(255)
    with Image.open(mask_path) as m:
        mask = torch.from_numpy(np.array(m)).long()
    return image, mask


def main() -> None:
    torch.set_num_threads(1)
    domains = list(DOMAINS)
    print(f"synthetic generation vs PNG read, {NUM_IMAGES} images, 1 thread, CPU time, best of {REPEATS}")
    for size in (64, 128):
        per_domain = -(-NUM_IMAGES // len(domains))
        datasets = [SyntheticSegmentation(d, num_images=per_domain, image_size=size) for d in domains]

        def generate(i: int, datasets=datasets) -> dict:
            return datasets[i % len(datasets)][i // len(datasets)]

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for ds in datasets:
                write_voc_folder(ds, root)
            folder = VOCSegmentationFolder(root, "train", num_classes=max(ds.num_classes for ds in datasets))
            pairs = [
                (root / "JPEGImages" / f"{sid}.png", root / "SegmentationClass" / f"{sid}.png") for sid in folder.ids
            ]
            rates = best_rates(
                {"gen": generate, "png": lambda i: read_png_pair(*pairs[i]), "voc": folder.__getitem__}, NUM_IMAGES
            )
            gen, png, voc = rates["gen"], rates["png"], rates["voc"]
        print(
            f"{size}x{size}: generate {gen:7.0f} img/s | PIL PNG read {png:7.0f} img/s | "
            f"ratio generate/PNG-read {gen / png:5.2f}x | VOCSegmentationFolder {voc:7.0f} img/s "
            f"({gen / voc:5.2f}x)"
        )


if __name__ == "__main__":
    main()
