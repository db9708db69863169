"""``rayseg claims``: run (or resume, or read) the experiments behind the papers' claims and judge each claim.

The runs (:mod:`rayseg.claims.plan`) go to Ray as tasks of one CPU each (Train's local mode inside the task,
one torch thread), so a 2-core machine trains two runs at a time and a cluster as many as it has CPUs; a
fine-tune or probe waits for the pre-training run it starts from. PSSL's chain goes first, on the driver: the
ensemble members train, then Ray Data labels the classification set with their SmoothGrad ensemble.

Every run folder is deterministic, so a killed claims run resumes: finished runs return at once, others resume
from their last checkpoint. ``--read`` judges the runs already under ``--storage`` without training anything.
Output in ``<storage>/claims/``: ``claims.json`` (every comparison's effect and interval), ``claims.md`` (the
table) and ``claims.png`` (the effects with their 95% intervals).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time

from collections.abc import Callable

from rayseg import storage
from rayseg.claims.evaluate import ClaimResult, evaluate_claims
from rayseg.claims.plan import BUDGETS, ClaimsPlan, RunSpec, choose_lr, plan_claims, pssl_specs
from rayseg.config import Config
from rayseg.tables import format_duration, format_table

__all__ = ["run_claims", "judge", "format_claims", "label_classification_set", "render_claims_chart"]


def _train_spec(spec: RunSpec, start: dict | None = None, *searched: dict) -> dict:
    """Train (or resume, or return) the run ``spec``, after the pre-training run whose result is ``start``, with
    the lr that did best in its ``searched`` lr-search runs. A run folder whose config differs from the plan's (the
    plan changed since) is removed and trained again."""
    from rayseg.config import load_config
    from rayseg.engine.checkpoint import LocalCheckpointStore
    from rayseg.engine.runner import train
    from rayseg.methods import METHODS

    cfg = spec.build(start["export"] if start else "", start["config"] if start else "",
                     choose_lr(searched) if spec.search else None)
    run_dir = cfg.run_dir(spec.command)
    stored = storage.join(run_dir, "config.yaml")
    if storage.is_file(stored) and load_config(stored) != cfg:
        print(f"[claims] {spec.name}: its settings changed since it ran; training it again", flush=True)
        storage.delete(run_dir)
    summary = train(cfg, spec.command, METHODS[cfg.method])
    # a finished run needs no resume checkpoint (~150 MB); a fine-tune or probe needs no export either (~90 MB):
    # what the claims read is its metrics.json
    storage.delete(storage.join(run_dir, LocalCheckpointStore.FOLDER))
    if spec.command == "finetune":
        storage.delete(storage.join(run_dir, "export"))
        return {"name": spec.name, "lr": cfg.optim.lr, "miou": summary["miou"]}
    export = summary["export"]
    return {"name": spec.name, "export": export.get("model") or next(iter(export.values())),
            "config": cfg.fingerprint()}


def label_classification_set(classifiers: Config, storage_root: str,
                             label_config: Callable[[str, list[str]], Config]) -> tuple[dict, str]:
    """PSSL's chain before pre-training (the demo's too): train the ensemble members of ``classifiers``, write the
    synthetic classification set they were trained on as an ImageFolder under ``storage_root``, and label it with
    ``label_config(images, member specs)``. Returns (the labelling summary, the images folder)."""
    from rayseg.commands.label import label_images
    from rayseg.commands.train_members import format_members_table, train_members
    from rayseg.data.synthetic import SyntheticClassification, write_image_folder

    print("[rayseg] PSSL: train the ensemble members on the synthetic classification set", flush=True)
    members = train_members(classifiers)
    print(format_members_table(members), flush=True)
    c = classifiers.classifier
    images = storage.join(storage_root, "classification", "images")  # the very images the members were trained on
    write_image_folder(SyntheticClassification(num_images=c.num_images, image_size=c.image_size, seed=0,
                                               split="train"), images)
    print("[rayseg] PSSL: label them with the ensemble (SmoothGrad, Ray Data)", flush=True)
    labels = label_images(label_config(images, [f"{m['arch']}:{m['weights']}" for m in members]).label)
    return labels, images


def _run_all(plan: ClaimsPlan, address: str | None) -> tuple[list[str], str, dict]:
    """Every run of the plan as Ray tasks; returns the errors (``name: message``) of the runs that failed, the
    label version folder and, per lr search, the held-out mIoU of each lr and the lr chosen."""
    from rayseg.engine.runner import ensure_ray

    ensure_ray(address)
    import ray

    summary, images = label_classification_set(plan.classifiers, plan.storage, plan.label_config)
    labels = summary["version_dir"]
    pretrain = plan.pretrain + [s for p in plan.budget.pretrain_seeds
                                for s in pssl_specs(plan.storage, plan.budget, p, labels, images)]
    task = ray.remote(num_cpus=1, max_retries=0)(_train_spec)
    refs = {s.name: task.options(name=s.name).remote(s) for s in pretrain}
    for s in [s for specs in plan.searches.values() for s in specs] + plan.evaluate:
        # Ray hands each the result of its pre-training run and of its lr search runs once those have finished
        start = refs[s.after] if s.after else None
        refs[s.name] = task.options(name=s.name).remote(s, start, *(refs[n] for n in s.search))
    pending = {ref: name for name, ref in refs.items()}
    errors, results, started = [], {}, time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            results[name] = ray.get(ready[0])
        except Exception as e:  # a failed run (or its pre-training) is reported; the others go on
            errors.append(f"{name}: {str(e).strip().splitlines()[-1]}")
        elapsed = time.perf_counter() - started
        done = len(refs) - len(pending)
        print(f"[claims] {done}/{len(refs)} runs done ({name}); {format_duration(elapsed)} so far, "
              f"about {format_duration(elapsed / done * len(pending))} to go", flush=True)
    return errors, labels, _lr_choices(plan, results)


def _lr_choices(plan: ClaimsPlan, results: dict) -> dict:
    """``{"<start> <evaluation>": {"held_out_miou": {lr: mIoU}, "chosen": lr}}`` of the searches that finished."""
    choices = {}
    for key, specs in plan.searches.items():
        searched = [results[s.name] for s in specs if s.name in results]
        if len(searched) == len(specs):
            choices[key] = {"held_out_miou": {f"{r['lr']:g}": round(100 * r["miou"], 2) for r in searched},
                            "chosen": choose_lr(searched)}
    return choices


def format_lr_choices(choices: dict) -> str:
    """One line per lr search: the held-out mIoU of each lr, the chosen one marked."""
    rows = [[key, "  ".join(f"{lr}: {m:.1f}{'*' if float(lr) == c['chosen'] else ''}"
                            for lr, m in c["held_out_miou"].items())] for key, c in choices.items()]
    return format_table(["lr search", "held-out mIoU per lr (* chosen)"], rows, "<<")


def judge(root: str, names: set[str] | None = None, labels_dir: str | None = None) -> list[ClaimResult]:
    """The claims over the finished fine-tunes and probes under ``root`` (only the run folders ``names`` when
    given: runs a re-planned budget dropped are not judged) and the labelling's per-image IoUs."""
    from rayseg.commands.report import read_fine_tunes
    from rayseg.labeling.shards import pseudo_mask_ious

    runs = [(r.tags, r.miou) for r in read_fine_tunes(root)
            if r.miou is not None and (names is None or storage.basename(r.run_dir) in names)]
    if labels_dir is None:  # the only label version under root, if there is one
        versions = [storage.join(root, "labels", v) for v in storage.list_dir(storage.join(root, "labels"))] \
            if storage.is_dir(storage.join(root, "labels")) else []
        labels_dir = versions[0] if len(versions) == 1 else None
    return evaluate_claims(runs, pseudo_mask_ious(labels_dir) if labels_dir else None)


def _interval(c) -> str:
    e = c.effect
    if e is None:
        return "-"
    if math.isinf(e.low):
        return f"{e.mean:+.2f} (n={e.n}: no interval)"
    return f"{e.mean:+.2f} [{e.low:+.2f}, {e.high:+.2f}] (n={e.n}{f', {e.groups} groups' if e.groups > 1 else ''})"


def format_claims(results: list[ClaimResult]) -> str:
    """One line per comparison: claim, comparison, the two means, the effect with its 95% interval, verdict."""
    rows = []
    for r in results:
        for k, c in enumerate(r.comparisons):
            rows.append([f"{r.claim.key} {r.claim.paper}" if k == 0 else "", c.label,
                         "-" if c.effect is None else f"{c.better_mean:.2f} vs {c.worse_mean:.2f}",
                         _interval(c), c.verdict, r.verdict if k == 0 else ""])
    return format_table(["claim", "comparison", "means (%)", "effect [95% CI] (points)", "verdict", "claim verdict"],
                        rows, "<<>>>>")


def render_claims_chart(results: list[ClaimResult], path: str, title: str = "") -> str:
    """Forest plot: one row per comparison that ran, its effect and 95% interval, coloured by verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"shown": "tab:green", "not shown": "tab:gray", "contradicted": "tab:red"}
    rows = [(f"{r.claim.key}: {c.label}", c) for r in results for c in r.comparisons if c.effect is not None]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5), dpi=100)
    for i, (label, c) in enumerate(reversed(rows)):
        e = c.effect
        low = e.low if math.isfinite(e.low) else e.mean
        high = e.high if math.isfinite(e.high) else e.mean
        ax.errorbar([e.mean], [i], xerr=[[e.mean - low], [high - e.mean]], fmt="o", capsize=3,
                    color=colours[c.verdict])
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("effect in points (mIoU; IoU for 1a), 95% interval\ngreen: shown, grey: not shown, "
                  "red: contradicted")
    ax.set_title(title or "the papers' claims")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
    return path


def write_claims(root: str, results: list[ClaimResult], extra: dict, title: str = "") -> dict:
    out = storage.join(root, "claims")
    table = format_claims(results)
    storage.write_text(storage.join(out, "claims.json"),
                       json.dumps({**extra, "claims": [r.as_dict() for r in results]}, indent=1))
    storage.write_text(storage.join(out, "claims.md"), f"```\n{table}\n```\n")
    png = render_claims_chart(results, storage.join(out, "claims.png"), title)
    return {"table": table, "dir": out, "png": png}


def run_claims(budget: str = "full", storage_root: str = "rayseg_runs/claims", address: str | None = None,
               read_only: bool = False) -> dict:
    b = BUDGETS[budget]
    root = storage.absolute(storage.join(storage_root, budget))
    started = time.perf_counter()
    plan = plan_claims(root, b)
    previous = storage.join(root, "claims", "claims.json")
    last = json.loads(storage.read_text(previous)) if storage.is_file(previous) else {}
    if read_only:  # the label version, wall time, errors and lr choices of the last run that trained
        errors, labels, minutes = last.get("errors", []), last.get("labels"), last.get("minutes", 0.0)
        lrs = last.get("lr_search", {})
    else:
        errors, labels, lrs = _run_all(plan, address)
        minutes = (time.perf_counter() - started) / 60
    results = judge(root, {s.name for s in plan.evaluate}, labels)
    written = write_claims(root, results, {"budget": budget, "settings": b.__dict__, "labels": labels,
                                           "minutes": minutes, "errors": errors, "lr_search": lrs},
                           f"claims at budget {budget!r}")
    print(f"\n[claims] budget {budget!r}: {len(b.pretrain_seeds)} pre-training seeds x {len(b.finetune_seeds)} "
          f"fine-tune seeds; {minutes:.1f} minutes\n{format_lr_choices(lrs)}\n{written['table']}\n"
          f"[claims] {written['dir']}: claims.json, claims.md, claims.png", flush=True)
    for e in errors:
        print(f"[claims] failed: {e}", flush=True)
    return {"results": results, "errors": errors, "minutes": minutes, **written}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default="full", choices=sorted(BUDGETS),
                   help="full: the recorded run (about 85 minutes on 2 cores from scratch); toy: every run once at "
                   "toy size")
    p.add_argument("--storage", default="rayseg_runs/claims", help="where the runs go (a folder per budget)")
    p.add_argument("--read", action="store_true", help="judge the finished runs only; train nothing")
    p.add_argument("--address", help="Ray cluster to join (default: a local cluster)")


def run(args: argparse.Namespace) -> int:
    out = run_claims(args.budget, args.storage, args.address, read_only=args.read)
    return 1 if out["errors"] else 0
