"""The embedded digits data and the bundled DigitsCNN weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saliency_fast.data import digits_loaders, load_digits
from saliency_fast.data.digits import stratified_split_indices
from saliency_fast.models import DigitsCNN, LinearModel, digits_cnn, digits_cnn_weights_path

N_DIGITS = 1797


def test_split_sizes_and_types():
    train_x, train_y = load_digits("train")
    test_x, test_y = load_digits("test")
    all_x, all_y = load_digits("all")
    assert train_x.shape == (1438, 1, 32, 32) and test_x.shape == (359, 1, 32, 32)
    assert all_x.shape == (N_DIGITS, 1, 32, 32)
    assert len(train_y) + len(test_y) == N_DIGITS
    for x, y in [(train_x, train_y), (test_x, test_y), (all_x, all_y)]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0  # full-intensity strokes survive the upsampling
        assert set(y.tolist()) == set(range(10))


def test_split_is_deterministic_and_seeded():
    first_x, first_y = load_digits("test")
    again_x, again_y = load_digits("test")
    assert torch.equal(first_x, again_x) and torch.equal(first_y, again_y)
    other_x, _ = load_digits("test", seed=1)
    assert not torch.equal(first_x, other_x)


def test_train_and_test_partition_all_images():
    labels = load_digits("all", size=8)[1].numpy()
    train, test = stratified_split_indices(labels, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(N_DIGITS))
    all_x = load_digits("all")[0]
    assert torch.equal(load_digits("train")[0], all_x[torch.from_numpy(train)])
    assert torch.equal(load_digits("test")[0], all_x[torch.from_numpy(test)])


@pytest.mark.parametrize("test_fraction", [0.2, 0.5])
def test_split_is_stratified(test_fraction):
    all_counts = torch.bincount(load_digits("all", size=8)[1], minlength=10)
    test_counts = torch.bincount(load_digits("test", size=8, test_fraction=test_fraction)[1], minlength=10)
    expected = torch.round(all_counts.double() * test_fraction).long()
    assert torch.equal(test_counts, expected)


def test_size_8_is_the_raw_data_and_upsampling_is_bilinear():
    raw, _ = load_digits("all", size=8)
    assert torch.equal(raw * 16, torch.round(raw * 16))  # integer intensities 0..16
    big, _ = load_digits("all", size=32)
    expected = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="validation"), "split"),
        (dict(split="train", size=0), "size"),
        (dict(split="train", test_fraction=1.0), "test_fraction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def test_loaders_yield_batches_and_shuffle_reproducibly():
    train_a, test_loader = digits_loaders(batch_size=100)
    train_b, _ = digits_loaders(batch_size=100)
    x, y = next(iter(train_a))
    assert x.shape == (100, 1, 32, 32) and y.shape == (100,)
    assert torch.equal(y, next(iter(train_b))[1])
    assert len(test_loader.dataset) == 359
    assert torch.equal(next(iter(test_loader))[1], load_digits("test")[1][:100])
    with pytest.raises(ValueError, match="batch_size"):
        digits_loaders(batch_size=0)


def test_bundled_weights_load_with_weights_only_and_reach_95_percent():
    with open(digits_cnn_weights_path(), "rb") as file:
        state = torch.load(file, weights_only=True)
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    model = digits_cnn()
    assert not model.training
    x, y = load_digits("test")
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).double().mean().item()
    assert accuracy >= 0.95, f"bundled DigitsCNN test accuracy {accuracy:.4f} < 0.95"


def test_digits_cnn_shapes_and_gradcam_layer():
    model = DigitsCNN()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 10)
    captured = {}
    model.get_submodule(DigitsCNN.GRADCAM_LAYER).register_forward_hook(
        lambda module, inputs, output: captured.setdefault("out", output)
    )
    model(torch.zeros(2, 1, 32, 32))
    assert captured["out"].shape == (2, 32, 16, 16)
    assert model.layer_for_gradcam is model.features[4]
    assert not digits_cnn(pretrained=False).training


def test_linear_model_is_linear_in_its_input():
    torch.manual_seed(0)
    model = LinearModel((1, 8, 8), num_classes=3, bias=False).double()
    a, b = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(2.0 * a + b), 2.0 * model(a) + model(b))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 1, 32, 32, dtype=torch.float64))


def test_embedded_data_equals_scikit_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    raw, labels = load_digits("all", size=8)
    torch.testing.assert_close(raw[:, 0].double() * 16, torch.from_numpy(reference.images), rtol=0, atol=0)
    assert torch.equal(labels, torch.from_numpy(reference.target).long())


def test_runtime_needs_no_scikit_learn():
    import os
    import subprocess
    import sys

    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; from saliency_fast.data import load_digits; from saliency_fast.models import digits_cnn; "
        "load_digits('test'); digits_cnn(); assert 'sklearn' not in sys.modules, 'sklearn was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    import saliency_fast.models as models

    monkeypatch.setattr(models, "digits_cnn_weights_path", lambda: tmp_path / "digits_cnn.pt")
    with pytest.raises(FileNotFoundError, match="train_digits.py"):
        models.digits_cnn()
