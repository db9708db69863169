"""The papers' claims as paired comparisons of finished runs, each with its effect, interval and verdict.

A run is known by its ``tags.json`` (:meth:`rayseg.config.Config.tags` plus ``run.tags``): ``start`` (the
pre-training, or ``scratch``), ``head``, ``eval`` (``finetune`` / ``probe``), ``seed`` (the fine-tune seed) and,
for pre-trained starts, ``pretrain_seed``. A :class:`Comparison` names the tag values of the better and the worse
side (``{"start": "PSSL"}`` vs ``{"start": "scratch"}``) and a filter both sides share (``{"eval": "probe"}``).

Pairing: a run of the better side is paired with the run of the worse side that agrees with it on every tag both
have, apart from the compared ones (so PSSL pre-training seed p, fine-tune seed s pairs with scratch fine-tune seed
s, and PixCon-SR (p, s) with PixCon-Sim (p, s)). The differences are grouped by the better run's remaining tags
other than ``seed`` (its pre-training seed), and :func:`rayseg.claims.stats.paired_effect` gives the interval.
Effects are in mIoU points (percent).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayseg.claims.stats import Effect, combine_verdicts, paired_effect, t_interval, verdict

__all__ = ["CLAIMS", "Claim", "ClaimResult", "Comparison", "ComparisonResult", "compare", "evaluate_claims",
           "pair_runs", "paired_values", "pseudo_mask_comparison"]

# not what pairs runs: the same for every fine-tune, or (start_config) the identity of each start's own run
IGNORED_TAGS = ("command", "method", "start_config")


@dataclass(frozen=True)
class Comparison:
    label: str
    better: Mapping[str, str]  # tag values of the side claimed to be better
    worse: Mapping[str, str]
    where: Mapping[str, str] = field(default_factory=dict)  # tag values both sides share


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    text: str
    comparisons: tuple[Comparison, ...] = ()
    pseudo_masks: bool = False  # claim 1a: judged on per-image pseudo-mask IoU, not on runs


@dataclass
class ComparisonResult:
    label: str
    effect: Effect | None  # None: no pair of runs (not run at this budget)
    verdict: str  # shown | not shown | contradicted | not run
    better_mean: float = float("nan")
    worse_mean: float = float("nan")

    def as_dict(self) -> dict:
        return {"label": self.label, "verdict": self.verdict, "better_mean": self.better_mean,
                "worse_mean": self.worse_mean, "effect": self.effect.as_dict() if self.effect else None}


@dataclass
class ClaimResult:
    claim: Claim
    comparisons: list[ComparisonResult]
    verdict: str

    def as_dict(self) -> dict:
        return {"key": self.claim.key, "paper": self.claim.paper, "text": self.claim.text, "verdict": self.verdict,
                "comparisons": [c.as_dict() for c in self.comparisons]}


def _vs(better: str, worse: str, **where: str) -> Comparison:
    evaluation = where.get("eval", "finetune")
    return Comparison(f"{better} vs {worse} ({'probe' if evaluation == 'probe' else 'fine-tune'})",
                      {"start": better}, {"start": worse}, {"head": "linear", "eval": evaluation, **where})


PRETRAINED = ("PSSL", "MDP-A+B", "MDP-A", "PixCon-SR", "PixCon-Sim", "PixCon-Coord", "DenseCL")

CLAIMS: tuple[Claim, ...] = (
    Claim("1a", "PSSL", "the explanation ensemble's pseudo masks beat its best single member (per-image IoU with "
          "the true mask)", pseudo_masks=True),
    Claim("1b", "PSSL", "Table 1: the background weight 0.1 beats the extremes 0.001 and 1.0",
          (_vs("PSSL", "PSSL-bg1", eval="probe"), _vs("PSSL", "PSSL-bg0.001", eval="probe"))),
    Claim("2", "PSSL", "PSSL pre-training beats scratch after fine-tuning", (_vs("PSSL", "scratch"),)),
    Claim("3", "MDP", "MDP beats scratch; MDP on A + B beats MDP on A alone",
          (_vs("MDP-A+B", "scratch"), _vs("MDP-A+B", "MDP-A"))),
    Claim("4", "PixCon", "PixCon-SR >= PixCon-Sim >= PixCon-Coord, and PixCon-SR beats DenseCL",
          (_vs("PixCon-SR", "PixCon-Sim"), _vs("PixCon-Sim", "PixCon-Coord"), _vs("PixCon-SR", "DenseCL"))),
    Claim("5", "all", "each pre-training beats scratch under a frozen-backbone linear probe and under fine-tuning",
          tuple(c for start in PRETRAINED for c in (_vs(start, "scratch", eval="probe"), _vs(start, "scratch")))),
    Claim("6", "SSA-Seg", "the SSA head beats the plain head at equal budget",
          (Comparison("SSA head vs linear head (fine-tune)", {"head": "ssa"}, {"head": "linear"},
                      {"eval": "finetune"}),)),
)


def _matches(tags: Mapping, wanted: Mapping) -> bool:
    return all(str(tags.get(k)) == str(v) for k, v in wanted.items())


def paired_values(runs: Sequence[tuple[Mapping, float]], comparison: Comparison
                  ) -> dict[tuple, list[tuple[float, float]]]:
    """``{group: [(better, worse), ...]}`` over the paired runs (``(tags, value)`` each; see the module doc).
    ``ValueError`` when a better run matches several worse runs (the tags do not identify a pair)."""
    where = dict(comparison.where)
    better = [(t, v) for t, v in runs if _matches(t, {**where, **comparison.better})]
    worse = [(t, v) for t, v in runs if _matches(t, {**where, **comparison.worse})]
    compared = set(comparison.better) | set(comparison.worse) | set(IGNORED_TAGS)
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for tags, value in better:
        partners = [(wt, wv) for wt, wv in worse
                    if all(str(tags[k]) == str(wt[k]) for k in set(tags) & set(wt) - compared)]
        if len(partners) > 1:
            raise ValueError(f"{comparison.label}: the run tagged {dict(tags)} pairs with {len(partners)} runs; "
                             "tag them apart (run.tags)")
        if partners:
            group = tuple(sorted((k, str(v)) for k, v in tags.items() if k not in compared | {"seed"}))
            groups[group].append((value, partners[0][1]))
    return dict(groups)


def pair_runs(runs: Sequence[tuple[Mapping, float]], comparison: Comparison) -> dict[tuple, list[float]]:
    """``{group: [better - worse, ...]}`` (:func:`paired_values`)."""
    return {g: [b - w for b, w in pairs] for g, pairs in paired_values(runs, comparison).items()}


def compare(runs: Sequence[tuple[Mapping, float]], comparison: Comparison, confidence: float = 0.95
            ) -> ComparisonResult:
    """The effect of one comparison; the means are over the paired runs (so they differ by the effect)."""
    pairs = paired_values(runs, comparison)
    if not pairs:
        return ComparisonResult(comparison.label, None, "not run")
    effect = paired_effect({g: [b - w for b, w in p] for g, p in pairs.items()}, confidence)
    flat = [pair for p in pairs.values() for pair in p]
    return ComparisonResult(comparison.label, effect, verdict(effect), float(np.mean([b for b, _ in flat])),
                            float(np.mean([w for _, w in flat])))


def pseudo_mask_comparison(members: Sequence[str], images: Mapping[str, Sequence[float]],
                           confidence: float = 0.95) -> ComparisonResult:
    """Claim 1a: ensemble IoU minus the IoU of the best member (highest mean over these very images, which favours
    the member), paired per image, in IoU points (percent)."""
    if not images or not members:
        return ComparisonResult("ensemble vs best member (pseudo-mask IoU)", None, "not run")
    scores = 100 * np.asarray(list(images.values()), np.float64)  # images x (ensemble, members...)
    best = int(np.argmax(scores[:, 1:].mean(axis=0)))
    effect = t_interval(scores[:, 0] - scores[:, 1 + best], confidence)
    return ComparisonResult(f"ensemble vs best member {members[best]} (pseudo-mask IoU, {len(scores)} images)",
                            effect, verdict(effect), float(scores[:, 0].mean()), float(scores[:, 1 + best].mean()))


def evaluate_claims(runs: Sequence[tuple[Mapping, float]], pseudo_masks: tuple[Sequence[str], Mapping] | None = None,
                    claims: Sequence[Claim] = CLAIMS, confidence: float = 0.95) -> list[ClaimResult]:
    """Every claim over finished runs (``(tags, mIoU in [0, 1])``) and, for claim 1a, the labelling's per-image
    IoUs ``(member names, {id: [ensemble, members...]})``. A claim none of whose comparisons has runs is
    ``not run``."""
    runs = [(tags, 100 * value) for tags, value in runs]
    results = []
    for claim in claims:
        if claim.pseudo_masks:
            comparisons = [pseudo_mask_comparison(*(pseudo_masks or ((), {})), confidence)]
        else:
            comparisons = [compare(runs, c, confidence) for c in claim.comparisons]
        ran = [c.verdict for c in comparisons if c.verdict != "not run"]
        overall = "not run" if not ran else combine_verdicts(ran)
        if ran and len(ran) < len(comparisons) and overall == "shown":
            overall = "not shown"  # part of the claim was not run
        results.append(ClaimResult(claim, comparisons, overall))
    return results
