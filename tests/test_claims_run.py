"""`rayseg claims` at the toy budget, as a user runs it: a subprocess in another working directory with a relative
--storage, on a real Ray cluster (the runs are Ray tasks); then re-run (nothing trains) and --read (no Ray)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayseg.claims.evaluate import CLAIMS
from rayseg.claims.plan import BUDGETS, plan_claims
from rayseg.cli import main


def _claims(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayseg", "claims", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def toy_claims(ray_cluster, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("user")
    first = _claims(cwd, "--budget", "toy", "--storage", "claims_runs", "--address", ray_cluster)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return cwd, first, cwd / "claims_runs" / "toy"


def test_every_run_of_the_plan_finished_and_each_claim_has_a_verdict(toy_claims):
    cwd, first, root = toy_claims
    b = BUDGETS["toy"]
    plan = plan_claims(str(root), b)
    for spec in plan.evaluate:
        metrics = root / spec.name / "metrics.json"
        assert metrics.is_file(), spec.name
        # what the claims read stays, the rest goes: a finished run needs no checkpoint, an evaluation no export
        assert not (root / spec.name / "local_checkpoints").exists() and not (root / spec.name / "export").exists()
    pssl_pretrains = [f"pretrain-{s}-p0" for s in ("PSSL", "PSSL-bg1")]
    assert all((root / name / "export" / "model.pt").is_file() for name in pssl_pretrains)
    assert not any((root / name / "local_checkpoints").exists() for name in pssl_pretrains)

    out = json.loads((root / "claims" / "claims.json").read_text())
    assert [c["key"] for c in out["claims"]] == [c.key for c in CLAIMS] and out["errors"] == []
    verdicts = {c["key"]: c["verdict"] for c in out["claims"]}
    assert set(verdicts.values()) <= {"shown", "not shown", "contradicted"}, verdicts  # all claims ran
    assert verdicts["1b"] == "not shown"  # the toy sweep lacks w_bg = 0.001: a partial claim is never shown
    by_label = {c["label"]: c for claim in out["claims"] for c in claim["comparisons"]}
    pssl = by_label["PSSL vs scratch (fine-tune)"]
    # complete pairs: the mean difference is the difference of the means; n = pre-training x fine-tune seeds
    assert pssl["effect"]["n"] == len(b.pretrain_seeds) * len(b.finetune_seeds)
    assert pssl["effect"]["mean"] == pytest.approx(pssl["better_mean"] - pssl["worse_mean"], abs=1e-9)
    assert pssl["effect"]["low"] < pssl["effect"]["mean"] < pssl["effect"]["high"]
    assert (root / "claims" / "claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (root / "claims" / "claims.md").read_text()
    assert "PixCon-SR vs PixCon-Sim (fine-tune)" in table and "ensemble vs best member" in table
    assert "runs done" in first.stdout


def test_each_start_is_judged_at_the_lr_its_search_chose_on_held_out_training_images(toy_claims):
    import yaml

    _, first, root = toy_claims
    b = BUDGETS["toy"]
    plan = plan_claims(str(root), b)
    lr_search = json.loads((root / "claims" / "claims.json").read_text())["lr_search"]
    # scratch + 7 pre-trained starts are fine-tuned; those and the PSSL-bg1 sweep start are probed
    assert len(lr_search) == len(plan.searches) == 8 + 9
    for key, specs in plan.searches.items():
        grid = b.probe_lrs if key.endswith(" probe") else b.finetune_lrs
        scores = lr_search[key]["held_out_miou"]
        assert [float(lr) for lr in scores] == list(grid)
        assert scores[f"{lr_search[key]['chosen']:g}"] == max(scores.values())
        for spec in specs:  # trained on the training images less the held-out ones, scored on those
            cfg = yaml.safe_load((root / spec.name / "config.yaml").read_text())
            assert cfg["data"]["holdout"] == b.holdout and cfg["data"]["num_train"] == b.target_images
    for spec in plan.evaluate:
        cfg = yaml.safe_load((root / spec.name / "config.yaml").read_text())
        assert cfg["data"]["holdout"] == 0
        if spec.search:
            key = next(k for k, specs in plan.searches.items() if specs[0].name == spec.search[0])
            assert cfg["optim"]["lr"] == lr_search[key]["chosen"], spec.name
        else:  # the SSA study: one recipe for both heads
            assert cfg["optim"]["lr"] == b.ssa_lr, spec.name
    assert "held-out mIoU per lr" in first.stdout


def test_a_rerun_trains_nothing_and_read_judges_without_ray(toy_claims, ray_cluster, monkeypatch, capsys):
    cwd, _, root = toy_claims
    before = (root / "claims" / "claims.json").read_text()
    again = _claims(cwd, "--budget", "toy", "--storage", "claims_runs", "--address", ray_cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step " not in again.stdout  # every run was complete: no training step logged
    assert json.loads((root / "claims" / "claims.json").read_text())["claims"] == json.loads(before)["claims"]

    import rayseg.engine.runner as runner

    monkeypatch.setattr(runner, "ensure_ray", lambda *a, **k: pytest.fail("--read started Ray"))
    monkeypatch.chdir(cwd)
    assert main(["claims", "--budget", "toy", "--storage", "claims_runs", "--read"]) == 0
    assert "PSSL vs scratch (fine-tune)" in capsys.readouterr().out
    assert json.loads((root / "claims" / "claims.json").read_text())["claims"] == json.loads(before)["claims"]


def test_a_replanned_run_trains_exactly_the_changed_runs(toy_claims, ray_cluster, monkeypatch):
    """The plan changes between two runs (here: longer probes): the runs whose config changed are trained again
    from the start; every other run is left as it was."""
    import dataclasses

    from rayseg.claims import plan as plan_module
    from rayseg.commands.claims import run_claims

    cwd, _, root = toy_claims
    plan = plan_claims(str(root), BUDGETS["toy"])
    untouched = {s.name: (root / s.name / "metrics.json").stat().st_mtime_ns for s in plan.evaluate
                 if not s.name.startswith("probe-")}
    monkeypatch.setitem(plan_module.BUDGETS, "toy", dataclasses.replace(BUDGETS["toy"], probe_epochs=2))
    monkeypatch.chdir(cwd)
    out = run_claims("toy", "claims_runs", ray_cluster)
    assert out["errors"] == []
    probes = [s.name for s in plan.evaluate if s.name.startswith("probe-")]
    assert len(probes) == 18  # (scratch + 8 pre-trained starts) x 2 fine-tune seeds
    for name in probes:
        assert json.loads((root / name / "summary.json").read_text())["epochs"] == 2, name
        log = (root / name / "log.txt").read_text()  # appended to on resume: the old 1-epoch run's lines are gone
        assert "epoch 2/2" in log and "epoch 1/1 " not in log and "resuming" not in log, name
    assert {n: (root / n / "metrics.json").stat().st_mtime_ns for n in untouched} == untouched


def test_runs_after_a_changed_pretraining_change_too(tmp_path):
    spec = next(s for s in plan_claims(str(tmp_path), BUDGETS["toy"]).evaluate if s.after)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    assert spec.build(str(weights), "aaaa", lr=0.1) != spec.build(str(weights), "bbbb", lr=0.1)
    assert spec.build(str(weights), "aaaa", lr=0.1).run.tags["start_config"] == "aaaa"
