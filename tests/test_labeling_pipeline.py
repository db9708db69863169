"""PSSL labelling on a real local Ray cluster: shards, corrupt files, resume, weights validation, label_version."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rayseg.commands.label import label_images
from rayseg.config import ConfigError, ExplainerSection, LabelSection, load_config
from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.labeling import pipeline as pipeline_mod
from rayseg.labeling import shards
from rayseg.labeling.members import Member, check_members, label_version, load_members
from rayseg.models import build_classifier
from rayseg.models.weights import WeightsError

ARCHS = ("resnet18", "mobilenet_v3_small")
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 synthetic 32x32 images in 3 classes, and two member weight files (random state dicts)."""
    root = tmp_path_factory.mktemp("pssl")
    write_image_folder(SyntheticClassification(num_images=24, image_size=32, classes=[0, 1, 2]), root / "images")
    weights = []
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(100 + i)
        path = root / f"{arch}.pt"
        state = build_classifier(arch, NUM_CLASSES).state_dict()
        torch.save({"state_dict": state} if i else state, path)  # both accepted forms
        weights.append(str(path))
    return root, weights


def make_job(root: Path, weights: list[str], output: Path, images: Path | None = None, **kw) -> LabelSection:
    """The label section of a tiny job: both members, 4 SmoothGrad samples, 32 px, shards of 8."""
    return LabelSection(images=str(images or root / "images"), output=str(output),
                        members=[f"{a}:{w}" for a, w in zip(ARCHS, weights)], num_classes=NUM_CLASSES,
                        explainer=ExplainerSection(samples=4), input_size=32, shard_size=8, batch_size=8, **kw)


def all_ids(images: Path) -> set[str]:
    return {p.relative_to(images).as_posix() for p in images.rglob("*.png")}


@pytest.fixture(scope="module")
def labelled(ray_cluster, tiny):
    root, weights = tiny
    job = make_job(root, weights, root / "labels", true_masks=str(root / "images_masks"))
    summary = label_images(job)
    return job, summary


# ------------------------------------------------------------------------------------------ Ray pipeline


def test_end_to_end_three_committed_shards(labelled, tiny):
    root, _ = tiny
    job, summary = labelled
    version_dir = Path(summary["version_dir"])
    assert version_dir.parent == root / "labels" and version_dir.name == summary["label_version"]
    manifests = shards.committed_shards(version_dir)
    assert [m["shard"] for m in manifests] == [0, 1, 2]
    assert all(m["rows"] == 8 and m["errors"] == 0 and m["errors_file"] is None for m in manifests)
    table = shards.read_labels(version_dir)
    ids = table.column("id").to_pylist()
    assert len(ids) == 24 and set(ids) == all_ids(root / "images")
    assert sorted(sum((m["ids"] for m in manifests), [])) == sorted(ids)
    assert set(table.column("label_version").to_pylist()) == {summary["label_version"]}
    classes = sorted(p.name for p in (root / "images").iterdir())
    for row in table.to_pylist():
        assert row["class_index"] == classes.index(row["id"].split("/")[0])
        d = shards.decode_deciles(row["deciles_png"])
        assert d.shape == (32, 32) and d.dtype == np.uint8 and d.max() <= 9
        assert (row["height"], row["width"]) == (32, 32)
        assert d.max() == 9 and len(np.unique(d)) >= 5  # a ranking, not a constant map
        assert row["content_hash"] == hashlib.sha256((root / "images" / row["id"]).read_bytes()).hexdigest()
    assert summary["new_images"] == summary["labelled"] == summary["total_rows"] == 24
    assert summary["errors"] == 0 and summary["shards_done"] == 3 and summary["shards_skipped"] == 0
    assert summary["output_bytes"] > 0 and summary["images_per_s"] > 0
    # the time by stage: every stage was timed, the first output came within the pipeline's time, and the
    # actors explained during part of it
    stages = summary["stages"]
    assert set(stages) == {"plan_s", "ray_start_s", "first_output_s", "actors_ready_s", "explain_s", "pipeline_s"}
    assert 0 < stages["first_output_s"] <= stages["pipeline_s"] <= summary["seconds"]
    assert 0 < stages["actors_ready_s"] < stages["first_output_s"] and 0 < summary["explainer_busy"] <= 1
    # IoU of the top-decile masks with the true masks: a number in [0, 1] per member and for the ensemble
    assert summary["iou_images"] == 24
    assert 0.0 <= summary["iou_ensemble"] <= 1.0
    assert set(summary["iou_members"]) == {"resnet18#0", "mobilenet_v3_small#1"}
    assert all(0.0 <= v <= 1.0 for v in summary["iou_members"].values())
    assert (version_dir / "summary.json").is_file()


def test_a_labelling_run_leaves_a_preview_grid_in_tensorboard(labelled):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, summary = labelled
    version_dir = Path(summary["version_dir"])
    with Image.open(version_dir / "preview.png") as grid:
        size = grid.size
    acc = EventAccumulator(str(version_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("labels/grid")
    assert (event.step, (event.width, event.height)) == (24, size) and size[1] > 8 * 200  # 8 rows of ~240 px


def test_rerun_of_finished_job_does_no_ray_work(labelled, tiny, monkeypatch):
    root, _ = tiny
    job, first = labelled

    def boom(*args, **kwargs):
        raise AssertionError("the pipeline must not run for a finished job")

    import rayseg.engine.runner

    monkeypatch.setattr(pipeline_mod, "_run_pipeline", boom)
    monkeypatch.setattr(rayseg.engine.runner, "ensure_ray", boom)  # not even a cluster is joined
    summary = label_images(job)
    assert summary["new_images"] == 0 and summary["shards_skipped"] == 3 and summary["shards_done"] == 0
    assert summary["total_rows"] == 24 and summary["label_version"] == first["label_version"]
    assert summary["iou_ensemble"] == pytest.approx(first["iou_ensemble"])


def test_resume_redoes_only_the_uncommitted_shard(labelled, tiny, tmp_path):
    root, weights = tiny
    _, first = labelled
    out = tmp_path / "labels"
    shutil.copytree(root / "labels", out)
    version_dir = out / first["label_version"]
    # A crash before the commit of shard 1: no manifest, no parquet, and a stale temp file.
    shards.manifest_path(version_dir, 1).unlink()
    (version_dir / "shard-00001.parquet").unlink()
    (version_dir / "shard-00001.parquet.tmp").write_bytes(b"half written")
    before = pq.read_table(version_dir / "shard-00000.parquet")

    summary = label_images(make_job(root, weights, out))
    assert summary["new_images"] == 8 and summary["shards_done"] == 1 and summary["shards_skipped"] == 2
    assert not list(version_dir.glob("*.tmp"))
    ids = shards.read_labels(version_dir).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 24 and set(ids) == all_ids(root / "images")
    assert pq.read_table(version_dir / "shard-00000.parquet").equals(before)  # committed shards untouched


def test_resume_by_identity_after_another_shard_size_and_changed_images(labelled, tiny, tmp_path):
    """Killed after its first shard, then re-run with shards of 5 on a folder that lost a labelled image and gained
    3: exactly the ids no shard holds are labelled, once each, and the removed one is reported."""
    root, weights = tiny
    _, first = labelled
    out = tmp_path / "labels"
    shutil.copytree(root / "labels", out)
    version_dir = out / first["label_version"]
    for i in (1, 2):  # never committed
        shards.manifest_path(version_dir, i).unlink()
        (version_dir / f"shard-{i:05d}.parquet").unlink()
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    removed = sorted(all_ids(images))[0]  # in committed shard 0
    (images / removed).unlink()
    donor = sorted(all_ids(images))[-1]
    added = [f"{Path(donor).parent}/zz-added-{k}.png" for k in range(3)]
    for rel in added:
        shutil.copy(images / donor, images / rel)

    summary = label_images(dataclasses.replace(make_job(root, weights, out, images=images), shard_size=5))
    assert summary["removed_images"] == 1
    assert summary["new_images"] == 24 - 8 + 3 and summary["shards_done"] == 4 and summary["shards_skipped"] == 1
    ids = shards.read_labels(version_dir).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 24 + 3  # nothing twice; the removed image keeps its label
    assert set(ids) == all_ids(images) | {removed} and set(added) <= set(ids)
    again = label_images(dataclasses.replace(make_job(root, weights, out, images=images), shard_size=3))
    assert again["new_images"] == 0 and again["shards_done"] == 0


def test_corrupt_files_become_error_rows(ray_cluster, tiny, tmp_path):
    root, weights = tiny
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    files = sorted(images.rglob("*.png"))
    truncated, not_image = files[3], files[17]
    truncated.write_bytes(truncated.read_bytes()[:60])
    not_image.write_text("this is not a PNG\n")

    summary = label_images(make_job(root, weights, tmp_path / "labels", images=images))
    version_dir = Path(summary["version_dir"])
    assert summary["labelled"] == 22 and summary["errors"] == 2 and summary["new_images"] == 24
    assert summary["total_errors"] == 2
    errors = shards.read_errors(version_dir).to_pylist()
    bad = {truncated.relative_to(images).as_posix(), not_image.relative_to(images).as_posix()}
    assert {e["id"] for e in errors} == bad
    for e in errors:
        assert e["id"] in e["reason"] and "cannot decode image" in e["reason"]
        assert e["label_version"] == summary["label_version"]
    labels = shards.read_labels(version_dir).column("id").to_pylist()
    assert len(labels) == 22 and not (set(labels) & bad)
    manifests = shards.committed_shards(version_dir)
    assert sum(m["errors"] for m in manifests) == 2 and len(manifests) == 3


# ------------------------------------------------------------------------------------------ no Ray


def test_missing_weights_fail_on_the_driver_before_ray_work(tiny, tmp_path, monkeypatch):
    root, weights = tiny
    missing = str(tmp_path / "nope.pt")
    job = make_job(root, [weights[0], missing], tmp_path / "labels")
    monkeypatch.setattr(pipeline_mod, "_run_pipeline", lambda *a, **k: pytest.fail("Ray work started"))
    with pytest.raises(ConfigError, match=r"^label.members: ensemble member mobilenet_v3_small: weights file not "
                                          r"found: .*nope\.pt$"):
        label_images(job)
    assert not (tmp_path / "labels").exists()


def test_planning_reads_each_member_file_once(tiny, tmp_path, monkeypatch):
    """The driver checks and hashes each member from one read of its bytes (no second load to validate)."""
    from rayseg import storage

    root, weights = tiny
    reads: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda location: reads.append(str(location)) or real(location))
    loads: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(type(f).__name__) or real_load(f, *a, **k))
    plan = pipeline_mod.plan_labeling(make_job(root, weights, tmp_path / "labels"))
    assert sorted(r for r in reads if r.endswith(".pt")) == sorted(weights)
    assert loads == ["BytesIO", "BytesIO"]  # parsed from the bytes already read, never from the file again
    assert [m.sha256 for m in plan.members] == [hashlib.sha256(Path(w).read_bytes()).hexdigest() for w in weights]


def test_unfit_or_unsafe_member_files_fail_on_the_driver_with_one_line(tiny, tmp_path):
    """Wrong architecture, wrong class count, a pickle with code, a non-tensor file, an unknown architecture:
    each is one ConfigError line naming the file before any Ray work."""
    root, weights = tiny
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Path("/etc/passwd")}, evil)
    notes = tmp_path / "notes.pt"
    torch.save({"lr": 0.1}, notes)
    for members, message in [
        ([f"resnet18:{weights[1]}"], r"mobilenet_v3_small\.pt: weights do not fit resnet18 with 3 classes"),
        ([f"resnet18:{weights[0]}"], r"resnet18\.pt: weights do not fit resnet18 with 5 classes.*fc\.weight"),
        ([f"resnet18:{evil}"], r"evil\.pt: it holds a python object .* that a safe load"),
        ([f"resnet18:{notes}"], r"notes\.pt: not a state dict"),
        ([f"resnet_9000:{weights[0]}"], r"ensemble member resnet_9000: unknown classifier"),
    ]:
        job = make_job(root, weights, tmp_path / "labels")
        job.members, job.num_classes = members, 5 if "5 classes" in message else NUM_CLASSES
        with pytest.raises(ConfigError, match=message) as info:
            pipeline_mod.plan_labeling(job)
        assert str(info.value).startswith("label.members: ") and "\n" not in str(info.value)


def test_check_then_load_members_weights_random_and_wrong_keys(tiny, tmp_path):
    _, weights = tiny
    members = check_members(list(zip(ARCHS, weights)), NUM_CLASSES)
    assert [m.sha256 for m in members] == [hashlib.sha256(Path(w).read_bytes()).hexdigest() for w in weights]
    a, b = load_members(members, NUM_CLASSES)
    assert not a.training and not b.training
    torch.testing.assert_close(a.state_dict()["fc.weight"], torch.load(weights[0], weights_only=True)["fc.weight"])
    (random_member,) = check_members([("resnet18", "")], NUM_CLASSES)
    assert random_member == Member("resnet18", "", "random")
    with pytest.warns(UserWarning, match="random weights"):
        r1 = load_members([random_member], NUM_CLASSES)[0]
    with pytest.warns(UserWarning):
        r2 = load_members([random_member], NUM_CLASSES)[0]
    torch.testing.assert_close(r1.state_dict()["fc.weight"], r2.state_dict()["fc.weight"])  # seeded by index
    with pytest.raises(WeightsError, match=r"mobilenet_v3_small\.pt.*do not fit resnet18"):
        check_members([("resnet18", weights[1])], NUM_CLASSES)
    with pytest.raises(WeightsError, match=r"resnet18\.pt.*do not fit resnet18 with 5 classes"):
        check_members([("resnet18", weights[0])], 5)


def test_label_version_changes_with_samples_and_weights(tiny, tmp_path):
    _, weights = tiny
    members = check_members(list(zip(ARCHS, weights)), NUM_CLASSES)
    cfg = ExplainerSection(samples=4)
    v = label_version(members, cfg, 32, NUM_CLASSES)
    assert len(v) == 12 and set(v) <= set("0123456789abcdef")
    assert label_version(check_members(list(zip(ARCHS, weights)), NUM_CLASSES), ExplainerSection(samples=4), 32,
                         NUM_CLASSES) == v  # the same bytes and settings: the same version
    assert label_version(members, dataclasses.replace(cfg, samples=5), 32, NUM_CLASSES) != v
    # how the same maps are computed is not part of the version: another chunk size or compilation re-labels nothing
    assert label_version(members, dataclasses.replace(cfg, batch_cap=7, fixed_chunks=True, compile=True), 32,
                         NUM_CLASSES) == v
    assert label_version(members, cfg, 64, NUM_CLASSES) != v
    assert label_version(members, cfg, 32, NUM_CLASSES + 1) != v
    changed = tmp_path / "changed.pt"
    state = torch.load(weights[1], weights_only=True)
    state["state_dict"]["classifier.3.bias"] += 1
    torch.save(state, changed)
    (other,) = check_members([(ARCHS[1], str(changed))], NUM_CLASSES)
    assert label_version([members[0], other], cfg, 32, NUM_CLASSES) != v
    assert label_version([members[0], Member(ARCHS[1])], cfg, 32, NUM_CLASSES) != v  # "random"


def test_stages_without_ray_decode_errors_and_iou_numbers(tiny, tmp_path):
    root, _ = tiny
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    shutil.copy(next((root / "images").rglob("*.png")), images / "a" / "good.png")
    (images / "a" / "bad.png").write_bytes(b"not an image")
    batch = {"id": np.array(["a/good.png", "a/bad.png", "a/gone.png"], object), "shard": np.zeros(3, np.int64),
             "class_index": np.zeros(3, np.int64)}
    out = pipeline_mod.decode_and_resize(batch, str(images), 16, "square")
    assert out["image"].shape == (3, 3, 16, 16) and out["image"].dtype == np.uint8  # the actor normalises
    assert out["status"][0] == "ok" and out["status"][1].startswith("a/bad.png: cannot decode image")
    assert out["status"][2].startswith("a/gone.png: cannot read file")
    assert out["image"][0].max() > 0 and not out["image"][1:].any()  # bad rows stay zeros

    # IoU: true mask = left half of an 8x8 image; deciles 9 on the left 4x4 quarter (IoU 0.5 after nearest
    # resize of the 4x4 map to 8x8), member 0 top = whole left half (IoU 1), member 1 top = right half (IoU 0).
    masks = tmp_path / "masks"
    (masks / "a").mkdir(parents=True)
    true = np.zeros((8, 8), np.uint8)
    true[:, :4] = 255
    Image.fromarray(true).save(masks / "a" / "good.png")
    dec = np.zeros((2, 4, 4), np.uint8)
    dec[0, :2, :2] = 9
    top = np.zeros((2, 2, 4, 4), np.uint8)
    top[0, 0, :, :2] = 1
    top[0, 1, :, 2:] = 1
    enc = pipeline_mod.encode_and_score({"id": np.array(["a/good.png", "a/bad.png"], object),
                                         "status": np.array(["ok", "a/bad.png: cannot decode"], object),
                                         "deciles": dec, "member_top": top}, str(masks), "square")
    np.testing.assert_allclose(enc["iou"][0], [0.5, 1.0, 0.0])
    assert np.isnan(enc["iou"][1]).all() and enc["deciles_png"][1] == b""
    np.testing.assert_array_equal(shards.decode_deciles(enc["deciles_png"][0]), dec[0])
    assert "deciles" not in enc and "member_top" not in enc


# ------------------------------------------------------------------------------------------ Parquet input


def write_image_table(images: Path, path: Path, count: int = 16, corrupt: bool = True) -> list[str]:
    """A Parquet table (id, image bytes, label) of the first ``count`` images of ``images``, with ids unlike the
    file paths, plus one corrupt entry. Returns the ids (sorted)."""
    classes = sorted(p.name for p in images.iterdir())
    files = sorted(images.rglob("*.png"))[:count]
    ids = [f"img-{i:03d}" for i in range(len(files))]
    data = [f.read_bytes() for f in files]
    labels = [classes.index(f.parent.name) for f in files]
    if corrupt:
        ids.append("img-corrupt")
        data.append(b"\x89PNG\r\n\x1a\n not really")
        labels.append(0)
    order = list(reversed(range(len(ids))))  # table order is not id order
    table = pa.table({"id": [ids[i] for i in order], "image": pa.array([data[i] for i in order], pa.binary()),
                      "label": pa.array([labels[i] for i in order], pa.int64())})
    pq.write_table(table, path, row_group_size=5)
    return sorted(ids)


def test_parquet_input_labels_rows_errors_and_resumes(ray_cluster, tiny, tmp_path):
    root, weights = tiny
    table_path = tmp_path / "images.parquet"
    ids = write_image_table(root / "images", table_path)
    job = make_job(root, weights, tmp_path / "labels", images_parquet=str(table_path))
    job.images = ""
    summary = label_images(job)
    version_dir = Path(summary["version_dir"])
    assert summary["images"] == 17 and summary["labelled"] == 16 and summary["errors"] == 1
    assert summary["shards"] == 3 and "iou_ensemble" not in summary  # no true masks: no IoU
    assert summary["images_parquet"] == str(table_path.resolve()) and summary["images_root"] == ""
    labels = shards.read_labels(version_dir)
    assert sorted(labels.column("id").to_pylist()) == [i for i in ids if i != "img-corrupt"]
    source = pq.read_table(table_path).to_pylist()
    by_id = {r["id"]: r for r in source}
    for row in labels.to_pylist():
        assert row["content_hash"] == hashlib.sha256(by_id[row["id"]]["image"]).hexdigest()
        assert row["class_index"] == by_id[row["id"]]["label"]
        d = shards.decode_deciles(row["deciles_png"])
        assert d.shape == (32, 32) and d.max() == 9
    (error,) = shards.read_errors(version_dir).to_pylist()
    assert error["id"] == "img-corrupt" and "cannot decode image" in error["reason"]
    manifests = shards.committed_shards(version_dir)
    assert [m["ids"] for m in manifests] == [ids[0:8], ids[8:16], ids[16:]]

    # resume: shard 1 lost before its commit -> only its 8 rows are decoded and labelled again
    shards.manifest_path(version_dir, 1).unlink()
    (version_dir / "shard-00001.parquet").unlink()
    again = label_images(job)
    assert again["new_images"] == 8 and again["shards_done"] == 1 and again["shards_skipped"] == 2
    ids_after = shards.read_labels(version_dir).column("id").to_pylist()
    assert len(ids_after) == len(set(ids_after)) == 16


def test_decode_parquet_rows_shard_lookup_drops_committed_and_reports_bad_bytes(tiny):
    root, _ = tiny
    good = next((root / "images").rglob("*.png")).read_bytes()
    batch = {"id": np.array(["b", "a", "d", "c", "e"], object),
             "image": np.array([good, good, None, b"junk", good], object), "label": np.array([1, 0, 2, 1, 0])}
    # plan: [a, b] [c, d] [e]; shard 0 already committed
    out = pipeline_mod.decode_parquet_rows(batch, ["c", "e"], [1, 2], [], 16, "square")
    assert list(out["id"]) == ["d", "c", "e"] and list(out["shard"]) == [1, 1, 2]
    assert list(out["class_index"]) == [2, 1, 0] and out["image"].shape == (3, 3, 16, 16)
    assert out["status"][0] == "d: no image bytes (null)" and out["content_hash"][0] == ""
    assert out["status"][1].startswith("c: cannot decode image")
    assert out["content_hash"][1] == hashlib.sha256(b"junk").hexdigest()
    assert out["status"][2] == "ok" and out["content_hash"][2] == hashlib.sha256(good).hexdigest()
    empty = pipeline_mod.decode_parquet_rows(batch, [], [], [], 16, "square")
    assert len(empty["id"]) == 0 and empty["image"].shape == (0, 3, 16, 16)
    # resumed with other shards: committed "d" sorts inside the new shard 4 [c, e] and is skipped by name
    out = pipeline_mod.decode_parquet_rows(batch, ["c"], [4], ["d"], 16, "square")
    assert list(out["id"]) == ["c", "e"] and list(out["shard"]) == [4, 4]


def test_plan_by_identity_never_plans_an_id_twice_or_leaves_one_out():
    committed = [{"shard": 0, "ids": ["a", "b", "c"]}, {"shard": 2, "ids": ["g", "h", "i"]}]  # shard 1 not committed
    listed = ["a", "b", "c", "d", "e", "f", "g", "h", "j", "k"]  # i removed, j and k added
    planned, todo, removed = pipeline_mod.plan_by_identity(listed, committed, shard_size=2)
    assert todo == [3, 4, 5] and removed == ["i"]
    assert [planned[i] for i in todo] == [["d", "e"], ["f", "j"], ["k"]]
    new = [i for k in todo for i in planned[k]]
    assert sorted(new + ["a", "b", "c", "g", "h"]) == sorted(listed) and len(set(new)) == len(new)
    assert pipeline_mod.plan_by_identity(listed, committed + [{"shard": 3, "ids": new}], 2)[1] == []


def test_list_parquet_images_and_config_checks(tiny, tmp_path):
    root, weights = tiny
    path = tmp_path / "t.parquet"
    ids = write_image_table(root / "images", path, count=4, corrupt=False)
    listed, class_of = pipeline_mod.list_parquet_images(path)
    assert listed == ids and set(class_of) == set(ids)
    pq.write_table(pa.table({"id": ["x", "x"], "image": [b"", b""], "label": [0, 1]}), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="unique"):
        pipeline_mod.list_parquet_images(tmp_path / "dup.parquet")
    pq.write_table(pa.table({"id": [1], "image": [b""], "label": [0]}), tmp_path / "intid.parquet")
    with pytest.raises(ValueError, match="id must be a string"):
        pipeline_mod.list_parquet_images(tmp_path / "intid.parquet")
    pq.write_table(pa.table({"id": ["x"], "bytes": [b""]}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="lacks column.*image, label"):
        pipeline_mod.list_parquet_images(tmp_path / "cols.parquet")

    members = "label.members=[resnet18]"  # random weights: any class count fits
    random = "label.allow_random_weights=true"
    cfg = load_config(None, [f"label.images_parquet={path}", members, random,
                             f"label.output={tmp_path / 'labels'}"])
    plan = pipeline_mod.plan_labeling(cfg.label)
    assert plan.ids == ids and plan.num_classes == max(class_of.values()) + 1 and plan.todo == [0]
    for overrides, message in [
        ([members, random], "label.images, label.images_parquet: give exactly one"),
        ([f"label.images={root / 'images'}", f"label.images_parquet={path}", members, random], "give exactly one"),
        ([f"label.images_parquet={tmp_path / 'nope.parquet'}", members, random], "label.images_parquet: not found"),
        ([f"label.images_parquet={tmp_path / 'dup.parquet'}", members, random], "label.images_parquet: .*unique"),
        ([f"label.images_parquet={path}", "label.members=[]"], "label.members: at least one ensemble member"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            pipeline_mod.plan_labeling(load_config(None, overrides).label)
        assert "\n" not in str(info.value)


def test_actors_that_leave_no_cpu_for_decoding_are_refused():
    from rayseg.labeling.pipeline import check_cpu_budget

    label = LabelSection(num_actors=1, cpus_per_actor=2.0)
    with pytest.raises(ConfigError, match="leaves none of this cluster's 2 CPUs for decoding; use at most 1"):
        check_cpu_budget(label, 1, 2.0)
    check_cpu_budget(label, 1, 3.0)  # one CPU left for the CPU stages: fine
    light = LabelSection(cpus_per_actor=1.5, cpus_per_task=0.5)
    check_cpu_budget(light, 1, 2.0)  # half a CPU for the light stages, the rest (2 threads) for the explainer
    with pytest.raises(ConfigError, match=r"^label.cpus_per_actor: .*use at most 1.5 CPUs .*label.cpus_per_task, "
                                          r"now 0.5"):
        check_cpu_budget(LabelSection(cpus_per_actor=2.0, cpus_per_task=0.5), 1, 2.0)


def test_num_actors_zero_fills_the_cluster():
    from rayseg.labeling.pipeline import actors_for_cluster

    label = LabelSection(num_actors=0, cpus_per_actor=1.0, cpus_per_task=0.5)
    assert actors_for_cluster(label, {"CPU": 16.0}) == 15       # one core per actor, half a core left
    assert actors_for_cluster(label, {"CPU": 2.0}) == 1
    gpu = LabelSection(num_actors=0, gpus_per_actor=0.5, cpus_per_actor=2.0, cpus_per_task=0.5)
    assert actors_for_cluster(gpu, {"CPU": 64.0, "GPU": 4.0}) == 8   # two actors per GPU
    assert actors_for_cluster(gpu, {"CPU": 9.0, "GPU": 4.0}) == 4    # CPUs bind first
    three = dataclasses.replace(label, num_actors=3)
    assert actors_for_cluster(three, {"CPU": 4.0}) == 3  # kept
    with pytest.raises(ConfigError, match="leaves none of this cluster's 2 CPUs for decoding"):  # and checked
        actors_for_cluster(three, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"label.num_actors: 0 .* holds no explainer actor"):
        actors_for_cluster(gpu, {"CPU": 64.0})


class _WhichThread:
    """A class UDF that tells whether Ray Data called it on its actor's main thread."""

    def __call__(self, batch: dict) -> dict:
        import threading

        batch["main_thread"] = np.full(len(batch["id"]), threading.current_thread() is threading.main_thread())
        return batch


def test_explainer_pool_calls_the_udf_on_the_actors_main_thread(ray_cluster):
    import ray

    from rayseg.labeling.pipeline import explainer_pool

    ds = ray.data.range(16).map_batches(_WhichThread, batch_size=4, compute=explainer_pool(1), num_cpus=1)
    assert {bool(r["main_thread"]) for r in ds.take_all()} == {True}
    # Ray Data's default strategy would call it on a helper thread (the reason for explainer_pool)
    default = ray.data.range(4).map_batches(_WhichThread, batch_size=4, compute=ray.data.ActorPoolStrategy(size=1),
                                            num_cpus=1)
    assert {bool(r["main_thread"]) for r in default.take_all()} == {False}
