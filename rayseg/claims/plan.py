"""The experiments behind the claims (:mod:`rayseg.claims.evaluate`) on the embedded synthetic benchmark.

Every run is a plain :class:`~rayseg.config.Config`: the same resnet18 + FCN network at ``image_size`` and
``output_stride``; the pre-training runs see ``source_images`` images for ``pretrain_epochs`` epochs (MDP on A + B
sees ``source_images`` of A plus as many of B: B is added to the full A set); every start is evaluated on the target
domain C by fine-tuning and by a frozen-backbone linear probe, with each fine-tune seed, after each pre-training
seed. Runs are tagged (``run.tags``: start, pretrain_seed, study) so that :func:`evaluate_claims` pairs them.

The SSA study (claim 6) fine-tunes from scratch at ``ssa_image_size`` so that the feature maps (``ssa_image_size /
output_stride``) are large enough for the official 6-pixel boundary border of the response distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayseg.config import Config, config_from_dict

__all__ = ["ClaimsBudget", "ClaimsPlan", "RunSpec", "BUDGETS", "plan_claims", "pretrain_specs", "pssl_specs"]


@dataclass(frozen=True)
class ClaimsBudget:
    image_size: int
    output_stride: int
    source_images: int        # images of each pre-training run (MDP-A+B: this many of A and of B)
    pretrain_epochs: int
    target_images: int        # labelled domain-C images for fine-tuning and probing
    val_images: int           # held-out domain-C images for the mIoU
    finetune_epochs: int
    probe_epochs: int
    classification_images: int  # PSSL: the classification set the ensemble is trained on and then labels
    classifier_epochs: int
    smoothgrad_samples: int
    ensemble: tuple[str, ...]
    pretrain_seeds: tuple[int, ...]
    finetune_seeds: tuple[int, ...]
    bg_weights: tuple[float, ...]  # PSSL background weights of the Table-1 sweep (0.1 is the "PSSL" start)
    ssa_image_size: int
    ssa_target_images: int


BUDGETS: dict[str, ClaimsBudget] = {
    # the recorded run: about an hour on 2 cores, at most 90 minutes (bench/RESULTS.md says how it was chosen)
    "full": ClaimsBudget(image_size=64, output_stride=8, source_images=384, pretrain_epochs=6, target_images=96,
                         val_images=128, finetune_epochs=5, probe_epochs=5, classification_images=256,
                         classifier_epochs=5, smoothgrad_samples=8, ensemble=("resnet18", "resnet34", "resnet50"),
                         pretrain_seeds=(0, 1), finetune_seeds=(0, 1, 2, 3, 4), bg_weights=(0.001, 0.01, 0.1, 1.0),
                         ssa_image_size=128, ssa_target_images=96),
    # every kind of run once, at toy size (the tests)
    "toy": ClaimsBudget(image_size=32, output_stride=16, source_images=16, pretrain_epochs=1, target_images=8,
                        val_images=8, finetune_epochs=1, probe_epochs=1, classification_images=32,
                        classifier_epochs=1, smoothgrad_samples=2, ensemble=("resnet18", "resnet34"),
                        pretrain_seeds=(0,), finetune_seeds=(0, 1), bg_weights=(0.1, 1.0),
                        ssa_image_size=32, ssa_target_images=8),
}

PIXCON_VARIANTS = {"PixCon-SR": "sr", "PixCon-Sim": "sim", "PixCon-Coord": "coord"}
SGD = {"name": "sgd", "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 10}
TRAIN = {"num_workers": 0, "cpus_per_worker": 1.0, "log_every": 50, "keep_checkpoints": 1}


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``build(init, start_config)`` gives its config once the weights it starts from
    (``after``'s export, or none) exist; ``command`` is pretrain or finetune."""

    name: str
    command: str
    after: str  # the name of the pre-training run it starts from; "" for none
    settings: dict  # the config as a dict, without model.init_weights

    def build(self, init: str = "", start_config: str = "") -> Config:
        """The config, starting from ``init``; ``start_config`` (the fingerprint of the pre-training run that
        wrote ``init``) becomes the tag ``start_config``, so that a re-planned pre-training changes the configs
        of the runs that start from it."""
        settings = dict(self.settings)
        settings["model"] = {**settings["model"], "init_weights": init}
        if start_config:
            run = settings["run"]
            settings["run"] = {**run, "tags": {**run.get("tags", {}), "start_config": start_config}}
        return config_from_dict(settings)


@dataclass(frozen=True)
class ClaimsPlan:
    budget: ClaimsBudget
    storage: str
    classifiers: Config       # the PSSL ensemble members
    pretrain: list[RunSpec]   # PSSL runs start only once the labels exist
    evaluate: list[RunSpec]   # fine-tunes and probes

    def label_config(self, images: str, members: list[str]) -> Config:
        b = self.budget
        return config_from_dict({
            "run": {"storage": self.storage, "seed": 0},
            "label": {"images": images, "true_masks": f"{images}_masks", "output": f"{self.storage}/labels",
                      "members": members, "num_classes": 12, "input_size": b.image_size,
                      "explainer": {"samples": b.smoothgrad_samples}, "shard_size": 128, "batch_size": 16,
                      "cpus_per_actor": 1.5, "cpus_per_task": 0.5},
        })


def _model(b: ClaimsBudget, **extra) -> dict:
    return {"backbone": "resnet18", "head": "fcn", "output_stride": b.output_stride, "channels": 64, **extra}


def _data(b: ClaimsBudget, **extra) -> dict:
    return {"kind": "synthetic", "image_size": b.image_size, "crop_size": b.image_size, "scale_min": 0.75,
            "scale_max": 1.5, "num_val": b.val_images, **extra}


def _pretrain(storage: str, b: ClaimsBudget, start: str, seed: int, method: str, data: dict, **sections) -> RunSpec:
    name = f"pretrain-{start}-p{seed}"
    return RunSpec(name, "pretrain", "", {
        "method": method, "run": {"storage": storage, "name": name, "seed": seed},
        "data": _data(b, **data), "model": _model(b), "optim": {**SGD, "lr": 0.05},
        "train": {**TRAIN, "epochs": b.pretrain_epochs, "batch_size": 16}, **sections})


def pretrain_specs(storage: str, b: ClaimsBudget, seed: int) -> list[RunSpec]:
    """Every pre-training start but PSSL's for pre-training seed ``seed``."""
    n = b.source_images
    views = {"crop_size": b.image_size, "scale_min": 0.2, "scale_max": 1.0}
    queue = max(32, n // 2)
    return [
        _pretrain(storage, b, "MDP-A+B", seed, "mdp", {"num_train": n}, mdp={"datasets": ["synthetic:A",
                                                                                          "synthetic:B"]}),
        _pretrain(storage, b, "MDP-A", seed, "mdp", {"num_train": n}, mdp={"datasets": ["synthetic:A"]}),
        *(_pretrain(storage, b, start, seed, "pixcon", {"domain": "A", "num_train": n}, views=views,
                    pixcon={"variant": variant, "queue_size": queue, "proj_hidden_dim": 512, "pred_hidden_dim": 512})
          for start, variant in PIXCON_VARIANTS.items()),
        # the same views as PixCon (BYOL's asymmetric ones), so that claim 4 compares the losses alone
        _pretrain(storage, b, "DenseCL", seed, "densecl", {"domain": "A", "num_train": n}, views=views,
                  densecl={"queue_size": queue, "proj_hidden_dim": 512,
                           "dense_warmup_steps": max(1, b.pretrain_epochs * n // 16 // 20)}),
    ]


def pssl_specs(storage: str, b: ClaimsBudget, seed: int, labels: str, images: str) -> list[RunSpec]:
    """PSSL pre-training on the pseudo labels ``labels`` of ``images``, one run per background weight."""
    return [_pretrain(storage, b, pssl_start(w), seed, "pssl", {},
                      pssl={"labels": labels, "images": images, "num_classes": 12, "bg_weight": w})
            for w in b.bg_weights]


def pssl_start(bg_weight: float) -> str:
    return "PSSL" if bg_weight == 0.1 else f"PSSL-bg{bg_weight:g}"


def _evaluate(storage: str, b: ClaimsBudget, start: str, after: str, pretrain_seed: int | None, seed: int,
              evaluation: str, head: str = "linear", study: str = "transfer") -> RunSpec:
    probe = evaluation == "probe"
    size = b.ssa_image_size if study == "ssa" else b.image_size
    p = "" if pretrain_seed is None else f"-p{pretrain_seed}"
    name = f"{evaluation}-{study}-{start}{p}-{head}-s{seed}"
    tags = {"start": start, "study": study, **({} if pretrain_seed is None else {"pretrain_seed": pretrain_seed})}
    return RunSpec(name, "finetune", after, {
        "method": "supervised",
        "run": {"storage": storage, "name": name, "seed": seed, "tags": tags},
        "data": {**_data(b, image_size=size, crop_size=size), "domain": "C",
                 "num_train": b.ssa_target_images if study == "ssa" else b.target_images},
        "model": _model(b, classifier=head, **({"head": "probe", "freeze_backbone": True} if probe else {})),
        "optim": {**SGD, "lr": 0.1 if probe else 0.02},
        "train": {**TRAIN, "epochs": b.probe_epochs if probe else b.finetune_epochs, "batch_size": 8},
    })


def plan_claims(storage: str, b: ClaimsBudget) -> ClaimsPlan:
    """Every run of the claims at budget ``b`` under ``storage``; PSSL's pre-training runs are planned with
    :func:`pssl_specs` once the labels exist (the evaluations name them already)."""
    classifiers = config_from_dict({
        "method": "classifier",
        "run": {"storage": storage, "name": "ensemble", "seed": 0},
        "classifier": {"archs": list(b.ensemble), "num_images": b.classification_images, "num_val": b.val_images,
                       "image_size": b.image_size},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 10},
        "train": {**TRAIN, "cpus_per_worker": 2.0, "epochs": b.classifier_epochs, "batch_size": 32},
    })
    pretrain = [s for p in b.pretrain_seeds for s in pretrain_specs(storage, b, p)]
    starts = [s.name for s in pretrain] + [f"pretrain-{pssl_start(w)}-p{p}" for p in b.pretrain_seeds
                                           for w in b.bg_weights]
    evaluate = []
    for seed in b.finetune_seeds:
        for evaluation in ("finetune", "probe"):
            evaluate.append(_evaluate(storage, b, "scratch", "", None, seed, evaluation))
        for after in starts:
            start, p = after.removeprefix("pretrain-").rsplit("-p", 1)
            sweep_only = start.startswith("PSSL-bg")  # the Table-1 sweep is judged by the probe
            for evaluation in ("probe",) if sweep_only else ("finetune", "probe"):
                evaluate.append(_evaluate(storage, b, start, after, int(p), seed, evaluation))
        for head in ("linear", "ssa"):
            evaluate.append(_evaluate(storage, b, "scratch", "", None, seed, "finetune", head, study="ssa"))
    return ClaimsPlan(b, storage, classifiers, pretrain, evaluate)
