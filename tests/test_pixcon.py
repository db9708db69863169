"""PixCon (methods.md §4): losses and weights on hand cases, matching, momentum target, queues, DDP behaviour."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rayseg.config import OptimSection
from rayseg.data.views import box_cell_mask, overlap_box
from rayseg.engine.optim import parameter_groups
from rayseg.methods.contrastive import (
    ContrastiveEncoder,
    DenseInfoNCE,
    GlobalInfoNCE,
    similarity_match,
)
from rayseg.methods.momentum import KeyQueue, ema_update_, make_target, momentum_at
from rayseg.methods.pixcon import PixCon, SemanticReweighting, coordinate_match
from rayseg.models import build_backbone, build_model, load_weights

# output stride 8 on 32 px views: a 4 x 4 feature grid at a fraction of the cost of 64 px views
ARCH = {"backbone": "resnet18", "head": "fcn", "output_stride": 8, "channels": 16, "dropout": 0.1}


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared: one intra-op thread is faster than oversubscribed two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_pixcon(variant: str = "sr", queue_size: int = 32, **kw) -> PixCon:
    encoder = ContrastiveEncoder(build_backbone("resnet18", 8), proj_hidden_dim=32, proj_dim=8)
    return PixCon(encoder, ARCH, variant=variant, queue_size=queue_size, pred_hidden_dim=32, **kw)


def tiny_batch(b: int = 4, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, size, size, generator=g), "view2": torch.randn(b, 3, size, size, generator=g),
            "box1": torch.tensor([[0.25, 0.0, 1.0, 0.75]] * b), "box2": torch.tensor([[0.75, 0.25, 0.0, 1.0]] * b)}


# --------------------------------------------------------------------------------------------- momentum


def test_momentum_schedule_rises_from_base_to_one_by_cosine():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)                      # (1 + m0) / 2
    assert momentum_at(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(150, 100, 0.99) == pytest.approx(1.0)                        # clamped after the end
    assert momentum_at(37, 100, 0.999, "constant") == 0.999


def test_ema_update_is_m_old_plus_one_minus_m_online():
    online = torch.nn.Linear(3, 2)
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    old = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    ema_update_(target, online, 0.9)
    for p_t, p_old, p_o in zip(target.parameters(), old, online.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p_old + 0.1 * p_o)


# --------------------------------------------------------------------------------------------- queue


def test_key_queue_is_fifo_with_wrap_around():
    queue = KeyQueue(5, 2)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(5))  # starts as random unit vectors
    rows = lambda *v: torch.tensor([[x, 0.0] for x in v])
    queue.enqueue(rows(1, 2, 3))
    assert int(queue.ptr) == 3 and torch.equal(queue.keys[:3], rows(1, 2, 3))
    queue.enqueue(rows(4, 5, 6))  # 6 overwrites the oldest entry (1)
    assert int(queue.ptr) == 1 and torch.equal(queue.keys, rows(6, 2, 3, 4, 5))
    queue.enqueue(rows(7, 8, 9, 10, 11, 12, 13))  # more than the queue holds: the newest 5 survive, in order
    assert int(queue.ptr) == (1 + 7) % 5 and torch.equal(queue.keys, rows(11, 12, 13, 9, 10))
    assert set(queue.state_dict()) == {"keys", "ptr"}  # travels in checkpoints


def test_queue_snapshot_is_unaffected_by_later_enqueues():
    queue = KeyQueue(4, 2)
    snap = queue.snapshot()
    queue.enqueue(torch.ones(2, 2))
    assert not torch.equal(snap, queue.keys) and torch.equal(snap[2:], queue.keys[2:])


# --------------------------------------------------------------------------------------------- losses


def test_global_infonce_on_a_hand_case():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    # image 1: logits [1, 0, -1] / tau; image 2: [0.8, 1, 0] / tau
    l1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    l2 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(2) + math.exp(0)))
    assert GlobalInfoNCE(tau)(q, k, queue).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def _dense_hand_case():
    # one image, N = 2 query cells, D = 2
    u = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    v = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    match = torch.tensor([[1, 1]])             # both queries matched to key cell 1 = (1, 0)
    queue = torch.tensor([[0.6, 0.8]])
    tau = 0.2
    # query 0: positive u0·v1 = 1, negative 0.6; query 1: positive u1·v1 = 0, negative 0.8
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.6 / tau)))
    l1 = -math.log(math.exp(0) / (math.exp(0) + math.exp(0.8 / tau)))
    return u, v, match, queue, tau, l0, l1


def test_dense_infonce_on_a_hand_case_with_weights_normalised_over_the_batch():
    u, v, match, queue, tau, l0, l1 = _dense_hand_case()
    loss = DenseInfoNCE(tau)
    torch.testing.assert_close(loss.per_query(u, v, match, queue), torch.tensor([[l0, l1]]))
    assert loss(u, v, match, queue).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    w = torch.tensor([[1.0, 0.25]])
    assert loss(u, v, match, queue, w).item() == pytest.approx((l0 + 0.25 * l1) / 1.25, rel=1e-6)
    # normalisation over the whole batch, not per image: a second image with weight 0 changes nothing,
    u2, v2, m2 = torch.cat([u, u.flip(1)]), torch.cat([v, v]), torch.cat([match, match])
    w2 = torch.tensor([[1.0, 0.25], [0.0, 0.0]])
    assert loss(u2, v2, m2, queue, w2).item() == pytest.approx((l0 + 0.25 * l1) / 1.25, rel=1e-6)
    # ... and a second image with weights (0.5, 0.5) adds its terms to one common denominator
    w3 = torch.tensor([[1.0, 0.25], [0.5, 0.5]])
    expected = (l0 + 0.25 * l1 + 0.5 * l1 + 0.5 * l0) / 2.25  # image 2's queries are image 1's swapped
    assert loss(u2, v2, m2, queue, w3).item() == pytest.approx(expected, rel=1e-6)


def test_dense_infonce_with_all_weights_zero_is_zero_not_nan():
    u, v, match, queue, tau, *_ = _dense_hand_case()
    u = u.clone().requires_grad_(True)
    value = DenseInfoNCE(tau)(u, v, match, queue, torch.zeros(1, 2))
    value.backward()
    assert value.item() == 0.0 and torch.equal(u.grad, torch.zeros_like(u))


def test_losses_and_matching_run_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 3, 16, generator=g), dim=-1)
    v = F.normalize(torch.randn(4, 3, 16, generator=g), dim=-1)
    queue = F.normalize(torch.randn(64, 16, generator=g), dim=-1)
    match = torch.randint(0, 3, (4, 3), generator=g)
    f = torch.randn(4, 16, 2, 2, generator=g)
    reference = (GlobalInfoNCE()(q[:, 0], v[:, 0], queue), DenseInfoNCE()(q, v, match, queue), similarity_match(f, f[[1, 0, 3, 2]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the engine's AMP does (on GPU)
        mixed = (GlobalInfoNCE()(q[:, 0], v[:, 0], queue), DenseInfoNCE()(q, v, match, queue), similarity_match(f, f[[1, 0, 3, 2]]))
    for a, b in zip(reference[:2], mixed[:2]):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.equal(reference[2][0], mixed[2][0])
    torch.testing.assert_close(reference[2][1], mixed[2][1], rtol=1e-6, atol=1e-6)


def test_similarity_match_is_the_argmax_of_backbone_cosine_similarity():
    f_query = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)   # cells (1, 0), (0, 1)
    f_key = torch.tensor([[0.0, 2.0], [3.0, 0.1]]).t().reshape(1, 2, 1, 2)     # cells (0, 2), (3, 0.1)
    match, confidence = similarity_match(f_query, f_key)
    assert match.tolist() == [[1, 0]]
    torch.testing.assert_close(confidence, torch.tensor([[3 / math.hypot(3, 0.1), 1.0]]))


# --------------------------------------------------------------------------------------------- reweighting


def _eq7(s: list[float], in_box: list[bool], gamma: float, eps: float) -> list[float]:
    """Eq. 7 written out per query, for one image."""
    if all(in_box):
        return [1.0] * len(s)
    lo, hi = min(s), max(x for x, b in zip(s, in_box) if not b)
    out = []
    for x, b in zip(s, in_box):
        if b:
            out.append(1.0)
        else:
            den = hi - lo + eps
            out.append(((x - lo) / den) ** gamma if den > 0 else 0.0)
    return out


def test_reweighting_takes_the_minimum_over_all_queries_including_in_box():
    s = torch.tensor([[0.1, 0.5, 0.9, 0.3]])
    in_box = torch.tensor([[True, False, False, False]])
    w = SemanticReweighting(gamma=2.0, eps=0.0)(s, in_box)
    # min = 0.1 (an in-box query), max over out-of-box = 0.9
    torch.testing.assert_close(w, torch.tensor([[1.0, (0.4 / 0.8) ** 2, 1.0, (0.2 / 0.8) ** 2]]))


def test_reweighting_without_out_of_box_cells_is_all_ones():
    w = SemanticReweighting()(torch.tensor([[0.3, -0.2, 0.9]]), torch.ones(1, 3, dtype=torch.bool))
    assert torch.equal(w, torch.ones(1, 3))


def test_reweighting_without_in_box_cells_spans_zero_to_one():
    w = SemanticReweighting(gamma=2.0, eps=0.0)(torch.tensor([[0.2, 0.6, 1.0]]), torch.zeros(1, 3, dtype=torch.bool))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.25, 1.0]]))


def test_reweighting_guards_zero_over_zero():
    s = torch.tensor([[0.4, 0.2, 0.2]])  # every out-of-box confidence equals the minimum
    in_box = torch.tensor([[True, False, False]])
    for eps in (0.0, 1e-6):
        w = SemanticReweighting(gamma=2.0, eps=eps)(s, in_box)
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0]]))


def test_reweighting_matches_eq7_per_image_on_random_batches():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(5, 9, generator=g) * 2 - 1
    in_box = torch.rand(5, 9, generator=g) < 0.4
    in_box[0] = True   # an image with no out-of-box cell
    in_box[1] = False  # and one with no in-box cell
    for gamma, eps in ((2.0, 1e-6), (1.0, 0.0), (3.0, 0.0)):
        w = SemanticReweighting(gamma, eps)(s, in_box)
        expected = torch.tensor([_eq7(s[i].tolist(), in_box[i].tolist(), gamma, eps) for i in range(5)])
        torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- coord matching


def test_coordinate_match_under_crop_and_flip_on_a_hand_case():
    # view 1 = the whole image, not flipped; view 2 = the image's right half, flipped
    crop1, crop2 = (0, 0, 64, 64), (0, 32, 64, 32)
    box1, box2 = overlap_box(crop1, crop2, False), overlap_box(crop2, crop1, True)
    torch.testing.assert_close(box1, torch.tensor([0.5, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(box2, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    match = coordinate_match(box1[None], box2[None], 4, 4).view(4, 4)
    # query column 2 (image x = 40 px) lies 8 px into view 2, mirrored to 24/32 -> key column 3;
    # query column 3 (image x = 56 px) -> 24 px into view 2, mirrored to 8/32 -> key column 1; rows map 1:1
    for r in range(4):
        assert match[r, 2].item() == r * 4 + 3
        assert match[r, 3].item() == r * 4 + 1
    # and back: key view 2 as the query view
    back = coordinate_match(box2[None], box1[None], 4, 4).view(4, 4)
    assert back[0].tolist() == [3, 3, 2, 2]  # view 2 columns 0..3 = image x 60, 52, 44, 36 px -> columns 3, 3, 2, 2


def test_coordinate_match_agrees_with_mapping_through_image_pixels():
    """Random crops and flips: each in-box query cell centre, mapped through original-image coordinates with the
    crop parameters, lands in the key cell that coordinate_match returns (points on a cell border are ties that
    float rounding may send either way; they are skipped)."""
    g = torch.Generator().manual_seed(0)
    h = w = 5
    checked = 0
    for _ in range(200):
        crops = []
        for _ in range(2):
            ch, cw = (int(torch.randint(20, 64, (), generator=g)) for _ in range(2))
            crops.append((int(torch.randint(0, 64 - ch + 1, (), generator=g)),
                          int(torch.randint(0, 64 - cw + 1, (), generator=g)), ch, cw))
        flips = (torch.rand(2, generator=g) < 0.5).tolist()
        box_q, box_k = overlap_box(crops[0], crops[1], flips[0]), overlap_box(crops[1], crops[0], flips[1])
        match = coordinate_match(box_q[None], box_k[None], h, w)[0]
        in_box = box_cell_mask(box_q[None], h, w)[0].flatten()
        (tq, lq, hq, wq), (tk, lk, hk, wk) = crops
        for i in torch.nonzero(in_box).flatten().tolist():
            r, c = divmod(i, w)
            xq, yq = (c + 0.5) / w, (r + 0.5) / h
            x_img = lq + (1 - xq if flips[0] else xq) * wq
            y_img = tq + yq * hq
            xk, yk = (x_img - lk) / wk, (y_img - tk) / hk
            xk = 1 - xk if flips[1] else xk
            if min(abs(xk * w - round(xk * w)), abs(yk * h - round(yk * h))) < 1e-4:
                continue
            col = min(max(math.floor(xk * w), 0), w - 1)
            row = min(max(math.floor(yk * h), 0), h - 1)
            assert match[i].item() == row * w + col
            checked += 1
    assert checked > 400


# --------------------------------------------------------------------------------------------- the method


def test_target_gets_no_gradient_and_changes_only_by_the_ema_step():
    torch.manual_seed(0)
    method = tiny_pixcon()
    target_before = {k: v.clone() for k, v in method.target.named_parameters()}
    groups = parameter_groups(method, OptimSection())
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not optimised & {id(p) for p in method.target.parameters()}
    optimizer = torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.5)
    losses = method(tiny_batch())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.target.parameters())
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)  # DDP: no unused parameter
    optimizer.step()
    for name, p in method.target.named_parameters():
        assert torch.equal(p, target_before[name]), name
    online = dict(method.online.named_parameters())
    assert any(not torch.equal(online[n], target_before[n]) for n in target_before)  # the online side moved
    method.on_step_end(1, 10)  # first EMA step: momentum at t = 0 is 0.99
    assert method.momentum == pytest.approx(0.99)
    for name, p in method.target.named_parameters():
        torch.testing.assert_close(p, 0.99 * target_before[name] + 0.01 * online[name])


def test_forward_is_the_symmetric_lambda_weighted_sum_and_enqueues_one_view():
    torch.manual_seed(0)
    method = tiny_pixcon(variant="sr", loss_lambda=0.3, sr_eps=1e-6, queue_size=10)
    batch = tiny_batch(b=4)
    queue_g, queue_d = method.global_queue.snapshot(), method.dense_queue.snapshot()
    torch.manual_seed(1)
    losses = method(batch)
    # recompute the objective from the parts (train-mode BatchNorm: the same batch gives the same outputs)
    views, boxes = (batch["image"], batch["view2"]), (batch["box1"], batch["box2"])
    with torch.no_grad():
        on = [method.online(x) for x in views]
        tg = [method.target(x) for x in views]
        lg = ld = 0.0
        for a, b in ((0, 1), (1, 0)):
            q = F.normalize(method.global_predictor(on[a].global_), dim=1)
            k = F.normalize(tg[b].global_, dim=1)
            lg += GlobalInfoNCE(0.2)(q, k, queue_g)
            u = F.normalize(method.dense_predictor(on[a].dense).flatten(2).transpose(1, 2), dim=-1)
            v = F.normalize(tg[b].dense.flatten(2).transpose(1, 2), dim=-1)
            match, s = similarity_match(on[a].features, tg[b].features)
            w = SemanticReweighting(2.0, 1e-6)(s, box_cell_mask(boxes[a], 4, 4).flatten(1))
            ld += DenseInfoNCE(0.2)(u, v, match, queue_d, w)
    assert losses["global"].item() == pytest.approx(0.7 * lg.item(), rel=1e-5)
    assert losses["dense"].item() == pytest.approx(0.3 * ld.item(), rel=1e-5)
    # one view's keys were enqueued: the global key n(g^t) and the pooled dense key n(mean_j d^t_j)
    assert int(method.global_queue.ptr) == 4 and int(method.dense_queue.ptr) == 4
    keys = method.global_queue.keys[:4]
    candidates = [F.normalize(t.global_, dim=1) for t in tg]
    chosen = min(range(2), key=lambda r: (keys - candidates[r]).abs().max().item())
    torch.testing.assert_close(keys, candidates[chosen])
    torch.testing.assert_close(method.dense_queue.keys[:4], F.normalize(tg[chosen].dense.mean(dim=(2, 3)), dim=1))
    torch.testing.assert_close(method.global_queue.keys[4:], queue_g[4:])  # the rest untouched


def test_coord_variant_drops_out_of_box_queries_and_handles_no_overlap():
    torch.manual_seed(0)
    method = tiny_pixcon(variant="coord")
    batch = tiny_batch()
    batch["box1"] = batch["box2"] = torch.tensor([[0.0, 0.0, 0.1, 0.1]] * 4)  # no in-box cell anywhere
    losses = method(batch)
    assert losses["dense"].item() == 0.0 and torch.isfinite(losses["global"])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)
    # with an overlap, only in-box queries count: their positives are the coordinate matches
    match, weights = method.positives(torch.randn(4, 8, 4, 4), torch.randn(4, 8, 4, 4),
                                      torch.tensor([[0.5, 0.0, 1.0, 1.0]] * 4), torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 4))
    assert weights.sum().item() == 4 * 8  # columns 2, 3 of a 4 x 4 grid
    assert match[0].view(4, 4)[:, 2:].tolist() == [[r * 4 + 3, r * 4 + 1] for r in range(4)]


@pytest.mark.parametrize("variant", ["sim", "sr"])
def test_sim_and_sr_variants_use_every_query(variant):
    method = tiny_pixcon(variant=variant)
    f = torch.randn(2, 8, 4, 4)
    box = torch.tensor([[0.5, 0.0, 1.0, 1.0]] * 2)
    match, weights = method.positives(f, f, box, box)
    assert torch.equal(match, torch.arange(16).expand(2, 16))  # identical features: every cell matches itself
    if variant == "sim":
        assert weights is None
    else:
        in_box = box_cell_mask(box, 4, 4).flatten(1)
        _, confidence = similarity_match(f, f)
        torch.testing.assert_close(weights, SemanticReweighting(2.0, 1e-6)(confidence, in_box))
        assert (weights[in_box] == 1).all() and (weights[~in_box] < 1).all()


def test_export_is_a_backbone_file_that_the_finetune_model_loads(tmp_path):
    torch.manual_seed(0)
    method = tiny_pixcon()
    assert PixCon.export_part == "backbone" and PixCon.evaluates is False
    files = method.export(tmp_path, {"method": "pixcon"})
    assert set(files) == {"backbone"}
    model = build_model("resnet18", "fcn", num_classes=5, output_stride=16, channels=64)
    report = load_weights(model, files["backbone"])
    assert report.source == "rayseg backbone"
    torch.testing.assert_close(model.backbone.conv1.weight, method.online.backbone.conv1.weight)


# --------------------------------------------------------------------------------------------- 2 workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        # 1. the queue gathers every worker's keys in rank order, identically on every worker
        queue = KeyQueue(8, 2)
        queue.enqueue(torch.full((3, 2), float(rank + 1)))
        gathered = queue.keys.clone()

        # 2. the whole method under DDP (as the engine wraps it), different data on each worker
        torch.manual_seed(0)  # identical initialisation, as the engine does
        method = tiny_pixcon(queue_size=32)
        target_init = {k: v.clone() for k, v in method.target.named_parameters()}
        # find_unused_parameters=False: a second step would fail ("expected to have finished reduction") if any
        # parameter in DDP's buckets got no gradient, so finishing two steps shows the target is not in them
        model = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=False)
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
        torch.manual_seed(100 + rank)  # per-worker augmentation / view choice
        for step in range(2):
            losses = model(tiny_batch(b=2, seed=10 * step + rank))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            method.on_step_end(step + 1, 2)
        torch.save({
            "gathered": gathered,
            "target_grads": [p.grad is not None for p in method.target.parameters()],
            # parameters only: each worker's last forward updated its own BatchNorm statistics (DDP broadcasts
            # rank 0's at the start of the next forward, and the engine before evaluation and export)
            "online": {k: v.detach().clone() for k, v in method.online.named_parameters()},
            "target": {k: v.detach().clone() for k, v in method.target.named_parameters()},
            "target_init": target_init,
            "queues": {k: v.clone() for k, v in method.state_dict().items() if "queue" in k},
        }, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_workers_gather_queues_and_keep_identical_targets_under_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # all-gather: rank 0's 3 keys then rank 1's, on both workers
    expected = torch.cat([torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)])
    for r in (r0, r1):
        assert torch.equal(r["gathered"][:6], expected)
    assert torch.equal(r0["gathered"], r1["gathered"])
    # the target is outside DDP's gradient sync and gets no gradients ...
    assert not any(r0["target_grads"] + r1["target_grads"])
    # ... yet stays identical on both workers (same EMA of identical online weights), and it moved
    for key, value in r0["target"].items():
        torch.testing.assert_close(value, r1["target"][key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(r0["target"][k], r0["target_init"][k]) for k in r0["target"])
    for key, value in r0["online"].items():
        torch.testing.assert_close(value, r1["online"][key], rtol=0, atol=0, msg=key)
    # queues: 2 steps x 2 workers x 2 images gathered, identical on both workers
    assert int(r0["queues"]["global_queue.ptr"]) == int(r1["queues"]["global_queue.ptr"]) == 8
    for key, value in r0["queues"].items():
        assert torch.equal(value, r1["queues"][key]), key
