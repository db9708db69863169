"""Weight files: export/import round trips, torchvision checkpoints, class-count changes, clear errors."""

import pytest
import torch
import torchvision

from rayseg.models import WeightsError, build_model, export_weights, load_weights, read_weights

class Custom:
    """A python object that torch.load(weights_only=True) refuses."""


ARCH = dict(backbone="resnet18", head="fcn", output_stride=32, channels=16)


def model(num_classes=21, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(**{**ARCH, **overrides}, num_classes=num_classes)


def prefixed(module, prefix):
    return {k: v.clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def assert_equal_tensors(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_round_trip_gives_identical_outputs(tmp_path):
    source = model(seed=0).eval()
    path = export_weights(source, tmp_path / "out" / "model.pt", meta={"classes": ["bg", "cat"], "method": "mdp"})
    assert path == tmp_path / "out" / "model.pt"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "rayseg-weights-v1" and raw["part"] == "model"
    assert raw["arch"] == source.arch and raw["meta"] == {"classes": ["bg", "cat"], "method": "mdp"}
    assert raw["state_dict"].keys() == source.state_dict().keys()

    target = model(seed=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(target(x), source(x))
        report = load_weights(target, path)
        assert torch.equal(target(x), source(x))
    assert report.loaded == len(source.state_dict())
    assert (report.dropped, report.missing, report.notices) == ([], [], [])
    assert report.source == "rayseg model" and report.meta["method"] == "mdp"
    assert report.summary() == f"loaded {report.loaded} tensors from {path} (rayseg model)"


def test_backbone_round_trip_leaves_decoder_untouched(tmp_path):
    source = model(seed=0)
    path = export_weights(source, tmp_path / "backbone.pt", part="backbone")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["part"] == "backbone" and all(k.startswith("backbone.") for k in raw["state_dict"])

    target = model(seed=1)
    decoder_before, classifier_before = prefixed(target, "decoder."), prefixed(target, "classifier.")
    report = load_weights(target, path)
    assert_equal_tensors(prefixed(target, "backbone."), prefixed(source, "backbone."))
    assert_equal_tensors(prefixed(target, "decoder."), decoder_before)
    assert_equal_tensors(prefixed(target, "classifier."), classifier_before)
    assert report.loaded == len(prefixed(source, "backbone.")) == 120  # resnet18's 122 minus fc.weight, fc.bias
    assert report.missing == list(decoder_before) + list(classifier_before)
    assert report.summary() == (
        f"loaded 120 tensors from {path} (rayseg backbone); decoder, classifier left as initialised"
    )
    # the output stride changes dilations, not parameters: the file loads into a stride-16 model too
    assert load_weights(model(output_stride=16, head="deeplabv3"), path).loaded == 120


def test_torchvision_classifier_loads_into_backbone(tmp_path):
    torch.manual_seed(3)
    classifier = torchvision.models.resnet18(weights=None, num_classes=7)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    target = model()
    report = load_weights(target, tmp_path / "resnet18.pth")

    expected = {f"backbone.{k}": v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    assert_equal_tensors(prefixed(target, "backbone."), expected)
    assert report.source == "torchvision classifier" and report.loaded == 120
    assert report.dropped == ["fc.weight: torchvision classification head", "fc.bias: torchvision classification head"]
    assert report.notices == ["dropped fc.weight, fc.bias (torchvision classification head)"]
    assert {k.split(".")[0] for k in report.missing} == {"decoder", "classifier"}


def test_torchvision_mobilenet_and_wrapped_state_dicts(tmp_path):
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None, num_classes=5)
    torch.save({"epoch": 3, "model": mobilenet.state_dict()}, tmp_path / "mnv3.pth")
    target = build_model("mobilenet_v3_large", "fcn", num_classes=3, output_stride=16, channels=16)
    report = load_weights(target, tmp_path / "mnv3.pth")
    features = {f"backbone.{k}": v for k, v in mobilenet.state_dict().items() if k.startswith("features.")}
    assert_equal_tensors(prefixed(target, "backbone."), features)
    assert sorted(d.split(":")[0] for d in report.dropped) == [
        "classifier.0.bias",
        "classifier.0.weight",
        "classifier.3.bias",
        "classifier.3.weight",
    ]

    # a raw SegmentationModel state dict saved by DistributedDataParallel, wrapped under "state_dict"
    source = model(seed=5)
    ddp_state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": ddp_state}, tmp_path / "ddp.pt")
    target = model(seed=6)
    report = load_weights(target, tmp_path / "ddp.pt")
    assert report.source == "model state dict" and report.missing == []
    assert_equal_tensors(target.state_dict(), source.state_dict())


def test_class_count_change_drops_only_the_classifier(tmp_path):
    source = model(num_classes=21, seed=0)
    path = export_weights(source, tmp_path / "pssl.pt")
    target = model(num_classes=6, seed=1)
    classifier_before = prefixed(target, "classifier.")
    report = load_weights(target, path)

    assert report.notices == [
        "dropped classifier.weight, classifier.bias: shape [21, 16, 1, 1] != [6, 16, 1, 1] "
        "(different number of classes); the classifier starts from scratch"
    ]
    assert report.dropped == [
        "classifier.weight: shape [21, 16, 1, 1] != [6, 16, 1, 1] (different number of classes)",
        "classifier.bias: shape [21] != [6] (different number of classes)",
    ]
    assert_equal_tensors(prefixed(target, "classifier."), classifier_before)
    for part in ("backbone.", "decoder."):
        assert_equal_tensors(prefixed(target, part), prefixed(source, part))
    assert report.loaded == len(source.state_dict()) - 2
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert report.summary() == (
        f"loaded {report.loaded} tensors from {path} (rayseg model); {report.notices[0]}"
    )


def test_other_architecture_is_refused(tmp_path):
    r50_state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(r50_state, tmp_path / "r50.pth")
    with pytest.raises(WeightsError) as err:
        load_weights(model(), tmp_path / "r50.pth")
    message = str(err.value)
    r50 = set(r50_state) - {"fc.weight", "fc.bias"}
    r18 = set(model().backbone.state_dict()) | {"fc.weight", "fc.bias"}
    assert message.startswith(
        f"weights file {tmp_path / 'r50.pth'} (torchvision classifier) does not match the model (resnet18/fcn): "
        f"{len(r50 - r18)} unexpected keys [backbone.layer1.0.conv3.weight, "
    )
    assert r18 - r50 == {"fc.weight", "fc.bias"} and "missing" not in message  # resnet50 has every resnet18 name
    assert "shape mismatches [backbone.layer1.0.conv1.weight shape [64, 64, 1, 1] != [64, 64, 3, 3]" in message
    assert "\n" not in message

    export_weights(model(), tmp_path / "r18.pt")
    with pytest.raises(WeightsError, match="backbone resnet18 in the file, resnet34 in the model"):
        load_weights(build_model("resnet34", "fcn", output_stride=32, channels=16), tmp_path / "r18.pt")
    with pytest.raises(WeightsError, match="head fcn in the file, fpn in the model"):
        load_weights(model(head="fpn"), tmp_path / "r18.pt")


def test_garbage_and_partial_keys(tmp_path):
    source = model()
    state = dict(source.state_dict(), **{"backbone.extra.weight": torch.zeros(3)})
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"\(model state dict\) does not match the model \(resnet18/fcn\): "
                       r"1 unexpected keys "
                       r"\[backbone.extra.weight\]$"):
        load_weights(model(), tmp_path / "extra.pt")

    lenient = model(seed=1)
    report = load_weights(lenient, tmp_path / "extra.pt", strict_backbone=False)
    assert report.dropped == ["backbone.extra.weight: not in the model"]
    assert report.notices == ["not loaded: 1 unexpected keys [backbone.extra.weight]"]
    assert_equal_tensors(lenient.state_dict(), source.state_dict())

    partial = {k: v for k, v in source.state_dict().items() if k != "decoder.0.weight"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match=r"1 missing decoder keys \[decoder.0.weight\]"):
        load_weights(model(), tmp_path / "partial.pt")

    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foo.pt")
    with pytest.raises(WeightsError, match=r"1 unexpected keys \[backbone.foo.weight\], 100 missing backbone keys "
                       r"\[backbone.conv1.weight, backbone.bn1.weight, .*, \.\.\. 90 more\]$"):
        load_weights(model(), tmp_path / "foo.pt")


def test_old_checkpoints_without_batchnorm_counters_load(tmp_path):
    state = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    report = load_weights(model(), tmp_path / "old.pth")
    assert len(old) == 122 - 20  # resnet18 has 20 BatchNorms
    assert report.loaded == 100 and report.dropped == [
        "fc.weight: torchvision classification head",
        "fc.bias: torchvision classification head",
    ]
    assert sum(k.startswith("backbone.") and k.endswith("num_batches_tracked") for k in report.missing) == 20


def test_unreadable_files_are_one_line_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError) as err:
        load_weights(model(), missing)
    assert str(err.value) == f"weights file not found: {missing}"

    torch.save({"state_dict": model().state_dict(), "extra": Custom()}, tmp_path / "pickled.pt")
    with pytest.raises(WeightsError) as err:
        load_weights(model(), tmp_path / "pickled.pt")
    message = str(err.value)
    assert message.startswith(f"cannot read weights file {tmp_path / 'pickled.pt'}: it holds a python object (")
    assert "Custom) that a safe load (weights_only=True) refuses" in message and "\n" not in message

    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*text.pt: not a torch weights file "
                       r"\(torch.save\): a safe load \(weights_only=True\) refuses its bytes and runs nothing "
                       r"from it$"):
        read_weights(tmp_path / "text.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"weights file .*list.pt holds a list, not a dict of tensors"):
        read_weights(tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(WeightsError, match=r"nostate.pt holds no state dict \(top-level keys: epoch, lr\)"):
        read_weights(tmp_path / "nostate.pt")


def test_export_validates_part_and_meta(tmp_path):
    net = model()
    with pytest.raises(ValueError, match="part must be 'model' or 'backbone', got 'decoder'"):
        export_weights(net, tmp_path / "x.pt", part="decoder")
    with pytest.raises(TypeError, match=r"meta\['scores'\]\[1\] is a Tensor; weight-file meta must be plain"):
        export_weights(net, tmp_path / "x.pt", meta={"scores": [1.0, torch.ones(1)]})
    assert not list(tmp_path.iterdir())
    # overwriting an existing file replaces it
    export_weights(net, tmp_path / "x.pt", part="backbone")
    export_weights(net, tmp_path / "x.pt", part="model", meta={"epoch": 2})
    assert read_weights(tmp_path / "x.pt")["part"] == "model"
    assert read_weights(tmp_path / "x.pt")["meta"] == {"epoch": 2}


def test_an_export_with_other_decoder_channels_names_the_key_to_set(tmp_path):
    export_weights(build_model(backbone="resnet18", head="fcn", num_classes=5, output_stride=16, channels=32),
                   tmp_path / "model.pt")
    narrower = build_model(backbone="resnet18", head="fcn", num_classes=5, output_stride=16, channels=16)
    with pytest.raises(WeightsError, match=r"the file was built with model.channels=32 \(this model: 16\): set it, "
                                           r"or start from the export's backbone.pt"):
        load_weights(narrower, tmp_path / "model.pt")
