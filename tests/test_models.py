"""sf.models.Normalized / load_model / load_state and the CLI's image preparation, without the
optional torchvision/timm (those are in test_models_scale.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast.dataset import PreparedImages, method_parameters, prepare_image
from saliency_fast.models import Normalized, load_model, load_state


def gap_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).double().eval()


def test_normalized_applies_mean_and_std_inside_the_model():
    inner = gap_cnn()
    model = Normalized(inner, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mean = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), inner((x - mean) / std), rtol=0, atol=0)
    # an attribution of the wrapped model is one in pixel space: the chain rule's 1/std
    grad = sf.Saliency(model).attribute(x, 1, reduce_channels=False)
    inner_grad = sf.Saliency(inner).attribute((x - mean) / std, 1, reduce_channels=False)
    torch.testing.assert_close(grad, inner_grad / std, rtol=1e-12, atol=1e-15)


def test_normalized_rejects_bad_statistics_and_inputs():
    with pytest.raises(ValueError, match="one value per channel"):
        Normalized(gap_cnn(), (0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        Normalized(gap_cnn(), (0.5,) * 3, (0.2, 0.0, 0.2))
    with pytest.raises(TypeError, match="nn.Module"):
        Normalized(lambda x: x)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        Normalized(gap_cnn())(torch.rand(1, 1, 8, 8))


def test_cam_layer_names_may_omit_the_wrappers_prefix():
    model = Normalized(gap_cnn()).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert sf.GradCAM(model, "1").layer is model.model[1]
    torch.testing.assert_close(sf.CAM(model, "1").attribute(x, 2), sf.CAM(model).attribute(x, 2), rtol=0, atol=0)
    assert method_parameters("gradcam", model, layer="1")["layer"] == "model.1"


def test_load_state_reads_the_architecture_or_the_wrapper_state(tmp_path):
    trained, fresh = Normalized(gap_cnn()), Normalized(gap_cnn())
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save(trained.model.state_dict(), tmp_path / "inner.pt")
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "wrapper.pt")
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    for name in ("inner.pt", "wrapper.pt"):
        torch.testing.assert_close(load_state(Normalized(gap_cnn()), tmp_path / name)(x), trained(x), rtol=0, atol=0)
    assert not torch.equal(fresh(x), trained(x))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_state(fresh, tmp_path / "list.pt")


def test_load_model_specs_and_errors():
    assert isinstance(load_model("digits"), sf.models.DigitsCNN)
    assert isinstance(load_model("saliency_fast.models:DigitsCNN"), sf.models.DigitsCNN)
    with pytest.raises(ValueError, match="'torchvision:NAME', 'timm:NAME'"):
        load_model("resnet50")
    with pytest.raises(ValueError, match="--image-size must be a positive int"):
        load_model("digits", image_size=0)
    for package in ("torchvision", "timm"):
        try:
            __import__(package)
        except (ImportError, RuntimeError):  # absent, or a torchvision built for another torch
            with pytest.raises(ImportError, match=f"needs the optional package '{package}'"):
                load_model(f"{package}:resnet18")
            from saliency_fast.commands.attribute import load_model as cli_load_model

            with pytest.raises(ValueError, match=f"needs the optional package '{package}'"):  # one line in the CLI
                cli_load_model(f"{package}:resnet18", None)


def test_prepare_image_resizes_the_shorter_side_and_crops_the_centre():
    image = torch.rand(1, 40, 60)
    prepared = prepare_image(image, 20, channels=3)
    assert prepared.shape == (3, 20, 20)
    expected = torch.nn.functional.interpolate(image[None], size=(20, 30), mode="bilinear", align_corners=False,
                                               antialias=True)[0, :, :, 5:25]
    torch.testing.assert_close(prepared, expected.expand(3, -1, -1))
    assert torch.equal(prepare_image(image, 40), image[:, :, 10:50])  # the right size already: only the crop
    with pytest.raises(ValueError, match="has 2 channels but the model takes 3"):
        prepare_image(torch.rand(2, 8, 8), channels=3)


def test_prepared_images_is_a_dataset_for_attribute_dataset(tmp_path):
    images = torch.rand(3, 1, 16, 12)
    torch.save(images, tmp_path / "images.pt")
    prepared = PreparedImages(str(tmp_path / "images.pt"), 8, 3)
    assert len(prepared) == 3 and prepared[1].shape == (3, 8, 8)
    torch.testing.assert_close(prepared[2], prepare_image(images[2], 8, 3))


def test_attribute_dataset_records_the_layer_it_found(tmp_path):
    model = gap_cnn().float()
    data = torch.rand(3, 3, 8, 8)
    for method, layer in (("cam", "1"), ("gradcam++", "1")):
        manifest = sf.attribute_dataset(model, data, method, tmp_path / method, batch_size=2, progress=False)
        assert manifest["identity"]["method_parameters"]["layer"] == layer
        maps = sf.load_attributions(tmp_path / method)
        cls = sf.CAM if method == "cam" else sf.GradCAMPlusPlus
        torch.testing.assert_close(maps, cls(model, layer).attribute(data, model(data).argmax(1)))


def test_evaluate_runs_every_registered_method_leaving_out_those_that_do_not_fit(tmp_path, capsys):
    import json

    from saliency_fast.cli import main
    from saliency_fast.commands.evaluate import DEFAULT_METHODS
    from saliency_fast.dataset import METHOD_NAMES

    assert sorted(DEFAULT_METHODS) == sorted(METHOD_NAMES)  # the list comes from the registry
    assert main(["evaluate", "--count", "1", "--pixels-per-step", "256", "--out", str(tmp_path)]) == 0
    assert "cam: left out: CAM needs" in capsys.readouterr().out  # DigitsCNN: no global average pooling
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in rows] == [name for name in DEFAULT_METHODS if name != "cam"]
    assert main(["evaluate", "--count", "1", "--methods", "cam", "--out", str(tmp_path / "cam")]) == 2  # asked for


def test_manifest_records_a_reshape_function_by_name():
    def tokens_to_map(tokens):
        return tokens

    recorded = method_parameters("gradcam", gap_cnn(), layer="1", reshape_transform=tokens_to_map)["reshape_transform"]
    assert recorded == f"{__name__}.test_manifest_records_a_reshape_function_by_name.<locals>.tokens_to_map"
    assert method_parameters("gradcam", gap_cnn(), reshape_transform="vit")["reshape_transform"] == "vit"
