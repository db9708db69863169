"""Every bad input is one ``error:`` line naming its key or file, exit code 2, before Ray starts.

Each case runs the real command line (``rayseg.cli.main``) in this process with Ray made unreachable: a case
that got as far as starting or joining a cluster fails the test instead of passing late. The table is the one
``bench/RESULTS.md`` counts.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from rayseg.cli import main
from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.models import build_classifier
from tests.native_trees import write_labels, write_voc_aug


class _Exploit:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return os.system, ("touch /tmp/rayseg-pwned",)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    write_image_folder(SyntheticClassification(num_images=6, image_size=32, classes=[0, 1]), root / "images")
    files = {"root": root, "images": root / "images"}
    torch.save(build_classifier("resnet18", 2).state_dict(), root / "r18.pt")
    torch.save(build_classifier("resnet18", 5).state_dict(), root / "r18_5.pt")
    torch.save({"state_dict": _Exploit()}, root / "exploit.pt")  # what torch.save writes for an object
    (root / "exploit.pkl").write_bytes(pickle.dumps(_Exploit()))  # a plain pickle
    torch.save({"weights": [1, 2, 3]}, root / "no_tensors.pt")
    (root / "text.pt").write_text("not weights at all\n")
    (root / "a_file").write_text("x")
    files["voc"] = write_voc_aug(root, [0, 1, 2])
    with open(files["voc"] / "ImageSets" / "Segmentation" / "train.txt", "a") as f:
        f.write("2099_000000\n")  # named by the split, no such image
    files["voc_missing"] = root / "voc_missing_split"
    write_labels(root / "labels" / "v", root / "images")
    manifest = root / "labels" / "v" / "_manifests" / "shard-00000.json"
    manifest.write_text(manifest.read_text()[:30])
    (root / "broken.yaml").write_text("train: {epochs: [1,\n")
    return files


def _label(fx, *overrides: str) -> list[str]:
    return ["label", f"label.images={fx['images']}", f"label.output={fx['root'] / 'out'}",
            f"label.members=[resnet18:{fx['root'] / 'r18.pt'}]", *overrides]


def _member(fx, arch: str, file: str) -> str:
    return f"label.members=[{arch}:{fx['root'] / file}]"


def _pretrain(fx, *overrides: str) -> list[str]:
    return ["pretrain", f"run.storage={fx['root'] / 'runs'}", "data.num_train=8", "data.image_size=32",
            "data.crop_size=32", "train.batch_size=4", *overrides]


def _voc(fx, *overrides: str) -> list[str]:
    return ["finetune", f"run.storage={fx['root'] / 'runs'}", "data.kind=voc", f"data.root={fx['voc']}",
            "data.num_classes=3", "data.crop_size=32", *overrides]


def _pssl(fx, *overrides: str) -> list[str]:
    return _pretrain(fx, "method=pssl", f"pssl.labels={fx['root'] / 'labels' / 'v'}", f"pssl.images={fx['images']}",
                     "pssl.num_classes=2", *overrides)


# (case, argv builder, the start of the one error line)
CASES = [
    # label.members: five kinds of unfit weights file, and specs
    ("member of another architecture", lambda fx: _label(fx, _member(fx, "mobilenet_v3_small", "r18.pt")),
     "error: label.members"),
    ("member with another class count", lambda fx: _label(fx, _member(fx, "resnet18", "r18_5.pt")),
     "error: label.members"),
    ("member file pickles a shell call", lambda fx: _label(fx, _member(fx, "resnet18", "exploit.pt")),
     "error: label.members: cannot read weights file {}/exploit.pt: it holds a python object (posix.system) that a "
     "safe load (weights_only=True) refuses"),
    ("member file is a plain malicious pickle", lambda fx: _label(fx, _member(fx, "resnet18", "exploit.pkl")),
     "error: label.members"),
    ("member file holds no tensors", lambda fx: _label(fx, f"label.members=[resnet18:{fx['root'] / 'no_tensors.pt'}]"),
     "error: label.members"),
    ("member file is text", lambda fx: _label(fx, f"label.members=[resnet18:{fx['root'] / 'text.pt'}]"),
     "error: label.members"),
    ("member of an unknown architecture", lambda fx: _label(fx, f"label.members=[foonet:{fx['root'] / 'r18.pt'}]"),
     "error: label.members"),
    ("member file missing", lambda fx: _label(fx, "label.members=[resnet18:/nonexistent/w.pt]"),
     "error: label.members: ensemble member resnet18: weights file not found: /nonexistent/w.pt"),
    ("member without weights", lambda fx: _label(fx, "label.members=[resnet18]"), "error: label.members[0]"),
    ("no members", lambda fx: _label(fx, "label.members=[]"), "error: label.members"),
    # label numbers
    ("label.batch_size 0", lambda fx: _label(fx, "label.batch_size=0"), "error: label.batch_size"),
    ("label.input_size 0", lambda fx: _label(fx, "label.input_size=0"), "error: label.input_size"),
    ("label.shard_size 0", lambda fx: _label(fx, "label.shard_size=0"), "error: label.shard_size"),
    ("label.explainer.samples 0", lambda fx: _label(fx, "label.explainer.samples=0"),
     "error: label.explainer.samples"),
    ("label.explainer.noise_level -1", lambda fx: _label(fx, "label.explainer.noise_level=-1"),
     "error: label.explainer.noise_level"),
    ("label.explainer.method unknown", lambda fx: _label(fx, "label.explainer.method=lime"),
     "error: label.explainer.method"),
    ("label.num_actors -1", lambda fx: _label(fx, "label.num_actors=-1"), "error: label.num_actors"),
    ("label.cpus_per_actor 0", lambda fx: _label(fx, "label.cpus_per_actor=0"), "error: label.cpus_per_actor"),
    ("label.gpus_per_actor -1", lambda fx: _label(fx, "label.gpus_per_actor=-1"), "error: label.gpus_per_actor"),
    ("label.geometry unknown", lambda fx: _label(fx, "label.geometry=stretch"), "error: label.geometry"),
    ("label.num_classes below the class folders", lambda fx: _label(fx, "label.num_classes=1"),
     "error: label.num_classes"),
    ("label.batch_size not a number", lambda fx: _label(fx, "label.batch_size=eight"), "error: label.batch_size"),
    # label inputs and outputs
    ("label.images missing", lambda fx: _label(fx, "label.images=/nonexistent"), "error: label.images"),
    ("label.images is a file", lambda fx: _label(fx, f"label.images={fx['root'] / 'a_file'}"),
     "error: label.images"),
    ("label.images_parquet missing",
     lambda fx: _label(fx, "label.images=", "label.images_parquet=/nonexistent.parquet"),
     "error: label.images_parquet"),
    ("label.images and images_parquet both", lambda fx: _label(fx, f"label.images_parquet={fx['root'] / 'a_file'}"),
     "error: label.images, label.images_parquet"),
    ("label.output under a file", lambda fx: _label(fx, f"label.output={fx['root'] / 'a_file' / 'out'}"),
     "error: label.output"),
    ("label.output with a credential", lambda fx: _label(fx, "label.output=s3://AKIAXXXX:topsecret@bucket/labels"),
     "error: label.output"),
    ("unknown label key", lambda fx: _label(fx, "label.shards=4"), "error: unknown key 'label.shards'"),
    # training numbers
    ("optim.lr nan", lambda fx: _pretrain(fx, "optim.lr=nan"), "error: optim.lr"),
    ("optim.lr inf", lambda fx: _pretrain(fx, "optim.lr=inf"), "error: optim.lr"),
    ("optim.lr 0", lambda fx: _pretrain(fx, "optim.lr=0"), "error: optim.lr"),
    ("optim.weight_decay -1", lambda fx: _pretrain(fx, "optim.weight_decay=-1"), "error: optim.weight_decay"),
    ("optim.name unknown", lambda fx: _pretrain(fx, "optim.name=adam"), "error: optim.name"),
    ("train.cpus_per_worker 0", lambda fx: _pretrain(fx, "train.cpus_per_worker=0"), "error: train.cpus_per_worker"),
    ("train.num_workers -1", lambda fx: _pretrain(fx, "train.num_workers=-1"), "error: train.num_workers"),
    ("train.batch_size 0", lambda fx: _pretrain(fx, "train.batch_size=0"), "error: train.batch_size"),
    ("train.epochs 0", lambda fx: _pretrain(fx, "train.epochs=0"), "error: train.epochs"),
    ("train.amp not a boolean", lambda fx: _pretrain(fx, "train.amp=maybe"), "error: train.amp"),
    ("data.crop_size 0", lambda fx: _pretrain(fx, "data.crop_size=0"), "error: data.crop_size"),
    ("model.backbone unknown", lambda fx: _pretrain(fx, "model.backbone=resnet7"), "error: model.backbone"),
    ("method unknown", lambda fx: _pretrain(fx, "method=simclr"), "error: method"),
    ("mdp.top_k above the other prototypes", lambda fx: _pretrain(fx, "method=mdp", "mdp.top_k=500"),
     "error: mdp.top_k"),
    ("training images fewer than a batch", lambda fx: _pretrain(fx, "train.batch_size=16"),
     "error: train.batch_size: 16 per worker x 1 worker(s) = 16 images per step, but the training set has 8"),
    ("run.storage under a file", lambda fx: _pretrain(fx, f"run.storage={fx['root'] / 'a_file' / 'runs'}"),
     "error: run.storage"),
    ("model.init_weights missing", lambda fx: _pretrain(fx, "model.init_weights=/nonexistent.pt"),
     "error: model.init_weights"),
    ("model.init_weights unfit", lambda fx: _pretrain(fx, f"model.init_weights={fx['root'] / 'text.pt'}"),
     "error: model.init_weights"),
    ("--config missing", lambda fx: ["pretrain", "--config", "/nonexistent.yaml"],
     "error: config file not found: /nonexistent.yaml"),
    ("--config not YAML", lambda fx: ["pretrain", "--config", str(fx["root"] / "broken.yaml")], "error: "),
    # datasets on disk
    ("VOC split names a missing image", lambda fx: _voc(fx), "error: "),
    ("data.root missing", lambda fx: _voc(fx, "data.root=/nonexistent/VOC2012"), "error: data.root"),
    ("pssl.labels missing", lambda fx: _pssl(fx, "pssl.labels=/nonexistent"), "error: pssl.labels"),
    ("pssl.labels with a corrupt manifest", lambda fx: _pssl(fx), "error: pssl.labels"),
]


@pytest.fixture
def no_ray(monkeypatch):
    import rayseg.engine.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("reached Ray: this bad input was not caught before Ray starts")

    monkeypatch.setattr(runner, "ensure_ray", refuse)


@pytest.mark.parametrize("argv, expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(fx, no_ray, capsys, argv, expected):
    code = main(argv(fx))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith(expected.format(fx["root"])), err[0]
    assert not Path("/tmp/rayseg-pwned").exists()
