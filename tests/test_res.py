"""RES-G, RES-L, GRADIA, HAICS (res.md): each loss against a plain per-cell transcription of the
spec in float64, the threshold against the O(n²) search, gradient paths, mixed batches, masks
that vanish at the map's resolution, bad inputs, Φ's geometry and checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from saliency_fast._distributed import destroy_process_group
from saliency_fast.train import fit
from saliency_fast.train.res import GRADIA, HAICS, RES, projector_geometry
from saliency_fast.train.res_eval import evaluate_explanations
from saliency_fast.train.res_losses import explanation_threshold, signed_target


# -- a plain transcription of res.md (per image, per cell, Python loops) --------------------------
def brute_force_threshold(maps, target):
    """The released O(n²) search, literally: negatives (+1e-4) first, then positives; strict '>'."""
    values = maps.reshape(-1).tolist()
    signs = target.reshape(-1).tolist()
    negatives = [v for v, s in zip(values, signs) if s < 0]
    positives = [v for v, s in zip(values, signs) if s > 0]
    offset = torch.tensor(1e-4, dtype=maps.dtype).item()
    candidates = [float(torch.tensor(v, dtype=maps.dtype) + offset) for v in negatives] + positives
    best, best_score = 0.0, 0.0
    for v in candidates:
        score = 0.0
        if negatives:
            score += sum(1 for m in negatives if v > m) / len(negatives)
        if positives:
            score += sum(1 for m in positives if v <= m) / len(positives)
        if score > best_score:
            best, best_score = v, score
    return best


def transcribe_normalize(cam):
    out = torch.empty_like(cam)
    for b in range(cam.shape[0]):
        shifted = cam[b] - cam[b].min()
        out[b] = shifted / (shifted.max() + 1e-6)
    return out


def transcribe_nearest(mask, h, w):
    H, W = mask.shape[-2:]
    out = torch.zeros(mask.shape[0], h, w, dtype=torch.float64)
    for b in range(mask.shape[0]):
        for i in range(h):
            for j in range(w):
                out[b, i, j] = float(mask[b, (i * H) // h, (j * W) // w])
    return out


def transcribe_blur(image):
    """cv2.GaussianBlur((3, 3), 0) with BORDER_REFLECT_101 on one (h, w) map."""
    h, w = image.shape
    kernel = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]

    def reflect(index, size):
        if index < 0:
            return -index
        if index >= size:
            return 2 * size - 2 - index
        return index

    out = torch.zeros_like(image)
    for i in range(h):
        for j in range(w):
            out[i, j] = sum(kernel[di + 1][dj + 1] * image[reflect(i + di, h), reflect(j + dj, w)]
                            for di in (-1, 0, 1) for dj in (-1, 0, 1)) / 16
    return out


def transcribe_exp_loss(method, M, P, N, has, projector=None):
    """L_exp of res.md for one batch, from maps M (B, h, w) and full-resolution masks."""
    h, w = M.shape[-2:]
    keep = [b for b in range(M.shape[0]) if has[b]]
    if not keep:
        return 0.0
    Fs = transcribe_nearest(P, h, w) - transcribe_nearest(N, h, w)
    cells = [(b, i, j) for b in keep for i in range(h) for j in range(w)]
    annotated = [c for c in cells if Fs[c] != 0]
    if isinstance(method, GRADIA):
        return sum(abs(M[c] - max(Fs[c], 0)) for c in cells) / len(cells)
    if isinstance(method, HAICS):
        def bce(m, t):
            return -(t * max(math.log(m) if m > 0 else -math.inf, -100)
                     + (1 - t) * max(math.log(1 - m) if m < 1 else -math.inf, -100))
        if method.form == "masked":
            return sum(bce(float(M[c]), max(float(Fs[c]), 0)) for c in annotated) / max(len(annotated), 1)
        mean_all = sum(bce(float(M[c]), max(float(Fs[c]), 0)) for c in cells) / len(cells)
        return mean_all * len(annotated) / len(cells)
    Mk, Fk = M[keep], Fs[keep]
    a = brute_force_threshold(Mk, Fk)
    align = (sum(abs(math.tanh(5 * (float(M[c]) - a)) - float(Fs[c])) for c in annotated) / len(annotated)
             if annotated else 0.0)
    if method.variant == "G":
        T = torch.zeros_like(M)
        for b in keep:
            blurred = transcribe_blur(Fs[b].clamp(min=0))
            T[b] = blurred / (blurred.max() + 1e-6)
    else:
        positive_only = (P.bool() & ~N.bool()).double().unsqueeze(1)
        raw = F.conv2d(positive_only, projector.weight.double(), projector.bias.double(),
                       stride=projector.geometry[1], padding=projector.geometry[2]).squeeze(1)
        T = transcribe_normalize(raw).detach()  # read as floats below
    fit_term = sum(abs(float(M[c]) - float(T[c])) for c in cells) / len(cells)
    reg = sum((float(T[c]) - max(float(Fs[c]), 0.0)) ** 2 for c in cells) / len(cells) if method.reg else 0.0
    return max(align - method.eta, 0.0) + fit_term + method.reg * reg


# -- a tiny float64 model: 8×8 input, Grad-CAM at the 4×4 pooled features --------------------------
class Tiny(nn.Module):
    GRADCAM_LAYER = "features.2"

    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, classes))

    def forward(self, x):
        return self.head(self.features(x))


def manual_maps(model, x, y):
    """Grad-CAM by hand: A, w = mean ∂logit_y/∂A (constant), cam = Σ w A, then res.md's M."""
    activation = model.features(x)
    logits = model.head(activation)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), activation, retain_graph=True)
    weights = grad.mean(dim=(2, 3), keepdim=True).detach()
    return transcribe_normalize((weights * activation).sum(1)), logits


def make_batch(batch=5, size=8, seed=0, has=None):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size, size, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=generator)
    positive = torch.rand(batch, size, size, generator=generator) < 0.4
    negative = (torch.rand(batch, size, size, generator=generator) < 0.2)
    has = torch.ones(batch, dtype=torch.bool) if has is None else torch.tensor(has)
    return x, y, positive, negative, has


def model64(seed=0):
    torch.manual_seed(seed)
    return Tiny().double()


METHODS = [
    pytest.param(lambda: GRADIA(), id="gradia"),
    pytest.param(lambda: HAICS(form="masked"), id="haics-masked"),
    pytest.param(lambda: HAICS(form="released"), id="haics-released"),
    pytest.param(lambda: RES("G"), id="res-g"),
    pytest.param(lambda: RES("L"), id="res-l"),
    pytest.param(lambda: RES("G", eta=0.0, weight=2.5), id="res-g-eta0-w2.5"),
    pytest.param(lambda: RES("L", reg=0.7), id="res-l-reg"),
]


@pytest.mark.parametrize("make", METHODS)
@pytest.mark.parametrize("has", [None, [True, False, True, False, True]], ids=["all", "mixed"])
def test_loss_matches_transcription(make, has):
    method = make()
    model = model64()
    x, y, positive, negative, has_mask = make_batch(has=has)
    projector = method.projector if isinstance(method, RES) else None
    if projector is not None:
        projector.double()  # built at the first batch in this dtype
    out = method.loss(model, (x, y, positive, negative, has_mask), epoch=0)
    M, logits = manual_maps(model, x, y)
    expected_exp = float(transcribe_exp_loss(method, M.detach(), positive, negative, has_mask, projector))
    expected = F.cross_entropy(logits, y).item() + method.weight * expected_exp
    assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert out.terms["exp"].item() == pytest.approx(expected_exp, rel=1e-10, abs=1e-12)


def test_maps_match_manual_gradcam():
    method = RES("G")
    model = model64()
    x, y, *_ = make_batch()
    maps, logits = method.maps(model, x, y)
    expected, expected_logits = manual_maps(model, x, y)
    torch.testing.assert_close(maps, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, expected_logits)


# -- the threshold --------------------------------------------------------------------------------
@settings(max_examples=300)
@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_threshold_equals_brute_force(n_negative, n_positive, levels, seed):
    """Values on a coarse grid, so ties between cells and between candidates are common."""
    generator = torch.Generator().manual_seed(seed)
    n = n_negative + n_positive + 5
    maps = torch.randint(0, levels + 1, (n,), generator=generator).double() / levels
    target = torch.zeros(n, dtype=torch.float64)
    order = torch.randperm(n, generator=generator)
    target[order[:n_negative]] = -1
    target[order[n_negative:n_negative + n_positive]] = 1
    assert explanation_threshold(maps, target).item() == brute_force_threshold(maps, target)


@pytest.mark.parametrize("negatives,positives,expected", [
    ([], [0.5], 0.5),                 # one positive: a = its value (v <= M counts)
    ([], [0.5, 0.5], 0.5),
    ([0.3], [], 0.3 + 1e-4),          # one negative: a = its value + 1e-4 (v > M counts)
    ([0.5], [0.5], 0.5 + 1e-4),       # a tie of scores: the first candidate (negatives first) wins
    ([0.9], [0.1], 0.9 + 1e-4),       # no threshold separates them: score 1 for both, first wins
    ([0.1, 0.2], [0.6, 0.7], 0.2 + 1e-4),
    ([], [], 0.0),
])
def test_threshold_cases(negatives, positives, expected):
    maps = torch.tensor(negatives + positives + [0.42], dtype=torch.float64)
    target = torch.tensor([-1.0] * len(negatives) + [1.0] * len(positives) + [0.0], dtype=torch.float64)
    assert explanation_threshold(maps, target).item() == pytest.approx(expected, abs=1e-15)
    assert brute_force_threshold(maps, target) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threshold_random_and_shapes(dtype):
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 5, 6, generator=generator).to(dtype)
    target = torch.randint(-1, 2, (4, 5, 6), generator=generator).to(dtype)
    assert explanation_threshold(maps, target).item() == brute_force_threshold(maps, target)
    assert explanation_threshold(maps, torch.zeros_like(target)).item() == 0.0
    assert explanation_threshold(maps[:0], target[:0]).item() == 0.0


# -- gradient paths, mixed batches, vanishing masks -------------------------------------------------
@pytest.mark.parametrize("make", METHODS)
def test_explanation_gradient_reaches_backbone_not_classifier(make):
    method = make()
    model = model64()
    x, y, positive, negative, has = make_batch()
    method.weight = 1.0
    if isinstance(method, RES) and method.projector is not None:
        method.projector.double()
    maps, _ = method.maps(model, x, y)
    target = signed_target(positive, negative, tuple(maps.shape[-2:])).double()
    exp, _ = method.explanation_loss(maps, target, has, positive, negative)
    exp.backward()
    assert model.features[0].weight.grad is not None and model.features[0].weight.grad.abs().sum() > 0
    for parameter in model.head.parameters():
        assert parameter.grad is None or not parameter.grad.any()


@pytest.mark.parametrize("make", METHODS)
def test_mixed_batch_equals_annotated_subset(make):
    """Unannotated images change neither the explanation loss nor its value (no BatchNorm here)."""
    model = model64()
    x, y, positive, negative, _ = make_batch(batch=6)
    has = torch.tensor([True, False, True, False, False, True])
    method = make()
    mixed = method.loss(model, (x, y, positive, negative, has), 0).terms["exp"]
    subset = method.loss(model, (x[has], y[has], positive[has], negative[has], has[has]), 0).terms["exp"]
    assert mixed.item() == pytest.approx(subset.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("make", METHODS)
def test_no_annotation_and_vanishing_masks_are_finite(make):
    model = model64()
    x, y, positive, negative, has = make_batch()
    method = make()
    none = method.loss(model, (x, y, positive, negative, torch.zeros_like(has)), 0)
    assert none.terms["exp"].item() == 0.0
    # one-pixel masks at odd coordinates: nearest sampling at (2i, 2j) never sees them
    positive = torch.zeros_like(positive)
    positive[:, 1, 3] = True
    negative = torch.zeros_like(negative)
    negative[:, 5, 7] = True
    out = method.loss(model, (x, y, positive, negative, has), 0)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_constant_maps_give_finite_losses():
    """A dead layer (all-zero activations) gives M = 0 everywhere: still no NaN."""
    model = model64()
    with torch.no_grad():
        model.features[0].weight.zero_()
        model.features[0].bias.fill_(-1.0)
    x, y, positive, negative, has = make_batch()
    for make in METHODS:
        out = make.values[0]().loss(model, (x, y, positive, negative, has), 0)
        assert torch.isfinite(out.loss)


# -- Φ of RES-L ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_size,map_size", [((224, 224), (7, 7)), ((32, 32), (16, 16)), ((32, 32), (8, 8)),
                                                 ((30, 30), (10, 10)), ((16, 12), (16, 12)), ((14, 28), (7, 4))])
def test_projector_geometry_gives_map_size(input_size, map_size):
    kernel, stride, padding = projector_geometry(input_size, map_size)
    out = nn.Conv2d(1, 1, kernel, stride, padding)(torch.zeros(1, 1, *input_size))
    assert tuple(out.shape[-2:]) == map_size
    if input_size == (224, 224):
        assert (kernel, stride, padding) == ((64, 64), (32, 32), (16, 16))


def test_projector_geometry_rejects_non_multiples():
    with pytest.raises(ValueError, match="whole multiple"):
        projector_geometry((30, 30), (7, 7))


def test_res_l_trains_projector_and_checkpoints_it(tmp_path):
    model = Tiny()
    method = RES("L")
    x, y, positive, negative, has = make_batch()
    loader = [(x.float(), y, positive, negative, has)] * 2
    fit(model, method, loader, epochs=1, progress=False, checkpoint_dir=tmp_path)
    weight = method.projector.weight.detach().clone()
    assert weight.shape == (1, 1, 4, 4)
    restored = RES("L")
    fit(Tiny(), restored, loader, epochs=1, progress=False, checkpoint_dir=tmp_path)  # resumes: nothing to do
    torch.testing.assert_close(restored.projector.weight, weight)
    fit(model, method, loader, epochs=2, progress=False, checkpoint_dir=tmp_path)
    assert not torch.equal(method.projector.weight, weight)  # the optimiser trains Φ


def test_methods_train_with_fit_and_evaluate():
    torch.manual_seed(0)
    x, y, positive, negative, has = make_batch(batch=8)
    loader = [(x.float(), y, positive, negative, has)]
    for make in METHODS:
        model = Tiny()
        history = fit(model, make.values[0](), loader, epochs=1, progress=False)
        assert math.isfinite(history[-1]["loss"]) and "exp" in history[-1]
        report = evaluate_explanations(model, loader)
        assert 0 <= report["accuracy"] <= 1 and report["annotated"] == 8 and 0 <= report["iou"] <= 1


def test_layer_by_module_and_by_name_agree():
    model = model64()
    x, y, positive, negative, has = make_batch()
    by_name = RES("G", layer="features.2").loss(model, (x, y, positive, negative, has), 0).loss
    by_module = RES("G", layer=model.features[2]).loss(model, (x, y, positive, negative, has), 0).loss
    assert by_name.item() == by_module.item()


# -- bad inputs --------------------------------------------------------------------------------------
def test_bad_inputs():
    model = model64()
    x, y, positive, negative, has = make_batch()
    with pytest.raises(ValueError, match="positive_mask"):
        RES("G").loss(model, (x, y, positive[:, :4], negative, has), 0)
    with pytest.raises(ValueError, match="negative_mask"):
        RES("G").loss(model, (x, y, positive, negative[:3], has), 0)
    with pytest.raises(ValueError, match="has_mask"):
        RES("G").loss(model, (x, y, positive, negative, has[:2]), 0)
    with pytest.raises(ValueError, match="positive_mask, negative_mask, has_mask"):
        RES("G").loss(model, (x, y), 0)
    with pytest.raises(ValueError, match="variant"):
        RES("X")
    with pytest.raises(ValueError, match="reg"):
        RES("G", reg=1.0)
    with pytest.raises(ValueError, match="form"):
        HAICS(form="other")
    with pytest.raises(ValueError, match="weight"):
        GRADIA(weight=-1)
    with pytest.raises(ValueError, match="not a submodule"):
        GRADIA(layer="features.9").loss(model, (x, y, positive, negative, has), 0)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match="GRADCAM_LAYER"):
        GRADIA().loss(plain, (x.float(), y, positive, negative, has), 0)


def test_registered_in_methods():
    from saliency_fast.train import OBJECTIVES as REGISTRY

    assert isinstance(REGISTRY["res-g"](), RES) and REGISTRY["res-g"]().variant == "G"
    assert REGISTRY["res-l"]().variant == "L"
    assert isinstance(REGISTRY["gradia"](), GRADIA) and isinstance(REGISTRY["haics"](), HAICS)


@pytest.mark.parametrize("make", METHODS)
def test_autocast_keeps_losses_finite(make):
    """Under autocast (bfloat16 on CPU) the maps are cast to float32 for the losses; HAICS's BCE runs
    outside autocast (CUDA refuses binary_cross_entropy under autocast)."""
    x, y, positive, negative, has = make_batch()
    history = fit(Tiny(), make(), [(x.float(), y, positive, negative, has)], epochs=1, progress=False,
                  amp=True)
    assert math.isfinite(history[-1]["loss"]) and math.isfinite(history[-1]["exp"])


def _ddp_res_l_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = Tiny()
        method = RES("L")
        x, y, positive, negative, has = make_batch(batch=6, seed=rank)  # different data per rank: Φ grads differ
        loader = [(x.float(), y, positive, negative, has)] * 2
        fit(model, method, loader, 2, optimizer=torch.optim.SGD(list(model.parameters()) + method.parameters(), lr=0.5),
            progress=False)
        torch.save({"phi": method.projector.weight.detach(), "model": model.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        destroy_process_group()  # collects fit's DDP wrapper first: see saliency_fast/_distributed.py


def test_ddp_keeps_projector_in_sync(tmp_path):
    """Φ lives outside the DDP-wrapped model: the trainer averages its gradients across processes,
    so every rank keeps the same Φ (and DDP keeps the same model)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_res_l_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.testing.assert_close(first["phi"], second["phi"], rtol=0, atol=0)
    for name in first["model"]:
        torch.testing.assert_close(first["model"][name], second["model"][name], rtol=0, atol=0)


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the given parameters' gradients as the step sees them."""

    def __init__(self, params, watched, lr):
        super().__init__(params, lr=lr)
        self.watched, self.seen = watched, []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for p in self.watched])
        return super().step(closure)


def _ddp_phi_gradient_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    reduce = torch.distributed.all_reduce
    try:
        torch.manual_seed(0)
        model, method = Tiny(), RES("L")
        phi = [method.projector.weight, method.projector.bias]
        local, phi_reductions = [[], []], []
        for index, parameter in enumerate(phi):  # registered first: this process's own gradient, before averaging
            parameter.register_post_accumulate_grad_hook(lambda p, index=index: local[index].append(p.grad.detach().clone()))

        def counting_all_reduce(tensor, *args, **kwargs):
            phi_reductions.extend(index for index, p in enumerate(phi) if tensor is p.grad)
            return reduce(tensor, *args, **kwargs)

        torch.distributed.all_reduce = counting_all_reduce
        x, y, positive, negative, has = make_batch(batch=6, seed=rank)  # different data per rank: Φ grads differ
        optimizer = _RecordingSGD(list(model.parameters()) + method.parameters(), phi, lr=0.5)
        fit(model, method, [(x.float(), y, positive, negative, has)] * 2, 1, optimizer=optimizer, progress=False)
        torch.save({"local": local, "stepped": optimizer.seen, "reductions": phi_reductions},
                   f"{out_dir}/phi{rank}.pt")
    finally:
        torch.distributed.all_reduce = reduce
        destroy_process_group()  # collects fit's DDP wrapper first: see saliency_fast/_distributed.py


def test_ddp_averages_projector_gradients_once(tmp_path):
    """Φ's gradients are all-reduced once per step (by the trainer, which averages every gradient
    DDP does not see), and the optimiser steps with the plain average of the processes' gradients."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_phi_gradient_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"phi{r}.pt", weights_only=True) for r in (0, 1)]
    for record in ranks:
        assert sorted(record["reductions"]) == [0, 0, 1, 1]  # 2 steps × (weight, bias), once each
        assert [len(grads) for grads in record["local"]] == [2, 2] and len(record["stepped"]) == 2
    for step in range(2):
        for index in range(2):  # weight, bias
            own = [record["local"][index][step] for record in ranks]
            assert not torch.equal(own[0], own[1])  # the ranks' own gradients differ...
            average = (own[0] + own[1]) / 2
            for record in ranks:  # ...and each steps with their average, reduced once
                torch.testing.assert_close(record["stepped"][step][index], average, rtol=0, atol=0)
