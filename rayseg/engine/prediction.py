"""``rayseg predict``: a trained export applied to new images, writing per image

- ``masks/<id>.png``: the predicted class of each pixel as a palette PNG (pixel value = class index, VOC colours;
  16-bit grey PNG when there are more than 256 classes);
- ``overlays/<id>.png``: the image with the mask colours blended in (``predict.overlay_alpha``);
- ``probabilities/<id>.npy`` (with ``predict.probabilities``): float16 ``K x H x W`` class probabilities.

``<id>`` is the image's path relative to ``predict.input`` with its suffix replaced. Each image is inferred as
evaluation infers it (:func:`rayseg.engine.inference.infer` under the ``eval`` section: whole image or sliding
windows, shorter-side resize, flip), by :class:`rayseg.models.deploy.Segmenter` (normalisation included).

One image runs in this process. A folder, or a Parquet table of images (a ``.parquet`` file or a folder of them,
columns ``id`` string and ``image`` encoded bytes, as ``rayseg label`` reads), runs as a Ray Data batch-inference
job (a table is read by Ray's read tasks, never through the driver): the sorted ids in shards of
``predict.shard_size``, an actor pool that loads the model once per actor (GPU when ``predict.gpus_per_actor``
> 0 and CUDA is there), and the driver committing one manifest per finished shard
(``_manifests/shard-XXXXX.json``: its ids and the images that could not be read). A re-run predicts exactly the
ids no manifest holds (:func:`rayseg.labeling.pipeline.plan_by_identity`), so a killed job resumes, also with
images added; a finished job starts no Ray. An unreadable image is counted, named in its manifest and skipped.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from rayseg import storage
from rayseg.config import ConfigError, EvalSection, PredictSection

MANIFEST_DIR = "_manifests"


def is_parquet_table(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and any(path.glob("*.parquet")) and not any(p.is_dir() for p in path.iterdir())


def list_input_images(location: str) -> tuple[Path, list[str]]:
    """``(root, sorted ids)``: an image file is its own folder's one id; a folder gives every image under it; a
    Parquet table its ``id`` column (only that column is read)."""
    from rayseg.data.folders import IMAGE_EXTENSIONS

    path = Path(location)
    if is_parquet_table(path):
        import pyarrow.dataset as pads

        dataset = pads.dataset(str(path), format="parquet")
        missing = [c for c in ("id", "image") if c not in dataset.schema.names]
        if missing:
            raise ConfigError(f"{path}: the Parquet table lacks column(s) {', '.join(missing)} (id string, image "
                              f"bytes)", "predict.input")
        ids = [str(i) for i in dataset.to_table(columns=["id"]).column("id").to_pylist()]
        if len(set(ids)) != len(ids) or "" in ids:
            raise ConfigError(f"{path}: ids must be unique and non-empty", "predict.input")
        return path, sorted(ids)
    if path.is_file():
        return path.parent, [path.name]
    ids = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                 if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS) and MANIFEST_DIR not in p.parts)
    if not ids:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}", "predict.input")
    return path, ids


def output_name(image_id: str, suffix: str) -> str:
    return str(Path(image_id).with_suffix(suffix).as_posix())


def mask_png(mask: np.ndarray, palette: np.ndarray) -> bytes:
    """Class indices as a palette PNG (up to 256 classes) or a 16-bit grey PNG (more)."""
    buffer = io.BytesIO()
    if int(mask.max(initial=0)) < 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="P")
        image.putpalette(palette[:256].reshape(-1).tolist())
    else:
        image = Image.fromarray(mask.astype(np.uint16), mode="I;16")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float) -> bytes:
    from rayseg.engine.previews import overlay

    buffer = io.BytesIO()
    Image.fromarray(overlay(rgb, mask, palette, alpha), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class Predictor:
    """The export of ``weights`` on ``device``: :meth:`probabilities` of one RGB image, and :meth:`write` of its
    outputs under ``output``."""

    def __init__(self, settings: PredictSection, eval_settings: EvalSection, device: str = "cpu"):
        import torch

        from rayseg.data.folders import voc_palette
        from rayseg.models.deploy import Segmenter, load_segmentation_export

        model, _ = load_segmentation_export(settings.weights)
        self.device = torch.device(device)
        self.segmenter = Segmenter(model).to(self.device).eval()
        self.settings, self.eval = settings, eval_settings
        self.palette = voc_palette(256)

    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """``K x H x W`` float32 class probabilities of a uint8 ``H x W x 3`` image."""
        import torch

        from rayseg.engine.inference import infer

        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)[None].to(self.device)
        return infer(self.segmenter, x, self.eval)[0].float().cpu().numpy()

    def write(self, image_id: str, rgb: np.ndarray) -> int:
        """Predict one image and write its outputs; returns the bytes written."""
        probs = self.probabilities(rgb)
        mask = probs.argmax(0)
        out = self.settings.output
        written = storage.write_bytes(storage.join(out, "masks", output_name(image_id, ".png")),
                                      mask_png(mask, self.palette))
        written += storage.write_bytes(storage.join(out, "overlays", output_name(image_id, ".png")),
                                       overlay_png(rgb, mask, self.palette, self.settings.overlay_alpha))
        if self.settings.probabilities:
            buffer = io.BytesIO()
            np.save(buffer, probs.astype(np.float16))
            written += storage.write_bytes(storage.join(out, "probabilities", output_name(image_id, ".npy")),
                                           buffer.getvalue())
        return written


class PredictActor:
    """Actor stage of the folder job: the model loaded once; each call reads, predicts and writes its rows."""

    def __init__(self, settings: PredictSection, eval_settings: EvalSection, root: str, use_gpu: bool,
                 num_threads: int):
        import torch

        torch.set_num_threads(num_threads)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.predictor, self.root = Predictor(settings, eval_settings, device), Path(root)

    def __call__(self, batch: dict) -> dict:
        """Rows ``id``, ``shard`` and, from a Parquet table, ``image`` (the encoded bytes; else the file is read)."""
        from rayseg.data.errors import BadSampleError
        from rayseg.data.folders import load_rgb

        status, written = [], []
        contents = batch.get("image", [None] * len(batch["id"]))
        for image_id, data in zip(batch["id"], contents):
            try:
                rgb = load_rgb(self.root / str(image_id)) if "image" not in batch else _decode(data, str(image_id))
                written.append(self.predictor.write(str(image_id), rgb))
                status.append("ok")
            except BadSampleError as exc:
                written.append(0)
                status.append(exc.reason)
        return {"id": batch["id"], "shard": batch["shard"], "status": np.asarray(status, dtype=object),
                "bytes": np.asarray(written, np.int64)}


def _decode(data, image_id: str) -> np.ndarray:
    """A table row's encoded image as uint8 ``H x W x 3``; ``BadSampleError`` naming the id otherwise."""
    from rayseg.data.errors import BadSampleError

    if data is None:
        raise BadSampleError(image_id, "no image bytes (null)")
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return np.array(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on corrupt data
        raise BadSampleError(image_id, f"cannot decode image ({type(exc).__name__})") from None


def select_parquet_rows(batch: dict, shard_starts: list[str], shard_indices: list[int], skip_ids: list[str]) -> dict:
    """CPU stage for a Parquet table: keep the rows of the shards still to do, with their shard
    (:func:`rayseg.labeling.stages.new_shard_of`)."""
    from rayseg.labeling.stages import new_shard_of

    skip = set(skip_ids)
    keep, shard = [], []
    for j, image_id in enumerate(batch["id"]):
        k = new_shard_of(str(image_id), shard_starts, shard_indices, skip)
        if k is not None:
            keep.append(j)
            shard.append(k)
    return {"id": np.asarray([str(batch["id"][j]) for j in keep], dtype=object),
            "image": np.asarray([batch["image"][j] for j in keep], dtype=object),
            "shard": np.asarray(shard, np.int64)}


def _manifests(output: str) -> list[dict]:
    folder = storage.join(output, MANIFEST_DIR)
    return [json.loads(storage.read_text(storage.join(folder, name))) for name in storage.list_dir(folder)
            if name.startswith("shard-") and name.endswith(".json")]


def _commit(output: str, index: int, ids: list[str], rows: list[dict]) -> dict:
    errors = {str(r["id"]): str(r["status"]) for r in rows if r["status"] != "ok"}
    manifest = {"shard": index, "ids": ids, "errors": errors, "bytes": int(sum(int(r["bytes"]) for r in rows))}
    storage.write_text(storage.join(output, MANIFEST_DIR, f"shard-{index:05d}.json"), json.dumps(manifest, indent=1))
    return manifest


def predict_one(settings: PredictSection, eval_settings: EvalSection) -> dict:
    """One image, in this process (no Ray)."""
    from rayseg.data.folders import load_rgb

    start = time.perf_counter()
    root, (image_id,) = list_input_images(settings.input)
    written = Predictor(settings, eval_settings).write(image_id, load_rgb(root / image_id))
    return {"images": 1, "predicted": 1, "errors": 0, "bytes": written,
            "seconds": round(time.perf_counter() - start, 3), "output": storage.absolute(settings.output)}


def predict_folder(settings: PredictSection, eval_settings: EvalSection, address: str | None = None) -> dict:
    """Every image of a folder on a Ray Data actor pool, resumable by shard manifests; returns the summary (also
    ``<output>/summary.json``)."""
    from rayseg.labeling.pipeline import plan_by_identity

    start = time.perf_counter()
    root, ids = list_input_images(settings.input)
    output = storage.absolute(settings.output)
    try:
        storage.write_text(storage.join(output, "input.txt"), str(root) + "\n")  # before Ray: an unwritable output
    except OSError as exc:
        raise ConfigError(f"cannot write {output} ({exc.strerror or exc})", "predict.output") from None
    shards, todo, removed = plan_by_identity(ids, _manifests(output), settings.shard_size)
    committed: list[dict] = []
    if todo:
        committed = _run_pool(settings, eval_settings, root, shards, todo, address)
    manifests = _manifests(output)
    errors = {i: r for m in manifests for i, r in m["errors"].items()}
    seconds = time.perf_counter() - start
    new = sum(len(m["ids"]) for m in committed)
    summary = {"images": len(ids), "new_images": new, "predicted": sum(len(m["ids"]) - len(m["errors"])
                                                                       for m in manifests),
               "errors": len(errors), "shards_done": len(committed), "shards_skipped": len(shards) - len(todo),
               "removed_images": len(removed), "seconds": round(seconds, 3),
               "images_per_s": round(new / seconds, 3) if new else 0.0, "output": output}
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=1))
    if errors:
        lines = "".join(f"{i}\t{r}\n" for i, r in sorted(errors.items()))
        storage.write_text(storage.join(output, "errors.txt"), lines)
    return summary


def _run_pool(settings: PredictSection, eval_settings: EvalSection, root: Path, shards: dict[int, list[str]],
              todo: list[int], address: str | None) -> list[dict]:
    from rayseg.engine.runner import ensure_ray

    ensure_ray(address)
    import ray

    from rayseg.labeling.pipeline import explainer_pool, parquet_lookup

    items = [{"id": i, "shard": k} for k in todo for i in shards[k]]
    if is_parquet_table(root):
        ds = ray.data.read_parquet(str(root)).select_columns(["id", "image"])
        ds = ds.map_batches(select_parquet_rows, batch_format="numpy", fn_kwargs=parquet_lookup(shards, todo))
    else:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * settings.num_actors)))
    ds = ds.map_batches(
        PredictActor, batch_size=1, batch_format="numpy", compute=explainer_pool(settings.num_actors),
        num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor,
        fn_constructor_kwargs={"settings": settings, "eval_settings": eval_settings, "root": str(root),
                               "use_gpu": settings.gpus_per_actor > 0,
                               "num_threads": max(1, math.ceil(settings.cpus_per_actor))})
    pending: dict[int, list[dict]] = defaultdict(list)
    committed: list[dict] = []
    total, begin = len(items), time.perf_counter()
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for j in range(len(batch["id"])):
            row = {c: batch[c][j] for c in batch}
            index = int(row["shard"])
            pending[index].append(row)
            if len(pending[index]) == len(shards[index]):
                committed.append(_commit(settings.output, index, shards[index], pending.pop(index)))
                done = sum(len(m["ids"]) for m in committed)
                rate = done / (time.perf_counter() - begin)
                print(f"[rayseg] shard {index} committed: {len(committed)}/{len(todo)} shards, {done}/{total} "
                      f"images, {rate:.1f} images/s", flush=True)
    if pending:
        raise RuntimeError(f"prediction ended with incomplete shards {sorted(pending)}; re-run to finish them")
    return committed


def predict(settings: PredictSection, eval_settings: EvalSection, address: str | None = None) -> dict:
    settings.check_inputs()
    if Path(settings.input).is_file() and not is_parquet_table(Path(settings.input)):
        return predict_one(settings, eval_settings)
    return predict_folder(settings, eval_settings, address)
