"""Evaluation metrics vs plain one-call-per-step implementations in float64, the Gini formula
and Quantus Sparseness, the localisation definitions on hand-made masks, and bad inputs."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from saliency_fast import metrics, ops
from saliency_fast._common import score_outputs
from saliency_fast.references import make_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_cnn(channels=2, side=10, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(3 * (side // 2) ** 2, classes),
    ).double()


@pytest.fixture
def setup():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(3, 2, 10, 10, generator=generator, dtype=torch.float64)
    attributions = torch.randn(3, 10, 10, generator=generator, dtype=torch.float64)
    attributions[0, :4] = 0.25  # ties: broken by flat index
    return tiny_cnn(), inputs, attributions


# --- plain implementations, one model call per curve point --------------------------------------
def plain_curve(model, start, finish, maps, target, pixels_per_step, score):
    batch, channels, height, width = start.shape
    n = height * width
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    scores, probabilities = [], []
    for step in range(math.ceil(n / pixels_per_step) + 1):
        image = start.clone().flatten(2)
        chosen = order[:, : min(step * pixels_per_step, n)]
        index = chosen.unsqueeze(1).expand(batch, channels, -1)
        image.scatter_(2, index, finish.flatten(2).gather(2, index))
        with torch.no_grad():
            logits = model(image.view_as(start))
        scores.append(score_outputs(logits, target, score))
        probabilities.append(torch.softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1))
    return torch.stack(scores, 1), torch.stack(probabilities, 1)


def plain_deletion_insertion(model, inputs, maps, target, pixels_per_step, score, insertion_reference):
    zeros = torch.zeros_like(inputs)
    deletion, deletion_prob = plain_curve(model, inputs, zeros, maps, target, pixels_per_step, score)
    insertion, insertion_prob = plain_curve(model, insertion_reference, inputs, maps, target, pixels_per_step, score)
    return {
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "deletion_auc": deletion.mean(1) / deletion[:, 0],
        "insertion_auc": insertion.mean(1) / insertion[:, -1],
        "deletion_auc_prob": torch.from_numpy(np.trapezoid(deletion_prob.numpy(), np.linspace(0, 1, deletion.shape[1]), axis=1)),
        "insertion_auc_prob": torch.from_numpy(np.trapezoid(insertion_prob.numpy(), np.linspace(0, 1, insertion.shape[1]), axis=1)),
        "deletion_prob_curve": deletion_prob,
        "insertion_prob_curve": insertion_prob,
    }


# --- deletion / insertion ----------------------------------------------------------------------
@pytest.mark.parametrize("score", ["logit", "probability", "log_probability"])
@pytest.mark.parametrize("pixels_per_step, max_batch", [(7, None), (7, 1), (10, 5), (33, 2)])
def test_deletion_insertion_matches_plain_loop(setup, score, pixels_per_step, max_batch):
    model, inputs, maps = setup
    target = torch.tensor([0, 3, 1])
    result = metrics.deletion_insertion(model, inputs, maps, target=target, pixels_per_step=pixels_per_step,
                                        score=score, max_batch=max_batch)
    expected = plain_deletion_insertion(model, inputs, maps, target, pixels_per_step, score,
                                        make_reference("blur", inputs, "insertion_reference"))
    assert result.deletion_curve.shape == (3, math.ceil(100 / pixels_per_step) + 1)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(result, name), value, rtol=1e-12, atol=1e-12, msg=name)
    assert result.counts[0] == 0 and result.counts[-1] == 100


def test_defaults_predicted_class_and_references(setup):
    model, inputs, maps = setup
    result = metrics.deletion_insertion(model, inputs, maps)
    target = model(inputs).argmax(1)
    assert result.pixels_per_step == 10
    expected = plain_deletion_insertion(model, inputs, maps, target, 10, "logit",
                                        make_reference("blur", inputs, "x"))
    torch.testing.assert_close(result.insertion_curve, expected["insertion_curve"], rtol=1e-12, atol=1e-12)
    # the curve's ends are the clean image: deletion starts and insertion ends at f_c(x)
    clean = score_outputs(model(inputs), target)
    torch.testing.assert_close(result.deletion_curve[:, 0], clean)
    torch.testing.assert_close(result.insertion_curve[:, -1], clean)


def test_tensor_references_and_channel_attributions(setup):
    model, inputs, maps = setup
    per_channel = torch.stack([maps * 0.25, maps * 0.75], dim=1)
    reference = torch.full_like(inputs[:1], 0.5)
    kwargs = dict(target=2, pixels_per_step=9, deletion_reference=reference, insertion_reference=reference)
    summed = metrics.deletion_insertion(model, inputs, maps, **kwargs)
    channels = metrics.deletion_insertion(model, inputs, per_channel, **kwargs)
    torch.testing.assert_close(channels.deletion_curve, summed.deletion_curve)
    target = torch.full((3,), 2)
    expected, _ = plain_curve(model, inputs, reference.expand_as(inputs), maps, target, 9, "logit")
    torch.testing.assert_close(summed.deletion_curve, expected, rtol=1e-12, atol=1e-12)


def test_one_path_and_reference_fallback(setup, monkeypatch):
    model, inputs, maps = setup
    both = metrics.deletion_insertion(model, inputs, maps, target=1)
    deletion_only = metrics.deletion_insertion(model, inputs, maps, target=1, paths=("deletion",))
    assert deletion_only.insertion_curve is None and deletion_only.insertion_auc is None
    torch.testing.assert_close(deletion_only.deletion_curve, both.deletion_curve)
    monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    fallback = metrics.deletion_insertion(model, inputs, maps, target=1)
    torch.testing.assert_close(fallback.insertion_auc, both.insertion_auc)


def test_model_calls_and_chunking_counts(setup):
    model, inputs, maps = setup
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    result = metrics.deletion_insertion(model, inputs, maps, pixels_per_step=10, max_batch=8)
    # 1 target call of 3 images, then per path 6 chunks of 8 or fewer images (11 points)
    assert result.model_calls == len(calls) == 1 + 2 * 6
    assert max(calls) <= 8 and calls[0] == 3


@pytest.mark.parametrize("batch, points, max_batch", [(64, 104, 64), (64, 29, 111), (3, 11, 8), (5, 7, 1),
                                                      (1, 104, 64), (1000, 104, 64), (7, 3, 100)])
def test_chunk_shape_takes_fewest_calls_then_fewest_images(batch, points, max_batch):
    images, steps = metrics._chunk_shape(batch, points, max_batch)
    assert 1 <= images * steps <= max_batch
    calls = metrics._chunk_count(batch, points, (images, steps))
    # every shape within the bound, not only those _chunk_shape tries
    fewest = min(math.ceil(batch / b) * math.ceil(points / s)
                 for b in range(1, batch + 1) for s in range(1, points + 1) if b * s <= max_batch)
    assert calls == fewest
    assert all(math.ceil(batch / b) * math.ceil(points / s) > fewest
               for b in range(1, images) for s in range(1, points + 1) if b * s <= max_batch)


@pytest.mark.parametrize("shape, device, images", [
    ((1, 32, 32), "cpu", 64), ((3, 32, 32), "cpu", 21),  # small: what fits in 64K elements (cache)
    ((3, 224, 224), "cpu", 16), ((3, 512, 512), "cpu", 5), ((3, 2048, 2048), "cpu", 1),  # large: several a call
    ((3, 224, 224), "meta", 111),  # an accelerator: 16M elements
])
def test_default_max_batch(shape, device, images):
    assert metrics.default_max_batch(torch.empty((2, *shape), device=device)) == images


def test_default_chunks_group_consecutive_points_of_few_images():
    """64 digits × 104 points on CPU: 104 calls of 8 images × 8 points, not 64 images × 1 point."""
    assert metrics._chunk_shape(64, 104, metrics.default_max_batch(torch.zeros(64, 1, 32, 32))) == (8, 8)


def test_model_state_restored_and_no_grad(setup):
    model, inputs, maps = setup
    model.train()
    metrics.deletion_insertion(model, inputs, maps.requires_grad_(True))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_plain_callable_model(setup):
    model, inputs, maps = setup
    result = metrics.deletion_insertion(lambda x: model(x), inputs, maps, target=0)
    torch.testing.assert_close(result.deletion_curve, metrics.deletion_insertion(model, inputs, maps, target=0).deletion_curve)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_deletion_insertion_cuda_matches_cpu(setup):
    model, inputs, maps = setup
    cpu = metrics.deletion_insertion(model, inputs, maps, target=1, max_batch=4)
    gpu = metrics.deletion_insertion(model.cuda(), inputs.cuda(), maps.cuda(), target=1, max_batch=4)
    for name in ("deletion_curve", "insertion_curve", "deletion_auc_prob", "insertion_auc"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=1e-9, atol=1e-9)


def test_deletion_curve_matches_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 4)).eval()
    inputs, maps = torch.rand(3, 1, 8, 8), torch.randn(3, 8, 8)
    target = torch.tensor([0, 2, 3])
    pixel_flipping = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, normalise=False, abs=False,
                                           disable_warnings=True)
    curves = pixel_flipping(model=model, x_batch=inputs.numpy(), y_batch=target.numpy(),
                            a_batch=maps.unsqueeze(1).numpy(), channel_first=True, softmax=False, device="cpu")
    result = metrics.deletion_insertion(model, inputs, maps, target=target, pixels_per_step=4, paths=("deletion",))
    # Quantus starts after the first step (it has no unperturbed point)
    torch.testing.assert_close(result.deletion_curve[:, 1:], torch.tensor(np.asarray(curves), dtype=torch.float32),
                               rtol=1e-5, atol=1e-5)


# --- masked accuracy ---------------------------------------------------------------------------
@pytest.mark.parametrize("max_batch", [None, 4])
def test_masked_accuracy_matches_plain_loop(setup, max_batch):
    model, inputs, maps = setup
    labels = model(inputs).argmax(1)
    labels[1] = (labels[1] + 1) % 4
    fractions = (0.0, 0.1, 0.25, 0.5, 0.905, 1.0)
    result = metrics.masked_accuracy(model, inputs, maps, labels, fractions=fractions, max_batch=max_batch)
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    assert result.counts.tolist() == [0, 10, 25, 50, 91, 100]  # round half up of f·H·W
    for j, count in enumerate(result.counts.tolist()):
        image = inputs.clone().flatten(2)
        image[torch.arange(3).view(-1, 1), :, order[:, :count]] = 0.0
        with torch.no_grad():
            correct = model(image.view_as(inputs)).argmax(1) == labels
        assert torch.equal(result.correct[:, j], correct)
        assert result.accuracy[j] == correct.double().mean()
    assert not result.correct[1, 0]


# --- Gini ---------------------------------------------------------------------------------------
def gini_by_formula(values):
    a = sorted(abs(float(v)) + 1e-7 for v in values)
    n = len(a)
    return sum((2 * (i + 1) - n - 1) * a[i] for i in range(n)) / (n * sum(a))


def test_gini_formula_and_known_values():
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(4, 2, 5, 6, generator=generator, dtype=torch.float64)
    expected = torch.tensor([gini_by_formula(m.flatten()) for m in maps], dtype=torch.float64)
    torch.testing.assert_close(metrics.gini(maps), expected, rtol=1e-12, atol=1e-12)
    one_hot = torch.zeros(1, 10, 10, dtype=torch.float64)
    one_hot[0, 3, 4] = 5.0
    assert metrics.gini(one_hot).item() == pytest.approx(1 - 1 / 100, abs=1e-5)  # the 1e-7 offset shifts it by ~2e-6
    assert metrics.gini(torch.ones(1, 4, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_gini_matches_quantus_sparseness():
    quantus = pytest.importorskip("quantus")
    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    sparseness = quantus.Sparseness(normalise=False, abs=True, disable_warnings=True)
    expected = sparseness(model=None, x_batch=np.zeros((5, 1, 8, 8)), y_batch=np.zeros(5, dtype=int),
                          a_batch=maps.numpy().copy(), device="cpu")
    torch.testing.assert_close(metrics.gini(maps), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# --- completeness -------------------------------------------------------------------------------
def test_completeness_error_formula_and_exact_attribution():
    torch.manual_seed(4)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    inputs = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    reference = torch.full_like(inputs, 0.3)
    weights = linear[1].weight.view(3, 2, 4, 4)
    exact = (inputs - reference) * weights[[1, 2]]  # IG of a linear model is exact
    error = metrics.completeness_error(linear, inputs, exact, reference, target=torch.tensor([1, 2]))
    torch.testing.assert_close(error, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    maps = torch.randn(2, 4, 4, dtype=torch.float64)
    logits = linear(torch.cat([inputs, reference]))
    gap = logits[[0, 1], [1, 2]] - logits[[2, 3], [1, 2]]
    expected = (maps.sum((1, 2)) - gap).abs() / gap.abs()
    got = metrics.completeness_error(linear, inputs, maps, reference, target=torch.tensor([1, 2]))
    torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12)


# --- localisation -------------------------------------------------------------------------------
def test_localization_hand_made_masks():
    maps = torch.zeros(2, 4, 4, dtype=torch.float64)
    maps[0, :2, :2] = 1.0  # selects the top-left 2×2
    maps[0, 0, 0] = 2.0    # maximum inside the positive mask
    maps[1, 3, 3] = 1.0    # selects one pixel outside the positive mask
    positive = torch.zeros(2, 4, 4, dtype=torch.bool)
    positive[:, :2, :] = True  # top two rows (8 pixels)
    result = metrics.localization(maps, positive, threshold=0.5)
    # image 0: selected {(0,0), (0,1), (1,0), (1,1)} (the 1.0 pixels normalise to 0.5) → 4 hits
    torch.testing.assert_close(result["iou"], torch.tensor([4 / 8, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["precision"], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["recall"], torch.tensor([0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["f1"], torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["pointing_game"], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result["f1_mean"], torch.tensor(1 / 3, dtype=torch.float64))
    # a negative mask restricts false positives to annotated pixels
    negative = torch.zeros(2, 4, 4, dtype=torch.bool)
    negative[1, 3, :2] = True  # does not contain (3, 3)
    with_negative = metrics.localization(maps, positive, negative, threshold=0.5)
    assert with_negative["precision"][1] == 0.0  # no hits, no counted false positives → 0
    maps[1, 0, 0] = 1.0
    with_negative = metrics.localization(maps, positive, negative, threshold=0.5)
    assert with_negative["precision"][1] == 1.0
    assert metrics.localization(maps, positive, threshold=0.5)["precision"][1] == 0.5


def test_localization_upsamples_maps_to_the_mask_size():
    maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    positive = torch.zeros(1, 8, 8, dtype=torch.bool)
    positive[0, :4, 4:] = True
    up = torch.nn.functional.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    selected = ((up - up.min()) / (up.max() - up.min()) >= 0.3)[0]
    hits = (selected & positive[0]).sum().item()
    result = metrics.localization(maps, positive.long(), threshold=0.3)
    assert result["iou"].item() == pytest.approx(hits / (selected | positive[0]).sum().item())
    assert result["recall"].item() == pytest.approx(hits / 16)
    assert result["pointing_game"].item() == 1.0


# --- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, a: metrics.deletion_insertion(m, x, a[:, :5]), ValueError, "attributions must match the inputs"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a[:2]), ValueError, "attributions must match the inputs"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a.unsqueeze(1).expand(3, 3, 10, 10)), ValueError,
     "attributions must match the inputs"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a.masked_fill(a > 1, float("nan"))), ValueError,
     "attributions contains NaN"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, torch.ones_like(a)), ValueError, "are constant"),
    (lambda m, x, a: metrics.masked_accuracy(m, x, a * 0, torch.zeros(3, dtype=torch.long)), ValueError, "are constant"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, pixels_per_step=0), ValueError, "pixels_per_step"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, max_batch=0), ValueError, "max_batch"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, score="softmax"), ValueError, "score"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, paths=("deletion", "other")), ValueError, "paths"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, insertion_reference="noise"), ValueError,
     "insertion_reference"),
    (lambda m, x, a: metrics.deletion_insertion(m, x, a, target=7), ValueError, "target"),
    (lambda m, x, a: metrics.masked_accuracy(m, x, a, torch.zeros(2, dtype=torch.long)), ValueError, "labels"),
    (lambda m, x, a: metrics.masked_accuracy(m, x, a, torch.zeros(3, dtype=torch.long), fractions=(0.5, 1.5)),
     ValueError, "fractions"),
    (lambda m, x, a: metrics.completeness_error(m, x, a[:, :3]), ValueError, "attributions must match"),
    (lambda m, x, a: metrics.gini(a.masked_fill(a > 1, float("inf"))), ValueError, "attributions contains NaN"),
    (lambda m, x, a: metrics.gini(a.long()), TypeError, "attributions must be a floating"),
])
def test_bad_inputs(setup, call, error, match):
    model, inputs, maps = setup
    with pytest.raises(error, match=match):
        call(model, inputs, maps)


def test_constant_maps_allowed_on_request(setup):
    model, inputs, maps = setup
    result = metrics.deletion_insertion(model, inputs, torch.zeros_like(maps), allow_constant=True, target=0)
    ranked_by_index = -torch.arange(100, dtype=torch.float64).view(1, 10, 10).expand(3, 10, 10)
    expected = metrics.deletion_insertion(model, inputs, ranked_by_index, target=0)
    torch.testing.assert_close(result.deletion_curve, expected.deletion_curve)


@pytest.mark.parametrize("masks, match", [
    (lambda p: (p[:, :2], None), "positive_mask is .* but the attribution maps are"),
    (lambda p: (p[:1], None), "positive_mask must have shape"),
    (lambda p: (p, p[:, :6]), "negative_mask has shape"),
    (lambda p: (p.double() * 2, None), "positive_mask must be boolean or hold only 0 and 1"),
    (lambda p: (p & False, None), "positive_mask is empty"),
])
def test_localization_bad_masks(masks, match):
    maps = torch.randn(2, 4, 4)
    positive = torch.zeros(2, 8, 8, dtype=torch.bool)
    positive[:, 2:5, 2:5] = True
    positive_mask, negative_mask = masks(positive)
    with pytest.raises(ValueError, match=match):
        metrics.localization(maps, positive_mask, negative_mask)
    with pytest.raises(ValueError, match="are constant"):
        metrics.localization(torch.ones(2, 4, 4), positive)
    with pytest.raises(ValueError, match="attributions contains NaN"):
        metrics.localization(torch.full((2, 4, 4), float("nan")), positive)
