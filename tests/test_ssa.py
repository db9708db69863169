"""SSA-Seg classifier head: boundaries, each loss on hand cases, the classifier's paths, integration, weights."""

from __future__ import annotations

import math
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rayseg.config import ConfigError, load_config
from rayseg.engine.optim import parameter_groups
from rayseg.methods.pssl import PSSL, BackgroundWeightedCrossEntropy
from rayseg.methods.ssa_losses import (
    MaskDiceLoss,
    ResponseDistillationLoss,
    SemanticDistillationLoss,
    SpatialDistillationLoss,
    SSALoss,
    label_boundaries,
    segmentation_losses,
)
from rayseg.methods.supervised import Supervised
from rayseg.models import SSAClassifier, build_model, export_weights, load_weights
from rayseg.ignore import IGNORE_INDEX

SMALL = {"backbone": "resnet18", "head": "fcn", "output_stride": 32, "channels": 16}


def ssa_model(num_classes=4, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(**{**SMALL, **overrides}, num_classes=num_classes, classifier="ssa")


def sm(values):
    z = sum(math.exp(v) for v in values)
    return [math.exp(v) / z for v in values]


# ------------------------------------------------------------------------------------------------ boundaries


def test_boundaries_5x5_single_pixel_hand_case():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 2, 2] = 1
    # thin edges (label differs from the right or lower neighbour): (1,2), (2,1), (2,2); then 3x3 dilation
    expected = torch.tensor([[0, 1, 1, 1, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0]], dtype=torch.float)
    assert torch.equal(label_boundaries(labels, border=0)[0], expected)
    assert torch.equal(label_boundaries(labels, border=1)[0], expected)  # all edges are inside the 1-px frame
    # a 2-pixel frame keeps only the edge at (2,2): its 3x3 neighbourhood
    only_centre = torch.zeros(5, 5)
    only_centre[1:4, 1:4] = 1
    assert torch.equal(label_boundaries(labels, border=2)[0], only_centre)


def test_boundaries_frame_suppresses_edges_at_the_border_and_ignore_counts():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 0, :] = IGNORE_INDEX  # ignore row on top: its change to class 0 is an edge (row 0)
    band = label_boundaries(labels, border=0)[0]
    assert torch.equal(band, torch.tensor([[1.0] * 5, [1.0] * 5, [0.0] * 5, [0.0] * 5, [0.0] * 5]))
    assert label_boundaries(labels, border=1).sum() == 0


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (5, 5), (8, 8), (11, 30), (12, 12)])
def test_boundaries_small_maps_with_the_official_frame_are_empty(size):
    labels = torch.randint(0, 3, (2, *size))
    band = label_boundaries(labels, border=6)
    assert band.shape == (2, *size) and band.sum() == 0


def test_boundaries_13x13_keeps_the_centre_only():
    labels = torch.zeros(1, 13, 13, dtype=torch.long)
    labels[0, :, 7:] = 1  # vertical change between columns 6 and 7: edge column 6, only row 6 survives the frame
    expected = torch.zeros(13, 13)
    expected[5:8, 5:8] = 1
    assert torch.equal(label_boundaries(labels, border=6)[0], expected)


# ------------------------------------------------------------------------------------- response distillation


def _rd_terms(student, teacher, label, smoothing=0.5):
    """Per-pixel ℓ and e of L_rd for one pixel (lists of K logits), by hand."""
    q = sm(teacher)
    p = sm(student)
    t = [smoothing * qk + (1 - smoothing) * (1.0 if k == label else 0.0) for k, qk in enumerate(q)]
    loss = -sum(tk * math.log(pk) for tk, pk in zip(t, p))
    entropy = -sum(qk * math.log(qk + 1e-12) for qk in q)
    return loss, entropy


def test_response_distillation_1x4_hand_case():
    # K = 2, one row of 4 pixels labelled 0 0 0 1; border 0: thin edge at column 2, band = columns 1..3
    student = torch.tensor([[0.2, -1.0, 0.5, 1.5], [0.0, 0.3, -0.4, 0.1]]).view(1, 2, 1, 4)
    teacher = torch.tensor([[1.0, 0.5, -0.2, 0.0], [-1.0, 0.5, 0.8, 2.0]]).view(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 1]]])
    terms = [_rd_terms(student[0, :, 0, i].tolist(), teacher[0, :, 0, i].tolist(), labels[0, 0, i].item())
             for i in range(4)]
    (l0, e0), (l1, e1), (l2, e2), (l3, e3) = terms
    class0 = 0.5 * ((e1 * l1 + e2 * l2) / (e1 + e2) + (e0 * l0) / e0)  # boundary half + interior half
    class1 = 0.5 * (e3 * l3 / e3 + 0.0)                                 # no interior pixel: that half is 0
    loss = ResponseDistillationLoss(smoothing=0.5, border=0)(student, teacher, labels)
    assert loss.item() == pytest.approx((class0 + class1) / 2, rel=1e-5)
    # with the official 6-px frame nothing is boundary: each class is half its entropy-weighted mean
    interior0 = 0.5 * (e0 * l0 + e1 * l1 + e2 * l2) / (e0 + e1 + e2)
    loss6 = ResponseDistillationLoss(smoothing=0.5, border=6)(student, teacher, labels)
    assert loss6.item() == pytest.approx((interior0 + 0.5 * l3) / 2, rel=1e-5)


def test_response_distillation_ignores_ignore_resizes_labels_and_detaches_the_teacher():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 2, 2, requires_grad=True)
    teacher = torch.randn(1, 3, 2, 2, requires_grad=True)
    # 4x4 labels nearest-resized to 2x2 take the top-left pixel of each 2x2 cell: [[2, ignore], [0, 2]]
    labels = torch.tensor([[[2, 1, IGNORE_INDEX, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 1, 2, 2]]])
    loss = ResponseDistillationLoss(smoothing=0.5, border=6)(student, teacher, labels)
    pix = {(i, j): _rd_terms(student[0, :, i, j].tolist(), teacher[0, :, i, j].tolist(), c)
           for (i, j), c in {(0, 0): 2, (1, 0): 0, (1, 1): 2}.items()}
    (la, ea), (lb, _), (lc, ec) = pix[(0, 0)], pix[(1, 0)], pix[(1, 1)]
    expected = (0.5 * lb + 0.5 * (ea * la + ec * lc) / (ea + ec)) / 2  # classes 0 and 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad[0, :, 0, 1].abs().sum() == 0  # the ignored pixel has no gradient
    everything_ignored = torch.full((1, 2, 2), IGNORE_INDEX)
    assert ResponseDistillationLoss()(student, teacher, everything_ignored).item() == 0.0


# ------------------------------------------------------------------------------------------------------ Dice


def test_dice_hand_case_sigmoid_pairs_and_ignored_pixels_in_the_denominator():
    # image 0: labels [0, ignore]; channel 0 sigmoids [0.5, 0.75] (the ignored pixel counts in Σ m, as the official code)
    # image 1: labels [1, 0]; channel 0 sigmoids [0.5, 0.5], channel 1 sigmoids [0.75, 0.5]
    # image 2: all ignored: no pair
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [5.0, -5.0]],
                           [[0.0, 0.0], [ln3, 0.0]],
                           [[1.0, 2.0], [3.0, 4.0]]]).view(3, 2, 1, 2)
    labels = torch.tensor([[[0, IGNORE_INDEX]], [[1, 0]], [[IGNORE_INDEX, IGNORE_INDEX]]])
    d00 = 1 - (2 * 0.5 + 1) / (0.5 + 0.75 + 1 + 1)
    d10 = 1 - (2 * 0.5 + 1) / (0.5 + 0.5 + 1 + 1)
    d11 = 1 - (2 * 0.75 + 1) / (0.75 + 0.5 + 1 + 1)
    loss = MaskDiceLoss()(logits, labels)
    assert loss.item() == pytest.approx((d00 + d10 + d11) / 3, rel=1e-6)
    assert MaskDiceLoss()(logits[2:], labels[2:]).item() == 0.0  # no pair: sum 0 over max(0, 1)


def _dice_worker(rank, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        logits = torch.zeros(1, 4, 1, 4)                   # every sigmoid 0.5
        labels = torch.tensor([[[0, 0, 0, 0]]]) if rank == 0 else torch.tensor([[[1, 2, 3, 3]]])
        results.put((rank, MaskDiceLoss()(logits, labels).item()))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dice_pair_count_is_averaged_over_workers():
    # rank 0 has 1 pair, rank 1 has 3: each divides its own sum by the mean count 2
    # fork: the children reuse the imported modules (spawn would re-import torch and rayseg, ~10 s each)
    results = mp.get_context("fork").SimpleQueue()
    mp.start_processes(_dice_worker, args=(_free_port(), results), nprocs=2, join=True, start_method="fork")
    results = dict(results.get() for _ in range(2))
    d_full = 1 - (2 * 0.5 * 4 + 1) / (0.5 * 4 + 4 + 1)   # class filling the 4 pixels
    d_one = 1 - (2 * 0.5 * 1 + 1) / (0.5 * 4 + 1 + 1)    # class on 1 of 4 pixels
    d_two = 1 - (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1)    # class on 2 of 4 pixels
    assert results[0] == pytest.approx(d_full / 2, rel=1e-6)
    assert results[1] == pytest.approx((2 * d_one + d_two) / 2, rel=1e-6)


def _ddp_worker(rank, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        method = Supervised(ssa_model(num_classes=3, seed=0), ["a", "b", "c"])
        ddp = torch.nn.parallel.DistributedDataParallel(method)  # find_unused_parameters=False, as the engine
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
        torch.manual_seed(rank)  # each rank its own batch
        for _ in range(2):  # a parameter without gradient would make DDP fail in the second forward
            losses = ddp({"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        flat = torch.cat([p.detach().flatten() for p in method.model.classifier.parameters()])
        results.put((rank, flat.tolist()))  # plain floats: a tensor would be shared through the exiting child
    finally:
        dist.destroy_process_group()


def test_two_ddp_workers_train_the_ssa_head_in_step():
    results = mp.get_context("fork").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(_free_port(), results), nprocs=2, join=True, start_method="fork")
    params = {rank: torch.tensor(values) for rank, values in (results.get() for _ in range(2))}
    assert torch.equal(params[0], params[1])  # gradients were all-reduced: identical classifier on both ranks
    assert not torch.equal(params[0], torch.cat([p.flatten() for p in ssa_model(3, seed=0).classifier.parameters()]))


# ------------------------------------------------------------------------------------ semantic distillation


def test_semantic_distillation_one_sided_hinge_hand_case():
    orthogonal = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])   # R: off-diagonal 1 / (1 + e^15)
    parallel = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])     # R: every entry 0.5
    off_orthogonal = 1.0 / (1.0 + math.exp(15.0))
    loss = SemanticDistillationLoss()
    # the student more similar to the other class than the teacher: penalised, mean over (b, k) of the row sum
    assert loss(parallel, orthogonal).item() == pytest.approx(10 * (0.5 - off_orthogonal), rel=1e-6)
    # the student less similar than the teacher: no penalty
    assert loss(orthogonal, parallel).item() == 0.0
    # 60 degrees apart (cos 0.5) vs orthogonal teacher, 3 classes with one orthogonal to both, weight 2
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]]])
    teacher = torch.eye(3).unsqueeze(0)
    row01 = sm([15.0, 7.5, 0.0])            # row of class 0 (and, symmetric, class 1) in R(student)
    row2 = sm([0.0, 0.0, 15.0])
    t_off = sm([15.0, 0.0, 0.0])[1]
    hinge = lambda v: max(v - t_off, 0.0)
    per_row = [hinge(row01[1]) + hinge(row01[2])] * 2 + [hinge(row2[0]) + hinge(row2[1])]
    assert SemanticDistillationLoss(weight=2.0)(student, teacher).item() == pytest.approx(2 * sum(per_row) / 3,
                                                                                       rel=1e-5)


def test_semantic_distillation_gradient_reaches_the_student_through_the_left_factor_only():
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, requires_grad=True)
    SemanticDistillationLoss()(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # R(X) = softmax(15 n(X) sg(n(X))ᵀ): the detached right factor is a constant for autograd
    x = torch.randn(1, 3, 4, requires_grad=True)
    relation = SemanticDistillationLoss().relation(x)
    unit = F.normalize(x, dim=-1)
    const = unit.detach()
    manual = (15 * unit @ const.transpose(-1, -2)).softmax(-1)
    g1, = torch.autograd.grad(relation[0, 0, 1], x)
    g2, = torch.autograd.grad(manual[0, 0, 1], x)
    assert torch.allclose(g1, g2)


# ------------------------------------------------------------------------------------- spatial distillation


def test_spatial_distillation_soft_ce_over_channels_hand_case():
    student = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])              # sm_C: [0.5, 0.5] for both classes
    teacher = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])    # sm_C: [0.25, 0.75] and [0.5, 0.5]
    expected = 0.4 * (math.log(2.0) + math.log(2.0)) / 2
    assert SpatialDistillationLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    student = torch.tensor([[[math.log(3.0), 0.0]]], requires_grad=True)  # sm_C: [0.75, 0.25]
    teacher = torch.tensor([[[0.0, math.log(3.0)]]], requires_grad=True)  # sm_C: [0.25, 0.75]
    loss = SpatialDistillationLoss(weight=1.0)(student, teacher)
    assert loss.item() == pytest.approx(-(0.25 * math.log(0.75) + 0.75 * math.log(0.25)), rel=1e-6)
    loss.backward()
    assert teacher.grad is None


# ------------------------------------------------------------------------------------------- the classifier


def test_student_matches_the_formulas_of_the_spec():
    torch.manual_seed(0)
    head = SSAClassifier(channels=6, num_classes=3, dropout=0.0).eval()
    feat = torch.randn(2, 6, 3, 4)
    with torch.no_grad():
        logits, coarse, semantic, spatial, pos = head.student(feat)
        s = head.weight.flatten(1)
        assert torch.allclose(coarse, torch.einsum("kc,bchw->bkhw", s, feat) + head.bias.view(1, 3, 1, 1), atol=1e-6)
        a_sem = coarse.flatten(2).softmax(1)
        centre = (a_sem @ feat.flatten(2).transpose(1, 2)) / a_sem.sum(-1, keepdim=True)
        assert torch.allclose(semantic, head.semantic_mlp(torch.cat([centre, s.expand(2, -1, -1)], -1)), atol=1e-6)
        a_sp = coarse.flatten(2).softmax(-1)
        g = a_sp @ pos.flatten(2).transpose(1, 2)
        basis = head.position_basis.weight.expand(2, -1, -1)
        assert torch.allclose(spatial, head.spatial_mlp(torch.cat([basis, g], -1)), atol=1e-6)
        key = head.key_proj(semantic + spatial)
        query = feat + pos
        b, k, i, j = 1, 2, 2, 3
        cos = F.cosine_similarity(query[b, :, i, j], key[b, k], dim=0)
        assert logits[b, k, i, j].item() == pytest.approx(15 * cos.item(), rel=1e-5)
        assert logits.abs().max() <= 15 + 1e-4


def test_teacher_centres_are_batch_level_semantic_and_per_image_spatial():
    torch.manual_seed(0)
    head = SSAClassifier(channels=4, num_classes=3, dropout=0.0)
    feat = torch.randn(2, 4, 1, 2)
    pos = head.position_encoding(feat)
    labels = torch.tensor([[[0, IGNORE_INDEX]], [[0, 1]]])  # class 0 in both images, class 1 in image 1, class 2 nowhere
    captured = {}
    head.teacher_semantic_mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("sem", i[0]))
    head.teacher_spatial_mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("pos", i[0]))
    with torch.no_grad():
        head.teacher(feat, pos, labels)
    s, basis = head.weight.flatten(1), head.position_basis.weight
    sem = captured["sem"]                                     # K x 2C: [c^g ; S]
    assert torch.allclose(sem[0, :4], (feat[0, :, 0, 0] + feat[1, :, 0, 0]) / 2)
    assert torch.allclose(sem[1, :4], feat[1, :, 0, 1]) and torch.equal(sem[2, :4], s[2])
    assert torch.equal(sem[:, 4:], s)
    sp = captured["pos"]                                      # B x K x 2C: [g^g ; Pb]
    assert torch.allclose(sp[0, 0, :4], pos[0, :, 0, 0]) and torch.allclose(sp[1, 0, :4], pos[1, :, 0, 0])
    assert torch.equal(sp[0, 1, :4], basis[1]) and torch.allclose(sp[1, 1, :4], pos[1, :, 0, 1])
    assert torch.equal(sp[:, 2, :4], basis[2].expand(2, -1)) and torch.equal(sp[:, :, 4:], basis.expand(2, -1, -1))


def test_eval_output_is_the_same_with_or_without_labels_and_ignores_the_teacher():
    model = ssa_model(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feat = model.forward_features(x)["decoder"]
        plain = model.classifier(feat)
        with_labels = model.classifier.forward_train(feat, torch.randint(0, 4, (2, 64, 64))).logits
        other_labels = model.classifier.forward_train(feat, torch.full((2, 64, 64), IGNORE_INDEX)).logits
        assert torch.equal(plain, with_labels) and torch.equal(plain, other_labels)
        before = model(x)
        for name, p in model.classifier.named_parameters():
            if name.startswith("teacher_"):
                p.add_(torch.randn_like(p))
        assert torch.equal(model(x), before)
        assert torch.equal(before, F.interpolate(plain, size=(64, 64), mode="bilinear", align_corners=False))


def test_parameter_overhead_below_five_percent_of_resnet18_fcn():
    count = lambda m: sum(p.numel() for p in m.parameters())
    plain = build_model("resnet18", "fcn", num_classes=21, channels=128)
    ssa = build_model("resnet18", "fcn", num_classes=21, channels=128, classifier="ssa")
    c, k = 128, 21
    mlp = 2 * c * (c // 2) + (c // 2) * c + c
    teacher = 2 * mlp + c * c
    extra = (c * 9 + c) + k * c + 2 * mlp + c * c + teacher       # PE, Pb, φ_sem, φ_pos, W_c + teacher
    assert count(ssa) - count(plain) == extra == 135_552
    ratio = extra / count(plain)
    assert ratio == pytest.approx(135_552 / 11_769_301) and ratio < 0.05
    assert (extra - teacher) / count(plain) < 0.006  # what inference carries: 69,760 parameters, 0.59 %


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "fpn"])
def test_every_decode_head_takes_the_ssa_classifier(head):
    model = ssa_model(num_classes=3, head=head, dropout=0.2)
    assert model.classifier.dropout.p == 0.2
    trailing = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Dropout)][-1]  # (ASPP keeps its own)
    assert trailing.p == 0.0  # the decoder's dropout moved into the SSA coarse-mask path
    assert model.arch["classifier"] == "ssa"
    rebuilt = build_model(**model.arch)
    assert isinstance(rebuilt.classifier, SSAClassifier)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    losses = segmentation_losses(model, torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)),
                                 lambda x, y: F.cross_entropy(x, y, ignore_index=IGNORE_INDEX))
    assert all(torch.isfinite(v) for v in losses.values())
    model.replace_classifier(5)
    assert isinstance(model.classifier, SSAClassifier) and model.classifier.num_classes == 5
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    with pytest.raises(ValueError, match="unknown classifier 'mlp'"):
        build_model(classifier="mlp")


# ------------------------------------------------------------------------------------- losses in the methods


def test_total_is_the_sum_of_the_logged_terms_each_recomputed():
    model = ssa_model(num_classes=4).eval()  # eval: no dropout, so two forwards agree
    method = Supervised(model, ["a", "b", "c", "d"], ssa_loss=SSALoss(edge_border=0))
    torch.manual_seed(1)
    image, mask = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    mask[:, :8] = IGNORE_INDEX
    losses = method({"image": image, "mask": mask})
    assert list(losses) == ["ce", "coarse_ce", "teacher_ce", "distill_response", "dice", "teacher_dice",
                            "distill_semantic", "distill_spatial"]
    with torch.no_grad():
        out = model.classifier.forward_train(model.forward_features(image)["decoder"], mask)
        up = lambda t: F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=True)
        ce = lambda t: F.cross_entropy(up(t), mask, ignore_index=IGNORE_INDEX)
        expected = {
            "ce": ce(out.logits), "coarse_ce": ce(out.coarse), "teacher_ce": ce(out.teacher_logits),
            "distill_response": ResponseDistillationLoss(border=0)(out.logits, out.teacher_logits, mask),
            "dice": MaskDiceLoss()(up(out.logits), mask), "teacher_dice": MaskDiceLoss()(up(out.teacher_logits), mask),
            "distill_semantic": SemanticDistillationLoss(10.0)(out.semantic, out.teacher_semantic),
            "distill_spatial": SpatialDistillationLoss(0.4)(out.spatial, out.teacher_spatial),
        }
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    total = sum(losses.values())
    assert total.item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in method.parameters())  # DDP needs no find_unused_parameters


def test_plain_classifier_keeps_the_single_term():
    torch.manual_seed(0)
    model = build_model(**SMALL, num_classes=3).eval()
    method = Supervised(model, ["a", "b", "c"])
    image, mask = torch.randn(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))
    losses = method({"image": image, "mask": mask})
    assert list(losses) == ["ce"]
    with torch.no_grad():
        assert losses["ce"].item() == pytest.approx(F.cross_entropy(model(image), mask).item(), rel=1e-6)


def test_pssl_uses_its_background_weighted_ce_as_the_main_term():
    model = ssa_model(num_classes=3).eval()
    method = PSSL(model, ["cat", "dog", "background"], num_image_classes=2, bg_weight=0.1)
    image, mask = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = method({"image": image, "mask": mask})
    assert list(losses)[:3] == ["wce", "coarse_ce", "teacher_ce"] and len(losses) == 8
    with torch.no_grad():
        out = model.classifier.forward_train(model.forward_features(image)["decoder"], mask)
        up = F.interpolate(out.logits, size=(32, 32), mode="bilinear", align_corners=True)
        expected = BackgroundWeightedCrossEntropy(2, 0.1)(up, mask)
    assert losses["wce"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_config_builds_the_ssa_head_and_its_loss_weights():
    cfg = load_config(overrides=["model.classifier=ssa", "model.channels=16", "model.output_stride=32",
                                 "ssa.semantic_weight=5", "ssa.edge_border=1", "ssa.dice_weight=0"])
    train_set = SimpleNamespace(num_classes=4, class_names=list("abcd"))
    method = Supervised.from_config(cfg, train_set)
    assert isinstance(method.model.classifier, SSAClassifier)
    assert method.ssa_loss.semantic.weight == 5.0 and method.ssa_loss.response.border == 1
    assert method.ssa_loss.spatial.weight == 0.4 and method.ssa_loss.response.smoothing == 0.5
    losses = method.eval()({"image": torch.randn(1, 3, 32, 32), "mask": torch.randint(0, 4, (1, 32, 32))})
    assert losses["dice"].item() == 0.0 and losses["teacher_dice"].item() == 0.0
    assert isinstance(Supervised.from_config(load_config(), train_set).model.classifier, torch.nn.Conv2d)
    for override, key in [("ssa.smoothing=1.5", "ssa.smoothing"), ("ssa.edge_border=-1", "ssa.edge_border"),
                          ("ssa.spatial_weight=-0.1", "ssa.spatial_weight"),
                          ("model.classifier=mlp", "model.classifier")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(overrides=[override])


def test_ssa_parameters_get_the_head_learning_rate():
    method = Supervised(ssa_model(num_classes=3), ["a", "b", "c"])
    opt = load_config(overrides=["optim.head_lr_mult=10", "optim.lr=0.01"]).optim
    backbone_group, head_group = parameter_groups(method, opt)
    ssa_params = {id(p) for p in method.model.classifier.parameters()}
    assert ssa_params <= {id(p) for p in head_group["params"]}
    assert not ssa_params & {id(p) for p in backbone_group["params"]}
    assert head_group["lr"] == pytest.approx(0.1) and backbone_group["lr"] == pytest.approx(0.01)


def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch():
    model = ssa_model(num_classes=3, seed=0, output_stride=16)  # 3x3 decoder features
    method = Supervised(model, ["a", "b", "c"]).train()
    torch.manual_seed(2)
    image = torch.randn(2, 3, 48, 48)
    mask = torch.zeros(2, 48, 48, dtype=torch.long)
    mask[:, :, 24:] = 1
    mask[:, 30:, :] = 2
    mask[:, :4] = IGNORE_INDEX
    optimizer = torch.optim.SGD(method.parameters(), lr=0.02, momentum=0.9)

    def total(step):
        torch.manual_seed(100)  # the same dropout mask for every measurement
        return sum(method({"image": image, "mask": mask}).values())

    first = total(0)
    for step in range(6):
        loss = total(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = total(6)
    assert torch.isfinite(last) and last.item() < 0.85 * first.item()  # 8.67 -> 6.38 when written


def test_autocast_bf16_gives_float32_finite_losses():
    model = ssa_model(num_classes=3)
    method = Supervised(model, ["a", "b", "c"])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = method({"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))})
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------------------------------------- weights


def test_ssa_export_loads_into_an_ssa_fine_tune(tmp_path):
    source = ssa_model(num_classes=4, seed=0).eval()
    path = export_weights(source, tmp_path / "model.pt")
    target = ssa_model(num_classes=4, seed=1).eval()
    report = load_weights(target, path)
    assert (report.dropped, report.missing, report.notices) == ([], [], [])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    other_classes = ssa_model(num_classes=6, seed=1)
    report = load_weights(other_classes, path)
    assert report.summary() == (
        f"loaded {report.loaded} tensors from {path} (rayseg model); dropped the file's SSA classifier (19 tensors): "
        "shape [4, 16, 1, 1] != [6, 16, 1, 1] (different number of classes); the classifier starts from scratch")
    assert all(key.startswith("classifier.") for key in report.missing)


def test_plain_export_loads_into_an_ssa_model_and_back(tmp_path):
    torch.manual_seed(0)
    plain = build_model(**SMALL, num_classes=4)
    path = export_weights(plain, tmp_path / "plain.pt")
    ssa = ssa_model(num_classes=4, seed=1)
    report = load_weights(ssa, path)
    # backbone, decoder and the fixed prototypes S (classifier.weight / bias) load; the SSA modules start fresh
    assert report.dropped == [] and torch.equal(ssa.classifier.weight, plain.classifier.weight)
    assert torch.equal(ssa.classifier.bias, plain.classifier.bias)
    assert all(torch.equal(ssa.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert {k for k in report.missing if not k.endswith("num_batches_tracked")} == {
        f"classifier.{k}" for k in ssa.classifier.state_dict() if k not in ("weight", "bias")}
    assert report.summary() == (
        f"loaded {report.loaded} tensors from {path} (rayseg model); the SSA classifier's prototypes "
        "(classifier.weight, classifier.bias) come from the file's linear classifier; its other modules start from "
        "scratch")
    # another class count: the whole classifier is dropped with a notice
    report = load_weights(ssa_model(num_classes=7), path)
    assert report.summary() == (
        f"loaded {report.loaded} tensors from {path} (rayseg model); dropped the file's linear classifier "
        "(2 tensors; the model has an SSA classifier); the classifier starts from scratch")
    # an SSA export into a plain model: its classifier is dropped, backbone and decoder load
    ssa_path = export_weights(ssa, tmp_path / "ssa.pt")
    target = build_model(**SMALL, num_classes=4)
    report = load_weights(target, ssa_path)
    assert report.summary() == (
        f"loaded {report.loaded} tensors from {ssa_path} (rayseg model); dropped the file's SSA classifier "
        "(19 tensors; the model has a linear classifier); the classifier starts from scratch")
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert all(torch.equal(target.state_dict()[k], v) for k, v in ssa.state_dict().items()
               if k.startswith(("backbone.", "decoder.")))
