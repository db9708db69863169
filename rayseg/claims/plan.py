"""The experiments behind the claims (:mod:`rayseg.claims.evaluate`) on the embedded synthetic benchmark.

Every run is a plain :class:`~rayseg.config.Config`: the same resnet18 + FCN network at ``image_size`` and
``output_stride``; the pre-training runs see ``source_images`` images for ``pretrain_epochs`` epochs (MDP on A + B
sees ``source_images`` of A plus as many of B: B is added to the full A set); every start is evaluated on the target
domain C by fine-tuning and by a frozen-backbone linear probe, with each fine-tune seed, after each pre-training
seed. Runs are tagged (``run.tags``: start, pretrain_seed, study) so that :func:`evaluate_claims` pairs them.

Each start gets its own learning rate, for fine-tuning and for probing (one lr for every start favours some starts:
a self-supervised start wants a larger one than scratch). It is searched over a grid (``finetune_lrs``,
``probe_lrs``) on the target's training images alone, ``holdout`` of them held out to score each lr on, and then
every seed trains on all of them with the lr that scored best (:func:`choose_lr`).

The SSA study (claim 6) fine-tunes from scratch at ``ssa_image_size`` so that the feature maps (``ssa_image_size /
output_stride``) are large enough for the official 6-pixel boundary border of the response distillation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayseg.config import Config, config_from_dict

__all__ = ["ClaimsBudget", "ClaimsPlan", "RunSpec", "BUDGETS", "choose_lr", "plan_claims", "pretrain_specs",
           "pssl_specs"]


EVAL_BATCH = 8  # the batch of every fine-tune and probe


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
    finetune_lrs: tuple[float, ...]  # the learning rates each start's fine-tune is searched over
    probe_lrs: tuple[float, ...]
    holdout: int              # target images the lr search holds out of target_images to score each lr on
    classification_images: int  # PSSL: the classification set the ensemble is trained on and then labels
    classifier_epochs: int
    smoothgrad_samples: int
    ensemble: tuple[str, ...]
    pretrain_seeds: tuple[int, ...]
    finetune_seeds: tuple[int, ...]
    bg_weights: tuple[float, ...]  # PSSL background weights of the Table-1 sweep (0.1 is the "PSSL" start)
    ssa_image_size: int
    ssa_target_images: int
    ssa_epochs: int
    ssa_lr: float             # the SSA study's one recipe for both heads (equal budget), as the paper compares

    def __post_init__(self):
        if self.target_images - self.holdout < EVAL_BATCH:
            raise ValueError(f"holdout {self.holdout} of {self.target_images} target images leaves less than one "
                             f"batch ({EVAL_BATCH}) for the lr search to train on")


BUDGETS: dict[str, ClaimsBudget] = {
    # the recorded run: at most 90 minutes on 2 cores (bench/RESULTS.md says how it was chosen)
    "full": ClaimsBudget(image_size=64, output_stride=8, source_images=384, pretrain_epochs=6, target_images=48,
                         val_images=128, finetune_epochs=15, probe_epochs=5, finetune_lrs=(0.01, 0.03, 0.1, 0.3),
                         probe_lrs=(0.03, 0.1, 0.3), holdout=16, classification_images=256, classifier_epochs=5,
                         smoothgrad_samples=8, ensemble=("resnet18", "resnet34", "resnet50"), pretrain_seeds=(0, 1),
                         finetune_seeds=(0, 1, 2, 3, 4), bg_weights=(0.001, 0.01, 0.1, 1.0), ssa_image_size=128,
                         ssa_target_images=96, ssa_epochs=5, ssa_lr=0.02),
    # every kind of run once, at toy size (the tests)
    "toy": ClaimsBudget(image_size=32, output_stride=16, source_images=16, pretrain_epochs=1, target_images=12,
                        val_images=8, finetune_epochs=1, probe_epochs=1, finetune_lrs=(0.02, 0.1), probe_lrs=(0.1,),
                        holdout=4, classification_images=32, classifier_epochs=1, smoothgrad_samples=2,
                        ensemble=("resnet18", "resnet34"), pretrain_seeds=(0,), finetune_seeds=(0, 1),
                        bg_weights=(0.1, 1.0), ssa_image_size=32, ssa_target_images=8, ssa_epochs=1, ssa_lr=0.02),
}

PIXCON_VARIANTS = {"PixCon-SR": "sr", "PixCon-Sim": "sim", "PixCon-Coord": "coord"}
SGD = {"name": "sgd", "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 10}
TRAIN = {"num_workers": 0, "cpus_per_worker": 1.0, "log_every": 50, "keep_checkpoints": 1}


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``build(init, start_config, lr)`` gives its config once the weights it starts from
    (``after``'s export, or none) exist and, for a run with ``search``, once the learning-rate search runs it takes
    its lr from have finished; ``command`` is pretrain or finetune."""

    name: str
    command: str
    after: str  # the name of the pre-training run it starts from; "" for none
    settings: dict  # the config as a dict, without model.init_weights (and without optim.lr if it has a search)
    search: tuple[str, ...] = ()  # the lr search runs (:func:`choose_lr`) that give optim.lr

    def build(self, init: str = "", start_config: str = "", lr: float | None = None) -> Config:
        """The config, starting from ``init`` with learning rate ``lr`` (required with a search);
        ``start_config`` (the fingerprint of the pre-training run that wrote ``init``) becomes the tag
        ``start_config``, so that a re-planned pre-training changes the configs of the runs that start from it."""
        if self.search and lr is None:
            raise ValueError(f"{self.name}: its lr comes from its search runs; pass lr")
        settings = dict(self.settings)
        settings["model"] = {**settings["model"], "init_weights": init}
        if lr is not None:
            settings["optim"] = {**settings["optim"], "lr": lr}
        if start_config:
            run = settings["run"]
            settings["run"] = {**run, "tags": {**run.get("tags", {}), "start_config": start_config}}
        return config_from_dict(settings)


def choose_lr(searched: Sequence[dict]) -> float:
    """The ``lr`` of the search run (``{"lr", "miou"}``) with the best held-out mIoU; the smaller lr on a tie."""
    return max(searched, key=lambda r: (r["miou"], -r["lr"]))["lr"]


@dataclass(frozen=True)
class ClaimsPlan:
    budget: ClaimsBudget
    storage: str
    classifiers: Config       # the PSSL ensemble members
    pretrain: list[RunSpec]   # PSSL runs start only once the labels exist
    evaluate: list[RunSpec]   # the judged fine-tunes and probes
    searches: dict[str, list[RunSpec]]  # "<start> <finetune|probe>": the lr search runs of that start's evaluations

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
              evaluation: str, head: str = "linear", study: str = "transfer", search: tuple[str, ...] = ()) -> RunSpec:
    """A judged fine-tune or probe of ``start``; its lr comes from the runs ``search``, except in the SSA study
    (``ssa_lr`` for both heads)."""
    probe = evaluation == "probe"
    ssa = study == "ssa"
    size = b.ssa_image_size if ssa else b.image_size
    p = "" if pretrain_seed is None else f"-p{pretrain_seed}"
    name = f"{evaluation}-{study}-{start}{p}-{head}-s{seed}"
    tags = {"start": start, "study": study, **({} if pretrain_seed is None else {"pretrain_seed": pretrain_seed})}
    epochs = b.ssa_epochs if ssa else b.probe_epochs if probe else b.finetune_epochs
    return RunSpec(name, "finetune", after, {
        "method": "supervised",
        "run": {"storage": storage, "name": name, "seed": seed, "tags": tags},
        "data": {**_data(b, image_size=size, crop_size=size), "domain": "C",
                 "num_train": b.ssa_target_images if ssa else b.target_images},
        "model": _model(b, classifier=head, **({"head": "probe", "freeze_backbone": True} if probe else {})),
        "optim": {**SGD, **({"lr": b.ssa_lr} if ssa else {})},
        "train": {**TRAIN, "epochs": epochs, "batch_size": EVAL_BATCH},
    }, search)


def _lr_search(storage: str, b: ClaimsBudget, start: str, after: str, pretrain_seed: int | None,
               evaluation: str) -> list[RunSpec]:
    """The lr search of ``start``'s ``evaluation``s: one run per lr of the grid, with the first fine-tune seed after
    the first pre-training seed, trained on the target's training images less ``holdout`` of them and scored on
    those (``data.holdout``): the judged val images are never seen. Epochs grow so that the steps stay the same."""
    base = _evaluate(storage, b, start, after, pretrain_seed, b.finetune_seeds[0], evaluation)
    epochs = round(base.settings["train"]["epochs"] * b.target_images / (b.target_images - b.holdout))
    specs = []
    for lr in b.probe_lrs if evaluation == "probe" else b.finetune_lrs:
        name = f"lrsearch-{lr:g}-{base.name}"
        st = base.settings
        specs.append(RunSpec(name, "finetune", after, {
            **st, "run": {**st["run"], "name": name}, "data": {**st["data"], "holdout": b.holdout},
            "optim": {**st["optim"], "lr": lr}, "train": {**st["train"], "epochs": epochs}}))
    return specs


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
    searches: dict[str, list[RunSpec]] = {}
    evaluate = []
    for after in ["", *starts]:
        start, p = after.removeprefix("pretrain-").rsplit("-p", 1) if after else ("scratch", None)
        pretrain_seed = None if p is None else int(p)
        sweep_only = start.startswith("PSSL-bg")  # the Table-1 sweep is judged by the probe
        for evaluation in ("probe",) if sweep_only else ("finetune", "probe"):
            key = f"{start} {evaluation}"
            if key not in searches:  # searched after the first pre-training seed, used after every one
                searches[key] = _lr_search(storage, b, start, after, pretrain_seed, evaluation)
            search = tuple(s.name for s in searches[key])
            evaluate += [_evaluate(storage, b, start, after, pretrain_seed, seed, evaluation, search=search)
                         for seed in b.finetune_seeds]
    evaluate += [_evaluate(storage, b, "scratch", "", None, seed, "finetune", head, study="ssa")
                 for head in ("linear", "ssa") for seed in b.finetune_seeds]
    return ClaimsPlan(b, storage, classifiers, pretrain, evaluate, searches)
