"""sf.interop: Quantus's explain_func (NumPy in and out, four Quantus metrics) and Captum
attribution objects as saliency_fast methods (attribute_dataset, metrics, evaluate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import saliency_fast as sf
from saliency_fast.commands.evaluate import evaluate_method
from saliency_fast.data import load_digits
from saliency_fast.models import digits_cnn

quantus = pytest.importorskip("quantus")
captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits("test")
    return digits_cnn().eval(), images[:4], labels[:4]


def test_quantus_explain_is_numpy_in_numpy_out_and_matches_the_method(digits):
    model, images, labels = digits
    maps = sf.interop.quantus_explain(model, images.numpy(), labels.numpy(), method="ig", n_steps=8)
    assert isinstance(maps, np.ndarray) and maps.shape == (4, 1, 32, 32) and maps.dtype == np.float32
    expected = sf.IntegratedGradients(model, n_steps=8).attribute(images, labels)
    np.testing.assert_array_equal(maps[:, 0], expected.numpy())
    per_channel = sf.interop.quantus_explain(model, images.numpy(), labels.numpy(), method="saliency",
                                             reduce_channels=False)
    assert per_channel.shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="method must be one of"):
        sf.interop.quantus_explain(model, images.numpy(), labels.numpy(), method="nonsense")


@pytest.mark.parametrize("method, options", [("saliency", {}), ("samp", {"pixels_per_step": 256})])
def test_quantus_metrics_run_through_the_adapter(digits, method, options):
    model, images, labels = digits
    x, y = images.numpy(), labels.numpy()
    common = dict(model=model, x_batch=x, y_batch=y, explain_func=sf.interop.quantus_explain,
                  explain_func_kwargs={"method": method, **options}, device="cpu")
    sparseness = quantus.Sparseness(disable_warnings=True)(**common)
    # Quantus's Sparseness is our Gini index of the same maps (its normalise/abs defaults).
    maps = torch.from_numpy(sf.interop.quantus_explain(model, x, y, method=method, **options))
    flat = maps.flatten(1)
    normalised = (flat.abs() / flat.abs().amax(dim=1, keepdim=True))
    np.testing.assert_allclose(sparseness, sf.metrics.gini(normalised).numpy(), rtol=1e-4)
    faithfulness = quantus.FaithfulnessCorrelation(nr_runs=8, subset_size=32, disable_warnings=True)(**common)
    sensitivity = quantus.MaxSensitivity(nr_samples=2, disable_warnings=True)(**common)
    flipping = quantus.PixelFlipping(features_in_step=64, disable_warnings=True)(**common)
    assert len(sparseness) == len(sensitivity) == len(flipping) == 4
    assert np.isfinite(faithfulness).all() and np.isfinite(sensitivity).all()
    curves = np.asarray(flipping)
    assert curves.shape == (4, 16) and ((curves >= 0) & (curves <= 1)).all()  # softmax scores after each flip


@pytest.mark.skipif(not hasattr(np, "trapz"), reason="Quantus 0.6 computes AUCs with np.trapz, removed in NumPy 2.4; "
                    "the test extra pins numpy<2.4")
def test_quantus_pixel_flipping_auc(digits):
    model, images, labels = digits
    aucs = quantus.PixelFlipping(features_in_step=64, return_auc_per_sample=True, disable_warnings=True)(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(), explain_func=sf.interop.quantus_explain,
        explain_func_kwargs={"method": "saliency"}, device="cpu")
    assert len(aucs) == 4 and np.isfinite(aucs).all()


def test_from_captum_matches_captum_and_our_method(digits):
    model, images, labels = digits
    method = sf.interop.from_captum(captum_attr.IntegratedGradients(model), n_steps=16)
    maps = method.attribute(images, labels.tolist())
    peer = captum_attr.IntegratedGradients(model).attribute(images, target=labels, n_steps=16).sum(1)
    assert torch.allclose(maps, peer, rtol=0, atol=1e-6)
    ours = sf.IntegratedGradients(model, n_steps=16).attribute(images, labels)
    assert float((maps - ours).abs().max()) <= 1e-4 * float(ours.abs().max())  # Captum's float32 weights
    with_baseline = method.attribute(images, labels, baselines=0.5)
    peer = captum_attr.IntegratedGradients(model).attribute(images, baselines=0.5, target=labels, n_steps=16).sum(1)
    assert torch.allclose(with_baseline, peer, rtol=0, atol=1e-6)


def test_from_captum_layer_method_is_upsampled_to_the_input(digits):
    model, images, labels = digits
    layer = model.get_submodule(model.GRADCAM_LAYER)  # the layer the digits CNN declares for the CAM family
    maps = sf.interop.from_captum(captum_attr.LayerGradCam(model, layer), relu_attributions=True).attribute(images, labels)
    ours = sf.GradCAM(model, layer=layer).attribute(images, labels)
    assert maps.shape == (4, 32, 32)
    assert torch.allclose(maps, ours, rtol=1e-5, atol=1e-6)


def test_from_captum_runs_through_attribute_dataset_and_evaluate(tmp_path, digits):
    model, images, labels = digits
    method = sf.interop.from_captum(captum_attr.Saliency(model), abs=False)
    manifest = sf.attribute_dataset(model, images, method, tmp_path / "run", progress=False, evaluate=True)
    assert manifest["identity"]["method"] == "CaptumMethod"
    stored = sf.load_attributions(tmp_path / "run")
    expected = sf.Saliency(model).attribute(images, model(images).argmax(1))
    assert torch.allclose(stored, expected, rtol=0, atol=1e-6)
    again = sf.attribute_dataset(model, images, method, tmp_path / "run", progress=False, evaluate=True)  # resumes
    assert again["identity"] == manifest["identity"]
    row, curves = evaluate_method("captum-saliency", method, model, images, labels, pixels_per_step=64)
    reference, _ = evaluate_method("saliency", sf.Saliency(model), model, images, labels, pixels_per_step=64)
    assert row["deletion_auc"] == pytest.approx(reference["deletion_auc"], rel=1e-5)
    assert row["insertion_auc"] == pytest.approx(reference["insertion_auc"], rel=1e-5)
    with pytest.raises(ValueError, match="need a method name"):
        sf.attribute_dataset(model, images, method, tmp_path / "amp", amp=True, progress=False)
