"""MDP: pixel-to-prototype loss, cross-class sparse coding, the two-step prototype average (also on 2 real gloo
workers), label downsampling, and the method (steps, checkpoint state, export)."""

from __future__ import annotations

import io
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import default_collate

from rayseg.config import ConfigError, load_config
from rayseg.data.multi import LabelSpace
from rayseg.methods import METHODS
from rayseg.methods.mdp import (
    MDP,
    CrossClassSparseCoding,
    PixelPrototypeContrast,
    PrototypeMemory,
    downsample_labels,
    top_k_other_prototypes,
    two_step_class_means,
)
from rayseg.models import build_model, load_weights
from rayseg.ignore import IGNORE_INDEX


def _lse(values):
    return math.log(sum(math.exp(v) for v in values))


# ------------------------------------------------------------------------------------------ p2p InfoNCE


def test_p2p_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    target = torch.tensor([0, 2])
    loss = PixelPrototypeContrast(temperature=0.5)(z @ protos.t(), target, torch.ones(3, dtype=torch.bool))
    l1 = -2.0 + _lse([2.0, 0.0, 1.2])          # s_1 = (1, 0, 0.6) / 0.5
    l2 = -1.6 + _lse([0.0, 2.0, 1.6])          # s_2 = (0, 1, 0.8) / 0.5
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_p2p_skips_unseen_prototypes_and_ignored_pixels():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.6, 0.8]])
    available = torch.tensor([True, False, True])
    target = torch.tensor([0, 1, 2, IGNORE_INDEX])       # pixel 2 has an unseen class, pixel 4 is ignored
    loss = PixelPrototypeContrast(temperature=0.5)(z @ protos.t(), target, available)
    l1 = -2.0 + _lse([2.0, 1.2])                # prototype 1 is not in the denominator
    l3 = -2.0 + _lse([1.2, 2.0])
    assert loss.item() == pytest.approx((l1 + l3) / 2, rel=1e-6)


def test_p2p_with_no_valid_pixel_is_zero_with_a_graph():
    z = torch.randn(3, 4, requires_grad=True)
    loss = PixelPrototypeContrast()(z @ torch.randn(4, 2), torch.tensor([0, 1, IGNORE_INDEX]),
                                    torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_csc1_drops_the_top_k_from_the_denominator():
    z = torch.tensor([[1.0, 0.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    sim, target, available = z @ protos.t(), torch.tensor([0]), torch.ones(4, dtype=torch.bool)
    index, valid = top_k_other_prototypes(sim, target, available, k=2)
    assert sorted(index[0].tolist()) == [1, 2] and valid.all()
    excluded = torch.zeros(1, 4, dtype=torch.bool).scatter_(1, index, valid)
    loss = PixelPrototypeContrast(temperature=0.5)(sim, target, available, excluded)
    assert loss.item() == pytest.approx(-2.0 + _lse([2.0, 0.0]), rel=1e-6)   # only p_0 and p_3 remain


# ------------------------------------------------------------------------------------------------- CSC2


def test_csc2_hand_computed():
    z = torch.tensor([[1.0, 0.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    sim, target, available = z @ protos.t(), torch.tensor([0]), torch.ones(4, dtype=torch.bool)
    index, valid = top_k_other_prototypes(sim, target, available, k=2)
    loss = CrossClassSparseCoding(temperature=0.5)(sim, target, available, index, valid)
    s = [2.0, 1.6, 1.2, 0.0]                                   # z·p / τ
    a1, a2 = math.exp(1.6) / (math.exp(1.6) + math.exp(1.2)), math.exp(1.2) / (math.exp(1.6) + math.exp(1.2))
    expected = -(a1 * (s[1] - _lse(s)) + a2 * (s[2] - _lse(s)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_csc2_with_other_datasets_only_uses_other_dataset_classes():
    z = torch.tensor([[1.0, 0.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    sim, target, available = z @ protos.t(), torch.tensor([0]), torch.ones(4, dtype=torch.bool)
    index, valid = top_k_other_prototypes(sim, target, available, k=2, class_dataset=torch.tensor([0, 0, 1, 1]))
    assert sorted(index[0].tolist()) == [2, 3] and valid.all()
    loss = CrossClassSparseCoding(temperature=0.5)(sim, target, available, index, valid)
    s = [2.0, 1.6, 1.2, 0.0]
    a2, a3 = math.exp(1.2) / (math.exp(1.2) + 1.0), 1.0 / (math.exp(1.2) + 1.0)
    assert loss.item() == pytest.approx(-(a2 * (s[2] - _lse(s)) + a3 * (s[3] - _lse(s))), rel=1e-6)


def test_p2p_plus_beta_csc_is_the_soft_target_cross_entropy_with_the_same_gradient():
    torch.manual_seed(0)
    n, k, d, beta, tau = 40, 7, 5, 0.3, 0.2
    protos = F.normalize(torch.randn(k, d), dim=1)
    z = F.normalize(torch.randn(n, d), dim=1).requires_grad_(True)
    target = torch.randint(0, k, (n,))
    available = torch.ones(k, dtype=torch.bool)
    sim = z @ protos.t()
    index, valid = top_k_other_prototypes(sim, target, available, k=3)
    loss = PixelPrototypeContrast(tau)(sim, target, available) + beta * CrossClassSparseCoding(tau)(
        sim, target, available, index, valid)
    (grad,) = torch.autograd.grad(loss, z)

    z2 = z.detach().clone().requires_grad_(True)
    logits = z2 @ protos.t() / tau
    code = torch.softmax(torch.gather(logits.detach(), 1, index), dim=1)          # a_ij, no gradient
    q = torch.zeros(n, k).scatter_(1, index, beta * code / (1 + beta))
    q[torch.arange(n), target] = 1 / (1 + beta)
    soft = (1 + beta) * -(q * F.log_softmax(logits, dim=1)).sum(1).mean()
    (grad2,) = torch.autograd.grad(soft, z2)
    assert loss.item() == pytest.approx(soft.item(), rel=1e-5)
    torch.testing.assert_close(grad, grad2)


def test_csc_top_k_never_contains_the_true_class():
    g = torch.Generator().manual_seed(0)
    n, k = 300, 12
    sim = torch.rand(n, k, generator=g) * 2 - 1
    target = torch.randint(0, k, (n,), generator=g)
    sim[torch.arange(n), target] = 5.0                           # the true class is always the most similar
    target[:10] = IGNORE_INDEX
    available = torch.rand(k, generator=g) > 0.2
    class_dataset = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    for restrict in (None, class_dataset):
        index, valid = top_k_other_prototypes(sim, target, available, k=5, class_dataset=restrict)
        assert index.shape == (n, 5)
        assert not valid[:10].any()                              # ignored pixels have no candidates
        for i in range(10, n):
            chosen = index[i][valid[i]]
            y = int(target[i])
            assert y not in chosen.tolist()
            assert available[chosen].all()
            if restrict is not None:
                assert (restrict[chosen] != restrict[y]).all()
            cand = [j for j in range(k) if j != y and available[j] and (restrict is None or restrict[j] != restrict[y])]
            assert int(valid[i].sum()) == min(5, len(cand))
            best = sorted(cand, key=lambda j: -float(sim[i, j]))[:5]
            assert sorted(chosen.tolist()) == sorted(best)


# --------------------------------------------------------------------------------------- prototype memory


def _hand_batch():
    """Image 0: three class-1 pixels at e1 and one ignored; image 1: one class-1 pixel at e2, three class-0 pixels."""
    e1, e2, v = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]
    z = torch.tensor([[e1, e1, e1, e2], [e2, v, v, v]])
    labels = torch.tensor([[1, 1, 1, IGNORE_INDEX], [1, 0, 0, 0]])
    return z, labels


def test_two_step_average_differs_from_the_pixel_mean_as_specified():
    z, labels = _hand_batch()
    mean_sum, image_count = two_step_class_means(z, labels, num_classes=3)
    assert image_count.tolist() == [1.0, 2.0, 0.0]
    centre = mean_sum[1] / image_count[1]
    torch.testing.assert_close(centre, torch.tensor([0.5, 0.5]))                # (m_01 + m_11) / 2
    pixel_mean = z[labels == 1].mean(0)
    torch.testing.assert_close(pixel_mean, torch.tensor([0.75, 0.25]))          # (3 e1 + e2) / 4
    torch.testing.assert_close(mean_sum[0], torch.tensor([0.6, 0.8]))


def test_memory_initialises_at_first_sight_then_moves_with_momentum():
    memory = PrototypeMemory(num_classes=3, dim=2, momentum=0.9)
    z, labels = _hand_batch()
    present = memory.update(z, labels)
    assert present.tolist() == [True, True, False] and memory.seen.tolist() == [True, True, False]
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(memory.prototypes, torch.tensor([[0.6, 0.8], [r, r], [0.0, 0.0]]))
    memory.update(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1]]))           # only class 1, at e1
    moved = torch.tensor([0.9 * r + 0.1, 0.9 * r])
    torch.testing.assert_close(memory.prototypes[1], moved / moved.norm())
    torch.testing.assert_close(memory.prototypes[0], torch.tensor([0.6, 0.8]))  # absent: unchanged
    assert memory.seen.tolist() == [True, True, False]
    assert set(memory.state_dict()) == {"prototypes", "seen"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_batches(rank: int, steps: int, k: int = 6, d: int = 4):
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for step in range(steps):
        z = F.normalize(torch.randn(3, 10, d, generator=g), dim=2)
        labels = torch.randint(0, k - 1, (3, 10), generator=g)
        labels[0, :2 + rank] = IGNORE_INDEX
        if rank == 1 and step == 2:
            labels[1, :3] = k - 1                                   # class k-1: one image of one worker only
        out.append((z, labels))
    return out


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        memory = PrototypeMemory(num_classes=6, dim=4, momentum=0.8)
        for z, labels in _rank_batches(rank, steps=4):
            memory.update(z, labels)
        # the whole method: same init on both workers, different data, two training steps (no optimizer)
        torch.manual_seed(0)
        method = _tiny_method(["synthetic:A", "synthetic:B"], mix=True)
        method.train()
        ddp = torch.nn.parallel.DistributedDataParallel(method)  # as the engine wraps it (all parameters used)
        items = [method._test_set[i] for i in range(4 * rank, 4 * rank + 4)]
        torch.manual_seed(rank)
        for _ in range(3):
            sum(ddp(default_collate(items)).values()).backward()
        torch.save({"prototypes": memory.prototypes, "seen": memory.seen,
                    "method_prototypes": method.memory.prototypes, "method_seen": method.memory.seen},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_prototypes_identical_on_two_gloo_workers(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["prototypes"], r1["prototypes"]) and torch.equal(r0["seen"], r1["seen"])
    assert r0["seen"].all()                                     # class 5 was seen on worker 1 only
    assert torch.equal(r0["method_prototypes"], r1["method_prototypes"])
    assert torch.equal(r0["method_seen"], r1["method_seen"]) and r0["method_seen"].any()
    # all-gathering and averaging over images equals one process seeing both workers' images
    single = PrototypeMemory(num_classes=6, dim=4, momentum=0.8)
    for (z0, y0), (z1, y1) in zip(_rank_batches(0, 4), _rank_batches(1, 4)):
        single.update(torch.cat([z0, z1]), torch.cat([y0, y1]))
    torch.testing.assert_close(r0["prototypes"], single.prototypes)


# --------------------------------------------------------------------------------------------- the method


def test_downsample_labels_samples_cell_centres():
    masks = torch.arange(64).view(1, 8, 8)
    small = downsample_labels(masks, (2, 2))
    assert small.tolist() == [[[2 * 8 + 2, 2 * 8 + 6], [6 * 8 + 2, 6 * 8 + 6]]]
    assert small.dtype == torch.int64
    labels = torch.tensor([[[IGNORE_INDEX, 3], [3, IGNORE_INDEX]]])
    assert torch.equal(downsample_labels(labels, (2, 2)), labels)
    big = torch.full((1, 4, 4), 300)
    big[0, 2:, 2:] = -1
    assert downsample_labels(big, (2, 2)).tolist() == [[[300, 300], [300, -1]]]


def _tiny_config(datasets, *extra):
    return load_config(None, ["method=mdp", f"mdp.datasets=[{', '.join(datasets)}]", "data.num_train=4",
                              "data.image_size=32", "data.crop_size=32", "model.backbone=resnet18",
                              "mdp.proj_hidden=16", "mdp.proj_dim=8", *extra])


def _tiny_method(datasets, mix=False, *extra):
    overrides = list(extra) if mix else ["mdp.region_mix_fraction=0", "mdp.class_mix_fraction=0", *extra]
    cfg = _tiny_config(datasets, *overrides)
    train_set = MDP.train_dataset(cfg)
    method = MDP.from_config(cfg, train_set)
    method._test_set = train_set
    return method


def test_method_registered_and_configured():
    assert METHODS["mdp"] is MDP and METHODS["mdp"] is MDP
    method = _tiny_method(["synthetic:A", "synthetic:B"], True, "mdp.top_k=3", "mdp.beta=0.2")
    assert method.memory.prototypes.shape == (14, 8) and method.top_k == 3 and method.beta == 0.2
    assert method.mixer is not None and method.mixer.region_fraction == pytest.approx(1 / 3)
    assert method.backbone.output_stride == 8 and method.head[0].in_channels == 512
    assert method.class_dataset.tolist() == [0] * 7 + [1] * 7


def test_first_step_initialises_then_losses_use_the_previous_prototypes():
    torch.manual_seed(0)
    method = _tiny_method(["synthetic:A", "synthetic:B"])
    method.train()
    batch = default_collate([method._test_set[i] for i in (0, 1, 4, 5)])
    losses = method(batch)
    assert set(losses) == {"p2p", "csc"}
    assert losses["p2p"].item() == 0.0 and losses["csc"].item() == 0.0    # no prototype existed before the step
    labels = downsample_labels(batch["mask"], (4, 4))
    present = torch.zeros(14, dtype=torch.bool)
    present[labels[labels != IGNORE_INDEX].unique()] = True
    assert torch.equal(method.memory.seen, present)

    before = method.memory.prototypes.clone()
    seen_before = method.memory.seen.clone()
    losses = method(batch)
    assert losses["p2p"].item() > 0 and losses["csc"].item() > 0
    assert not torch.equal(before[seen_before], method.memory.prototypes[seen_before])  # updated after the loss
    sum(losses.values()).backward()
    assert method.head[0].weight.grad.abs().sum() > 0 and method.backbone.conv1.weight.grad.abs().sum() > 0


def test_loss_value_matches_the_loss_classes_on_the_old_prototypes():
    torch.manual_seed(0)
    method = _tiny_method(["synthetic:A", "synthetic:B"])
    method.eval()                                         # eval: deterministic BN, no update
    batch = default_collate([method._test_set[i] for i in (0, 4)])
    g = torch.Generator().manual_seed(1)
    method.memory.prototypes.copy_(F.normalize(torch.randn(14, 8, generator=g), dim=1))
    method.memory.seen.fill_(True)
    method.memory.seen[3] = False
    before = method.memory.prototypes.clone()
    losses = method(batch)
    assert torch.equal(method.memory.prototypes, before)  # no update outside training
    with torch.no_grad():
        z = method.embed(batch["image"]).flatten(2).transpose(1, 2).reshape(-1, 8)
        y = downsample_labels(batch["mask"], (4, 4)).reshape(-1)
        sim = z @ before.t()
        available = method.memory.seen
        index, valid = top_k_other_prototypes(sim, y, available, 5, method.class_dataset)
        p2p = PixelPrototypeContrast(0.1)(sim, y, available)
        csc = CrossClassSparseCoding(0.1)(sim, y, available, index, valid)
    assert losses["p2p"].item() == pytest.approx(p2p.item(), rel=1e-5)
    assert losses["csc"].item() == pytest.approx(0.1 * csc.item(), rel=1e-5)


@pytest.mark.parametrize("variant", ["none", "csc1"])
def test_csc_variants_return_only_p2p(variant):
    method = _tiny_method(["synthetic:A"], False, f"mdp.csc={variant}")
    method.train()
    batch = default_collate([method._test_set[i] for i in range(2)])
    method(batch)
    assert set(method(batch)) == {"p2p"}


def test_checkpoint_state_carries_prototypes_and_label_table():
    torch.manual_seed(0)
    method = _tiny_method(["synthetic:A", "synthetic:B"])
    method.train()
    method(default_collate([method._test_set[i] for i in (0, 4)]))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["_extra_state"]["label_space"]["datasets"][1]["offset"] == 7
    fresh = _tiny_method(["synthetic:A", "synthetic:B"])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory.prototypes, method.memory.prototypes)
    assert torch.equal(fresh.memory.seen, method.memory.seen) and fresh.memory.seen.any()
    other = _tiny_method(["synthetic:A", "synthetic:C"])
    with pytest.raises(Exception, match="label table"):
        other.load_state_dict(state)


def test_export_is_a_backbone_that_finetuning_loads(tmp_path):
    method = _tiny_method(["synthetic:A", "synthetic:B"], False, "mdp.export_head=true")
    paths = method.export(tmp_path, {"method": "mdp", **method.export_meta()})
    assert set(paths) == {"backbone", "projection_head"}
    target = build_model("resnet18", "fcn", num_classes=9, output_stride=16, channels=64)
    report = load_weights(target, paths["backbone"])
    assert report.source == "rayseg backbone" and report.loaded > 0
    torch.testing.assert_close(target.backbone.conv1.weight, method.backbone.conv1.weight)
    assert report.meta["label_space"]["num_classes"] == 14
    assert report.meta["class_names"][7] == "synthetic_B/background"
    head = torch.load(paths["projection_head"], weights_only=True)
    assert head["prototypes"].shape == (14, 8) and head["label_space"]["datasets"][0]["name"] == "synthetic_A"


@pytest.mark.parametrize("override, key", [("mdp.temperature=0", "mdp.temperature"),
                                           ("mdp.momentum=1.0", "mdp.momentum"),
                                           ("mdp.top_k=0", "mdp.top_k"),
                                           ("mdp.region_mix_fraction=0.8", "mdp.region_mix_fraction"),
                                           ("mdp.lambda_max=-0.1", "mdp.lambda_max: must be >= 0"),
                                           ("mdp.csc=csc3", "mdp.csc")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(None, ["method=mdp", override])


def test_missing_voc_folder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"mdp.datasets\[1\]: folder not found"):  # when the config is read
        load_config(None, ["method=mdp", "mdp.datasets=[synthetic:A, voc:/no/such/folder]"])


def test_label_space_of_the_method_matches_the_dataset():
    method = _tiny_method(["synthetic:B", "synthetic:C"])
    assert method.label_space == LabelSpace.build(["synthetic_B", "synthetic_C"],
                                                  [method._test_set.datasets[0].class_names,
                                                   method._test_set.datasets[1].class_names])
