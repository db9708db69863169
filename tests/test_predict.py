"""`rayseg predict`: masks equal to evaluation's predictions for the same images (whole image and sliding
windows), one image in-process, a folder as a resumable Ray Data job, unreadable images counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayseg.cli import main
from rayseg.config import load_config
from rayseg.data import build_segmentation_dataset
from rayseg.engine.inference import infer
from rayseg.models import build_model
from rayseg.models.weights import export_weights
from tests.native_trees import write_voc_aug

SIZES = [(30, 44), (48, 36), (40, 40), (52, 70)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    voc = write_voc_aug(root, [0, 1, 2, 3], sizes=SIZES, stripe=6)
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", num_classes=4, output_stride=16, channels=16).eval()
    weights = export_weights(model, root / "run" / "export" / "model.pt", part="model",
                             meta={"class_names": ["bg", "a", "b", "c"]})
    return voc, model, weights


def evaluation_masks(voc: Path, model, overrides: list[str]) -> dict[str, np.ndarray]:
    """The masks evaluation predicts for the val images (its reader, its normalisation, its inference)."""
    cfg = load_config(None, ["data.kind=voc", f"data.root={voc}", "data.num_classes=4", *overrides])
    val = build_segmentation_dataset(cfg.data, train=False)
    out = {}
    for i in range(len(val)):
        item = val[i]
        out[item["id"]] = infer(model, item["image"][None], cfg.eval)[0].argmax(0).numpy()
    return out


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


@pytest.mark.parametrize("eval_overrides", [[], ["eval.mode=slide", "eval.crop=32", "eval.stride=16"]])
def test_one_image_in_process_equals_evaluation(setup, tmp_path, eval_overrides, capsys):
    voc, model, weights = setup
    expected = evaluation_masks(voc, model, eval_overrides)
    sample = sorted(expected)[-1]  # the 52 x 70 image
    image = voc / "JPEGImages" / f"{sample}.jpg"
    args = ["predict", f"predict.weights={weights}", f"predict.input={image}", f"predict.output={tmp_path}",
            "predict.probabilities=true", *eval_overrides]
    assert main(args) == 0
    mask = read_mask(tmp_path / "masks" / f"{sample}.png")
    assert mask.shape == (52, 70) and np.array_equal(mask, expected[sample])
    probs = np.load(tmp_path / "probabilities" / f"{sample}.npy")
    assert probs.dtype == np.float16 and probs.shape == (4, 52, 70)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=3e-3)
    with Image.open(tmp_path / "overlays" / f"{sample}.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (70, 52)
    assert "predicted 1 of 1 images" in capsys.readouterr().out


def test_a_folder_on_ray_resumes_and_counts_unreadable_images(ray_cluster, setup, tmp_path, monkeypatch):
    voc, model, weights = setup
    expected = evaluation_masks(voc, model, [])
    folder = tmp_path / "images"
    folder.mkdir()
    for sample in expected:
        shutil.copy(voc / "JPEGImages" / f"{sample}.jpg", folder / f"{sample}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    args = ["predict", "--address", ray_cluster, f"predict.weights={weights}", f"predict.input={folder}",
            f"predict.output={out}", "predict.shard_size=2"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["predicted"], summary["errors"], summary["shards_done"]) == (5, 4, 1, 3)
    for sample, mask in expected.items():
        assert np.array_equal(read_mask(out / "masks" / f"{sample}.png"), mask), sample
    assert (out / "errors.txt").read_text().startswith("broken.jpg\tcannot decode image")

    import rayseg.engine.runner as runner  # a finished job: no Ray; an added image: only it
    monkeypatch.setattr(runner, "ensure_ray", lambda *a, **k: pytest.fail("started Ray with nothing to do"))
    assert main(args) == 0
    monkeypatch.undo()
    shutil.copy(voc / "JPEGImages" / f"{sorted(expected)[0]}.jpg", folder / "added.jpg")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["new_images"], summary["shards_skipped"], summary["predicted"]) == (1, 3, 5)
    assert np.array_equal(read_mask(out / "masks" / "added.png"), expected[sorted(expected)[0]])


def test_a_parquet_table_of_images_on_ray(ray_cluster, setup, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    voc, model, weights = setup
    expected = evaluation_masks(voc, model, [])
    ids = sorted(expected)
    table = pa.table({"id": [f"set/{i}" for i in ids] + ["set/null"],
                      "image": [(voc / "JPEGImages" / f"{i}.jpg").read_bytes() for i in ids] + [None]})
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=2)
    out = tmp_path / "out"
    args = ["predict", "--address", ray_cluster, f"predict.weights={weights}",
            f"predict.input={tmp_path / 'images.parquet'}", f"predict.output={out}", "predict.shard_size=3"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["predicted"], summary["errors"], summary["shards_done"]) == (5, 4, 1, 2)
    for sample, mask in expected.items():
        assert np.array_equal(read_mask(out / "masks" / "set" / f"{sample}.png"), mask), sample
    assert (out / "errors.txt").read_text() == "set/null\tno image bytes (null)\n"
