"""The transfer report from fixture run folders: numbers, missing runs, CSV and chart."""

import csv
import json

import pytest
from PIL import Image

from rayseg.cli import main
from rayseg.commands.report import collect_runs, format_report, summarise, write_report


def fixture_runs(root, runs):
    for i, (start, head, seed, miou) in enumerate(runs):
        run = root / f"finetune-{i}"
        run.mkdir(parents=True)
        (run / "tags.json").write_text(json.dumps({"start": start, "head": head, "seed": seed}))
        if miou is not None:
            (run / "metrics.json").write_text(json.dumps({"miou": miou, "pixel_accuracy": 0.9}))


RUNS = [("scratch", "linear", 0, 0.20), ("scratch", "linear", 1, 0.24), ("scratch", "ssa", 0, 0.25),
        ("scratch", "ssa", 1, 0.27), ("PSSL", "linear", 0, 0.30), ("PSSL", "linear", 1, None)]


def test_summary_mean_std_and_missing(tmp_path):
    fixture_runs(tmp_path, RUNS)
    summary = summarise(collect_runs(tmp_path), start_order=("scratch", "PSSL"))
    by = {(s["start"], s["head"]): s for s in summary}
    assert [(s["start"], s["head"]) for s in summary] == [("scratch", "linear"), ("scratch", "ssa"), ("PSSL", "linear")]
    assert by["scratch", "linear"]["mean"] == pytest.approx(0.22)
    assert by["scratch", "linear"]["std"] == pytest.approx(0.02 * 2 ** 0.5)  # sample std of 0.20, 0.24
    assert by["PSSL", "linear"]["seeds"] == 1 and by["PSSL", "linear"]["missing"] == 1
    assert by["PSSL", "linear"]["std"] == 0.0
    table = format_report(summary).splitlines()
    assert "22.00 ± 2.83 (n=2)" in table[2] and "26.00 ± 1.41 (n=2)" in table[2]
    assert "30.00 ± 0.00 (n=1) +1 missing" in table[3] and table[3].rstrip().endswith("-")


def test_write_report_and_cli(tmp_path, capsys):
    fixture_runs(tmp_path / "runs", RUNS)
    out = write_report(tmp_path / "runs", tmp_path / "out")
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(r["miou"] == "" for r in rows) == 1
    with Image.open(out["png"]) as img:
        assert img.size[0] >= 600 and img.size[1] == 400
    assert main(["report", "--storage", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "scratch" in printed and "report.png" in printed


def test_report_errors(tmp_path, capsys):
    assert main(["report", "--storage", str(tmp_path / "nothing")]) == 1
    assert "folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--storage", str(tmp_path / "empty")]) == 1
    assert "no fine-tune runs" in capsys.readouterr().err


def test_report_from_and_to_an_object_store(tmp_path, s3_uri):
    from rayseg import storage

    fixture_runs(tmp_path / "runs", RUNS)
    storage.upload(tmp_path / "runs", s3_uri)
    out = write_report(s3_uri)
    assert out["csv"] == storage.join(s3_uri, "report.csv") and out["png"] == storage.join(s3_uri, "report.png")
    rows = list(csv.DictReader(storage.read_text(out["csv"]).splitlines()))
    assert {r["run_dir"] for r in rows} == {storage.join(s3_uri, f"finetune-{i}") for i in range(6)}
    assert sorted(r["miou"] for r in rows)[1:] == ["0.200000", "0.240000", "0.250000", "0.270000", "0.300000"]
    local = write_report(tmp_path / "runs", tmp_path / "out")
    assert out["table"] == local["table"]
    assert storage.read_bytes(out["png"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_tags_group_any_fine_tunes(tmp_path, capsys):
    """Tags as training runs write them (Config.tags): pre-training runs are not rows, --by picks the grouping."""
    from rayseg.config import load_config

    runs = tmp_path / "runs"
    pre = runs / "pretrain-pssl-1234"
    (pre / "export").mkdir(parents=True)
    (pre / "export" / "model.pt").write_bytes(b"")
    (pre / "tags.json").write_text(json.dumps(load_config(None, []).tags("pretrain")))
    values = {("a", "voc", 0): 0.40, ("a", "voc", 1): 0.44, ("b", "voc", 0): 0.30, ("a", "ade", 0): 0.20}
    for (recipe, target, seed), miou in values.items():
        cfg = load_config(None, [f"run.seed={seed}", f"run.tags={{recipe: {recipe}, target: {target}}}",
                                 f"model.init_weights={pre / 'export' / 'model.pt'}"])
        run = runs / f"ft-{recipe}-{target}-{seed}"
        run.mkdir(parents=True)
        (run / "tags.json").write_text(json.dumps(cfg.tags("finetune")))
        (run / "metrics.json").write_text(json.dumps({"miou": miou}))
    assert cfg.tags("finetune") == {"command": "finetune", "method": "supervised", "head": "linear",
                                    "start": "pretrain-pssl-1234", "seed": 0, "eval": "finetune", "recipe": "a",
                                    "target": "ade"}

    assert main(["report", "--storage", str(runs), "--by", "recipe,target", "--title", "two recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["recipe", "target=ade", "(mIoU", "%)", "target=voc", "(mIoU", "%)"]  # first seen
    assert lines[2].split() == ["a", "20.00", "±", "0.00", "(n=1)", "42.00", "±", "2.83", "(n=2)"]
    assert lines[3].split() == ["b", "-", "30.00", "±", "0.00", "(n=1)"]
    with open(runs / "report.csv") as f:
        assert [r["recipe"] for r in csv.DictReader(f)] == ["a", "a", "a", "b"]  # the pre-training is no row
    assert main(["report", "--storage", str(runs), "--by", "recipe"]) == 2
    assert capsys.readouterr().err.startswith("error: --by: give two tag names")
