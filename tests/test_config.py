import dataclasses
import subprocess
import sys

import pytest
import yaml

from rayseg.config import Config, ConfigError, explain, load_config, parse_override, save_config


def test_defaults_and_overrides_are_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\noptim:\n  lr: 1\n")
    cfg = load_config(f, ["train.batch_size=4", "data.label_map={7: 0, 8: 1}", "optim.step_epochs=[2, 4]"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 4
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.label_map == {7: 0, 8: 1}
    assert cfg.optim.step_epochs == [2, 4]
    assert cfg.model.backbone == "resnet18"  # untouched default


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["trian.epochs=3"], "unknown key 'trian'"),
    (["train.epochs=ten"], "train.epochs: expected int, got str 'ten'"),
    (["train.epochs=2.5"], "train.epochs: expected int, got float 2.5"),
    (["train.use_gpu=3"], "train.use_gpu: expected bool"),
    (["optim.name=adam"], "optim.name: 'adam' is not one of sgd, adamw"),
    (["model.init_weights=/nonexistent/w.pt"], "model.init_weights: file not found: /nonexistent/w.pt"),
    (["train=3"], "train: expected a section"),
    (["data.kind=voc"], "data.root: required when data.kind is voc"),
    (["data.kind=voc", "data.root=/nonexistent"], "data.root: folder not found: /nonexistent"),
    (["train.epochs=0"], "train.epochs: must be >= 1, got 0"),
    (["epochs"], "override 'epochs' is not of the form key=value"),
    (["data.kind=voc", "data.root=s3://bucket/voc"], "data.root: s3://bucket/voc: URIs are accepted for run.storage, "
                                                     "label.output, pssl.labels, model.init_weights only"),
    (["label.images=gs://bucket/images"], "label.images: gs://bucket/images: URIs are accepted for"),
    (["run.storage=ftp://host/runs"], "run.storage: ftp://host/runs: unknown scheme ftp://, expected one of s3://"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml line 2: invalid YAML"):
        load_config(bad)


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=0.1") == ("a.b", 0.1)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=x=y") == ("a", "x=y")


def test_run_dir_is_deterministic_and_tracks_the_config(tmp_path):
    a = load_config(None, [f"run.storage={tmp_path}"])
    b = load_config(None, [f"run.storage={tmp_path}"])
    c = load_config(None, [f"run.storage={tmp_path}", "train.epochs=11"])
    assert a.run_dir("pretrain") == b.run_dir("pretrain")
    assert a.run_dir("pretrain") != c.run_dir("pretrain")
    assert a.run_dir("pretrain").startswith(str(tmp_path))
    named = load_config(None, [f"run.storage={tmp_path}", "run.name=exp1"])
    assert named.run_dir("pretrain") == str(tmp_path / "exp1")
    uri = "s3://bucket/runs?region=eu-west-1"
    on_s3 = load_config(None, [f"run.storage={uri}", "run.name=exp1"])
    assert on_s3.run_dir("pretrain") == "s3://bucket/runs/exp1?region=eu-west-1"
    assert on_s3.fingerprint() == a.fingerprint()  # where a run is stored is not part of what it computes


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "data.label_map={3: 1}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 7


def _leaf_keys(section) -> int:
    return sum(_leaf_keys(getattr(section, f.name)) if dataclasses.is_dataclass(getattr(section, f.name)) else 1
               for f in dataclasses.fields(section))


def test_explain_lists_every_key():
    lines = explain()
    assert "train.epochs (int, default 10; >= 1): training epochs" in lines
    assert any(line.startswith("optim.name (str, default 'sgd'; one of sgd, adamw)") for line in lines)
    assert any(line.startswith("label.explainer.samples (int, default 50; >= 1)") for line in lines)
    sections = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))]
    expected = {"run", "data", "model", "optim", "train", "pssl", "label", "mdp", "pixcon", "densecl", "ssa"}
    assert expected <= set(sections)
    assert len(lines) == _leaf_keys(Config())


@pytest.mark.parametrize("overrides, message", [
    (["label.explainer.samples=0"], "label.explainer.samples: must be >= 1, got 0"),
    (["label.batch_size=0"], "label.batch_size: must be >= 1, got 0"),
    (["label.input_size=0"], "label.input_size: must be >= 1, got 0"),
    (["label.explainer.noise_level=-1"], "label.explainer.noise_level: must be >= 0, got -1.0"),
    (["optim.lr=.nan"], "optim.lr: must be > 0, got nan"),
    (["train.cpus_per_worker=0"], "train.cpus_per_worker: must be > 0, got 0.0"),
    (["mdp.lambda_min=0.8", "mdp.lambda_max=0.5"], "mdp.lambda_min/lambda_max: need lambda_min <= lambda_max"),
    (["views.blur_kernel=4"], "views.blur_kernel: must be odd, got 4"),
    (["label.samples=5"], "unknown key 'label.samples': it moved to 'label.explainer.samples'"),
    (["label.members=[resnet18]"], "label.members[0]: 'resnet18' has no weights file"),
    (["classifier.archs=[resnet18, resnet18]"], "classifier.archs: 'resnet18' listed twice"),
])
def test_section_rules_name_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_library_construction_checks_the_same_rules():
    """A section built in code (not from YAML) cannot hold a bad value either; the key is the field's name."""
    from rayseg.config import ExplainerSection

    with pytest.raises(ConfigError, match=r"^samples: must be >= 1, got 0$"):
        ExplainerSection(samples=0)
    with pytest.raises(ConfigError, match=r"^method: 'occlusion' is not one of smoothgrad"):
        ExplainerSection(method="occlusion")


def test_method_choices_are_the_registry():
    """The choices are spelled out (checking a config imports no torch) and must stay the registry's keys."""
    from rayseg.config.sections import METHOD_NAMES
    from rayseg.methods import METHODS

    assert METHOD_NAMES == tuple(METHODS)
    with pytest.raises(ConfigError, match="method: 'mine' is not one of supervised"):
        load_config(None, ["method=mine"])


@pytest.mark.parametrize("args, message", [
    (["pretrain", "train.epoch=3"], "error: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["finetune", "--config", "/nonexistent.yaml"], "error: config file not found: /nonexistent.yaml"),
    (["finetune", "model.init_weights=/nonexistent.pt"], "error: model.init_weights: file not found"),
])
def test_cli_config_errors_exit_2_with_one_line_before_ray(args, message, tmp_path):
    # RAY_ADDRESS points nowhere: if the CLI tried to start or join Ray before failing, the error would differ.
    env = {"RAY_ADDRESS": "127.0.0.1:1", "PATH": "/usr/bin:/bin"}
    import os
    env = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-m", "rayseg", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(message), r.stderr


def test_cli_weights_that_do_not_fit_the_model_exit_2_before_ray(tmp_path):
    import os

    from rayseg.models import build_model
    from rayseg.models.weights import export_weights

    weights = tmp_path / "deeplab.pt"
    export_weights(build_model("resnet18", "deeplabv3", num_classes=7, channels=16), weights)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-m", "rayseg", "finetune", f"model.init_weights={weights}",
                        "model.head=fcn", f"run.storage={tmp_path}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and str(weights) in err[0], r.stderr
    assert not any(tmp_path.glob("finetune-*")), "no run folder before the config is known to be good"


def test_a_choice_close_to_a_valid_one_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"^model.head: 'deeplab' is not one of fcn, deeplabv3, fpn, probe \(did you mean "
                                          r"'deeplabv3'\?\)$"):
        load_config(None, ["model.head=deeplab"])
    with pytest.raises(ConfigError, match=r"is not one of fcn, deeplabv3, fpn, probe$"):
        load_config(None, ["model.head=unet"])
