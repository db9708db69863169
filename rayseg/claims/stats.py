"""Confidence intervals of paired differences and the verdict they support.

A claim "X beats Y" is judged on paired differences ``d = metric(X) - metric(Y)``, where a pair shares everything
but the compared factor (the fine-tune seed, so the same data order, augmentation and new-layer initialisation;
the same image for pseudo-mask IoU):

* one level of replication (fine-tune seeds, images): the Student-t interval
  ``mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n)``;
* two levels (pre-training seeds p, each fine-tuned with seeds s): a hierarchical percentile bootstrap, which
  resamples pre-training seeds with replacement, then fine-tune seeds within each chosen pre-training seed, and
  takes the mean of the resampled ``d_{p,s}``. The interval therefore carries the variation between pre-training
  runs, not only between fine-tunes (with two pre-training seeds it is estimated from two values: wide, and still
  somewhat optimistic).

Verdict at confidence c: ``shown`` when the interval lies above 0, ``contradicted`` when it lies below 0,
``not shown`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Effect", "VERDICTS", "paired_effect", "hierarchical_bootstrap", "t_interval", "verdict", "combine_verdicts"]

VERDICTS = ("shown", "not shown", "contradicted")


@dataclass(frozen=True)
class Effect:
    """Mean paired difference with its confidence interval [low, high]; ``n`` pairs over ``groups`` groups."""

    mean: float
    low: float
    high: float
    n: int
    groups: int
    method: str  # "t" | "hierarchical bootstrap"
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def t_interval(diffs: Sequence[float], confidence: float = 0.95) -> Effect:
    """Student-t interval of the mean of ``diffs`` (n >= 2; n = 1 gives an infinite interval)."""
    from scipy.stats import t

    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        raise ValueError("no paired differences")
    mean = float(d.mean())
    if d.size == 1:
        return Effect(mean, -math.inf, math.inf, 1, 1, "t", confidence)
    half = float(t.ppf((1 + confidence) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return Effect(mean, mean - half, mean + half, int(d.size), 1, "t", confidence)


def hierarchical_bootstrap(groups: Mapping[object, Sequence[float]], confidence: float = 0.95,
                           resamples: int = 20000, seed: int = 0) -> Effect:
    """Percentile interval of the mean of paired differences replicated at two levels: ``groups`` maps a
    pre-training seed to the differences of its fine-tune seeds. Each resample draws as many groups as there are,
    with replacement, and within each drawn group as many values as it has, with replacement."""
    values = [np.asarray(v, np.float64) for v in groups.values() if len(v)]
    if not values:
        raise ValueError("no paired differences")
    rng = np.random.default_rng(seed)
    g = len(values)
    picks = rng.integers(g, size=(resamples, g))
    means = np.zeros(resamples)
    counts = np.zeros(resamples)
    for slot in range(g):  # slot j of every resample holds group picks[:, j], itself resampled
        for k, v in enumerate(values):
            rows = np.nonzero(picks[:, slot] == k)[0]
            means[rows] += v[rng.integers(v.size, size=(rows.size, v.size))].sum(axis=1)
            counts[rows] += v.size
    boot = means / counts
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    mean = float(np.concatenate(values).mean())
    return Effect(mean, float(low), float(high), int(sum(v.size for v in values)), g, "hierarchical bootstrap",
                  confidence)


def paired_effect(groups: Mapping[object, Sequence[float]], confidence: float = 0.95) -> Effect:
    """The t interval for one group of differences, the hierarchical bootstrap for several."""
    filled = {k: v for k, v in groups.items() if len(v)}
    if len(filled) == 1:
        return t_interval(next(iter(filled.values())), confidence)
    return hierarchical_bootstrap(filled, confidence)


def verdict(effect: Effect) -> str:
    """``shown`` (interval above 0), ``contradicted`` (below 0) or ``not shown``."""
    if effect.low > 0:
        return "shown"
    if effect.high < 0:
        return "contradicted"
    return "not shown"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons (an ordering A >= B >= C): contradicted if any comparison is, shown if
    all are, otherwise not shown."""
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    if verdicts and all(v == "shown" for v in verdicts):
        return "shown"
    return "not shown"
