"""`rayseg show-labels`: a PNG grid of a few PSSL labels (image, decile heat map, pseudo-mask), for a look.

Rendered with matplotlib's Agg canvas on a standalone ``Figure`` (no pyplot, so no global backend state is
touched and it works headless). Reads committed shards only (:func:`rayseg.labeling.shards.read_labels`); images
come from the ImageFolder root (``images_root/<id>``) or from the Parquet image table (``id``/``image``
columns) the labels were made from. When neither is given, the source recorded in the version's
``summary.json`` is used. The version folder may be an object-store URI (:mod:`rayseg.storage`); the images and
the PNG written are local.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayseg import storage
from rayseg.config import ConfigError
from rayseg.engine.prediction import is_parquet_table
from rayseg.labeling import shards
from rayseg.labeling.geometry import fit_image, placement
from rayseg.labeling.stages import read_true_mask, top_decile_iou

__all__ = ["show_labels"]

CELL_INCHES = 2.4
DPI = 100


def _source(version_dir: str, images_root, parquet) -> tuple[Path | None, Path | None]:
    """(ImageFolder root, Parquet table): exactly one is set."""
    if images_root is None and parquet is None:
        summary = storage.join(version_dir, "summary.json")
        recorded = json.loads(storage.read_text(summary)) if storage.is_file(summary) else {}
        images_root = recorded.get("images_root") or None
        parquet = recorded.get("images_parquet") or None
        if images_root is None and parquet is None:
            raise ValueError(f"{version_dir}: no image source recorded in summary.json; give images_root "
                             "(ImageFolder root) or parquet (Parquet image table)")
    if images_root is not None and parquet is not None:
        raise ValueError("show_labels: give images_root or parquet, not both")
    if images_root is not None and is_parquet_table(Path(images_root)):  # --images may name the table too
        images_root, parquet = None, images_root
    if images_root is not None and not Path(images_root).is_dir():
        raise FileNotFoundError(f"{images_root}: image folder not found")
    if parquet is not None and not Path(parquet).exists():
        raise FileNotFoundError(f"{parquet}: Parquet image table not found")
    return (Path(images_root) if images_root is not None else None,
            Path(parquet) if parquet is not None else None)


def _image_bytes(ids: list[str], images_root: Path | None, parquet: Path | None) -> dict[str, bytes | None]:
    if images_root is not None:
        out = {}
        for rel in ids:
            try:
                out[rel] = (images_root / rel).read_bytes()
            except OSError:
                out[rel] = None
        return out
    import pyarrow.dataset as pads

    table = pads.dataset(str(parquet), format="parquet").to_table(
        columns=["id", "image"], filter=pc.field("id").isin(ids))
    out = dict.fromkeys(ids)
    out.update(zip(table.column("id").to_pylist(), table.column("image").to_pylist()))
    return out


def _class_names(images_root: Path | None) -> list[str]:
    if images_root is None:
        return []
    return sorted(e.name for e in os.scandir(images_root) if e.is_dir())


def _mask_on_input(true: np.ndarray, size: int, geometry: str) -> np.ndarray:
    """A true mask placed on the ``size x size`` input as ``geometry`` placed its image (nearest)."""
    from PIL import Image

    rh, rw, top, left = placement(true.shape[0], true.shape[1], size, geometry)
    resized = Image.fromarray(true.astype(np.uint8) * 255).resize((rw, rh), Image.NEAREST)
    if geometry != "square":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(resized, (left, top))
        resized = canvas
    return np.asarray(resized) > 127


def show_labels(version_dir: str | os.PathLike, images_root: str | os.PathLike | None, out_png: str | os.PathLike,
                count: int = 8, threshold: int = 9, seed: int | None = None, *,
                parquet: str | os.PathLike | None = None, true_masks: str | os.PathLike | None = None) -> Path:
    """Render ``count`` labelled images of ``version_dir`` (a ``<labels root>/<label_version>`` folder: a path or
    a URI) as a PNG grid at ``out_png``: one row per image, columns = the image (as it was explained:
    ``label.geometry``), the decile heat map (0..9, fixed colour scale with a colorbar), the pseudo-mask
    (deciles >= ``threshold``, red over the image). Rows: the first ``count`` ids in sorted order, or a sample
    seeded by ``seed`` when given. Titles: id and class name (class folder of ``images_root``; ``class <index>``
    for Parquet input). ``images_root`` may also be a Parquet image table (file or folder of ``*.parquet``),
    like ``parquet``; both None -> the source recorded in ``summary.json``. An image that is missing or no longer
    matches the labelled content hash is marked in its title (grey when unreadable). With true object masks (``true_masks``, or the ``label.true_masks``
    recorded in ``summary.json``) each pseudo-mask's title gives its IoU with the true mask, and the true mask's
    outline is drawn in green. Written atomically; returns the path of the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    version_dir = str(version_dir)
    if count < 1:
        raise ValueError(f"show_labels: count must be >= 1, got {count}")
    if not 0 <= int(threshold) <= 9:
        raise ValueError(f"show_labels: threshold must be a decile 0..9, got {threshold}")
    if not storage.is_dir(version_dir):
        raise FileNotFoundError(f"{version_dir}: label version folder not found")
    root, table_path = _source(version_dir, images_root, parquet)
    manifests = shards.committed_shards(version_dir)
    geometry = shards.geometry_of(manifests)  # the image is shown as it was explained
    all_ids = sorted(shards.read_labels(version_dir, columns=["id"], manifests=manifests).column("id").to_pylist())
    if not all_ids:
        raise ValueError(f"{version_dir}: no committed label shards")
    chosen = all_ids[:count] if seed is None else sorted(random.Random(seed).sample(all_ids, min(count, len(all_ids))))
    labels = shards.read_labels(version_dir, manifests=manifests)
    labels = labels.filter(pc.is_in(labels.column("id"), value_set=pa.array(chosen, pa.string())))
    rows = {r["id"]: r for r in labels.to_pylist()}
    contents = _image_bytes(chosen, root, table_path)
    names = _class_names(root)
    if true_masks is None:
        summary = storage.join(version_dir, "summary.json")
        true_masks = (json.loads(storage.read_text(summary)).get("true_masks") or None) if storage.is_file(summary) \
            else None

    n = len(chosen)
    fig = Figure(figsize=(3 * CELL_INCHES + 0.6, n * CELL_INCHES), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for r, rel in enumerate(chosen):
        row = rows[rel]
        dec = shards.decode_deciles(row["deciles_png"])
        h, w = dec.shape
        data = contents.get(rel)
        note = ""
        image = np.full((h, w, 3), 128, np.uint8)
        if data is None:
            note = " (image missing)"
        else:
            if hashlib.sha256(data).hexdigest() != row["content_hash"]:
                note = " (image changed)"
            try:
                with Image.open(io.BytesIO(data)) as img:
                    image = np.asarray(fit_image(img.convert("RGB"), w, geometry))
            except Exception:  # corrupt now: show grey, say so
                note = " (image unreadable)"
        k = int(row["class_index"])
        cls = names[k] if k < len(names) else f"class {k}"
        mask = dec >= int(threshold)
        overlay = image.astype(np.float32) / 255.0
        overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([1.0, 0.0, 0.0], np.float32)
        true = read_true_mask(str(true_masks), rel) if true_masks else None
        score = ""
        if true is not None:
            score = f", IoU {top_decile_iou(dec, true, geometry, int(threshold)):.2f}"
            on_input = _mask_on_input(true, w, geometry)
            edge = on_input & ~(np.roll(on_input, 1, 0) & np.roll(on_input, -1, 0) & np.roll(on_input, 1, 1)
                                & np.roll(on_input, -1, 1))
            overlay[edge] = np.array([0.0, 1.0, 0.0], np.float32)

        ax_img, ax_dec, ax_mask = axes[r]
        ax_img.imshow(image, interpolation="nearest")
        ax_img.set_title(f"{rel}\n{cls}{note}", fontsize=7)
        heat = ax_dec.imshow(dec, cmap="viridis", vmin=0, vmax=9, interpolation="nearest")
        ax_dec.set_title("deciles 0..9", fontsize=7)
        fig.colorbar(heat, ax=ax_dec, fraction=0.046, pad=0.04, ticks=[0, 3, 6, 9])
        ax_mask.imshow(overlay, interpolation="nearest")
        ax_mask.set_title(f"pseudo-mask (decile >= {int(threshold)}): {cls}{score}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    storage.write_bytes(out_png, png.getbuffer())
    return Path(out_png)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True,
                   help="label-version folder written by `rayseg label` (a path or an object-store URI)")
    p.add_argument("--images", default="", help="the labelled ImageFolder root")
    p.add_argument("--parquet", default="", help="or the labelled Parquet table of image bytes")
    p.add_argument("--out", default="labels.png", help="PNG file to write")
    p.add_argument("--count", type=int, default=8, help="images to show")
    p.add_argument("--true-masks", default="", help="true object masks (<dir>/<id>.png) to score each pseudo-mask "
                   "(default: the label job's label.true_masks)")


def run(args: argparse.Namespace) -> int:
    if not storage.is_dir(args.labels):
        raise ConfigError(f"folder not found: {args.labels}", "--labels")
    if bool(args.images) == bool(args.parquet):
        raise ConfigError("give exactly one (the labelled images)", "--images, --parquet")
    path = show_labels(args.labels, args.images or None, args.out, count=args.count, true_masks=args.true_masks or None,
                       **({"parquet": args.parquet} if args.parquet else {}))
    print(f"[rayseg] wrote {path}")
    return 0
