"""Statistics and pairing of `rayseg claims` on hand-computed cases (Ray-free, no training)."""

import math

import pytest

from rayseg.claims.evaluate import CLAIMS, Comparison, evaluate_claims, pair_runs, pseudo_mask_comparison
from rayseg.claims.stats import combine_verdicts, hierarchical_bootstrap, paired_effect, t_interval, verdict


def test_t_interval_matches_the_textbook_case():
    # mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445
    e = t_interval([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert e.mean == 3 and e.n == 5 and e.method == "t"
    assert e.low == pytest.approx(3 - half, abs=1e-5) and e.high == pytest.approx(3 + half, abs=1e-5)
    # 90%: t_{0.95, 4} = 2.131847
    e90 = t_interval([1, 2, 3, 4, 5], confidence=0.90)
    assert e90.high - e90.mean == pytest.approx(2.131847 * math.sqrt(0.5), abs=1e-5)


def test_one_difference_has_no_interval_and_no_verdict():
    e = t_interval([2.0])
    assert math.isinf(e.low) and math.isinf(e.high) and verdict(e) == "not shown"


def test_hierarchical_bootstrap_carries_the_spread_between_pretraining_seeds():
    tight = {0: [1.0, 1.1, 0.9], 1: [1.0, 0.95, 1.05]}
    apart = {0: [1.0, 1.1, 0.9], 1: [3.0, 3.1, 2.9]}
    e_tight, e_apart = hierarchical_bootstrap(tight), hierarchical_bootstrap(apart)
    assert e_tight.mean == pytest.approx(1.0) and e_apart.mean == pytest.approx(2.0)
    assert e_tight.n == 6 and e_tight.groups == 2
    assert e_tight.high - e_tight.low < 0.2  # two agreeing pre-training seeds
    # two pre-training seeds 2 points apart: the interval spans both (a group drawn twice is possible)
    assert e_apart.low < 1.1 and e_apart.high > 2.9
    assert hierarchical_bootstrap(apart, seed=1).low == pytest.approx(e_apart.low, abs=0.05)  # stable


def test_paired_effect_uses_t_for_one_group_and_the_bootstrap_for_several():
    assert paired_effect({"p0": [1, 2, 3]}).method == "t"
    assert paired_effect({"p0": [1, 2, 3], "p1": [2, 3, 4]}).method == "hierarchical bootstrap"


def test_verdicts():
    assert verdict(t_interval([1.0, 1.2, 0.9, 1.1])) == "shown"
    assert verdict(t_interval([-1.0, -1.2, -0.9, -1.1])) == "contradicted"
    assert verdict(t_interval([1.0, -1.0, 0.5, -0.4])) == "not shown"
    assert combine_verdicts(["shown", "shown"]) == "shown"
    assert combine_verdicts(["shown", "not shown"]) == "not shown"
    assert combine_verdicts(["shown", "contradicted"]) == "contradicted"


def _run(start, seed, miou, **tags):
    return ({"command": "finetune", "method": "supervised", "head": "linear", "eval": "finetune", "start": start,
             "seed": seed, **tags}, miou)


def test_pairs_share_the_finetune_seed_and_group_by_pretraining_seed():
    runs = [_run("scratch", s, 0.10 + 0.01 * s) for s in range(3)]
    runs += [_run("PSSL", s, 0.15 + 0.01 * s + 0.02 * p, pretrain_seed=p) for p in (0, 1) for s in range(3)]
    groups = pair_runs(runs, Comparison("x", {"start": "PSSL"}, {"start": "scratch"}, {"eval": "finetune"}))
    assert sorted(groups) == [(("eval", "finetune"), ("head", "linear"), ("pretrain_seed", "0")),
                              (("eval", "finetune"), ("head", "linear"), ("pretrain_seed", "1"))]
    assert [pytest.approx(d) for d in groups[sorted(groups)[0]]] == [0.05, 0.05, 0.05]
    assert [pytest.approx(d) for d in groups[sorted(groups)[1]]] == [0.07, 0.07, 0.07]
    # a probe run is not paired with a fine-tune
    runs.append(_run("scratch", 0, 0.5, eval="probe"))
    assert len(pair_runs(runs, Comparison("x", {"start": "PSSL"}, {"start": "scratch"}, {"eval": "finetune"}))) == 2


def test_ambiguous_pairs_are_an_error():
    runs = [_run("scratch", 0, 0.1), _run("scratch", 0, 0.2, study="other"), _run("PSSL", 0, 0.3)]
    with pytest.raises(ValueError, match="pairs with 2 runs"):
        pair_runs(runs, Comparison("x", {"start": "PSSL"}, {"start": "scratch"}))


def test_claims_over_runs_and_pseudo_masks():
    runs = [_run("scratch", s, 0.10 + 0.003 * (s % 2)) for s in range(5)]
    runs += [_run("MDP-A+B", s, 0.20 + 0.004 * s, pretrain_seed=0) for s in range(5)]
    runs += [_run("MDP-A", s, 0.25 + 0.004 * s, pretrain_seed=0) for s in range(5)]
    members = ["resnet18", "resnet34"]
    images = {f"i{k}": [0.5 + 0.01 * (k % 3), 0.45, 0.30] for k in range(20)}
    results = {r.claim.key: r for r in evaluate_claims(runs, (members, images))}
    assert set(results) == {c.key for c in CLAIMS}
    first, second = results["3"].comparisons
    assert first.verdict == "shown" and first.effect.mean == pytest.approx(10.68)
    assert second.verdict == "contradicted" and second.effect.mean == pytest.approx(-5.0)
    assert first.better_mean - first.worse_mean == pytest.approx(first.effect.mean)  # means over the pairs
    assert results["3"].verdict == "contradicted"
    assert results["2"].verdict == "not run" and results["6"].verdict == "not run"
    a = results["1a"].comparisons[0]
    assert "resnet18" in a.label and a.effect.mean == pytest.approx(100 * (0.51 - 0.45), abs=0.05)
    assert a.verdict == "shown" and results["1a"].verdict == "shown"
    # claim 5 ran in part (MDP-A+B, MDP-A fine-tunes): shown parts do not make the claim shown
    assert results["5"].verdict == "not shown"


def test_best_member_is_the_one_with_the_highest_mean():
    images = {"a": [0.6, 0.2, 0.7], "b": [0.6, 0.3, 0.5]}
    c = pseudo_mask_comparison(["m1", "m2"], images)
    assert "m2" in c.label and c.effect.mean == pytest.approx(0.0) and c.verdict == "not shown"
