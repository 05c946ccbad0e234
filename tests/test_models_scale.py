"""Every method and metric on real architectures at 224² on CPU: torchvision's ResNet-18 and timm's
ViT-Tiny (random weights: nothing is downloaded), float64 against Captum, pytorch-grad-cam and
TorchCAM where they implement the method, and the CLI with --model torchvision:/timm:.

Needs the optional torchvision and timm built for the installed torch (skipped otherwise; see
README, "Real models": `make cuda-check`'s environment has them). Batch 1, few steps: each test
is a smoke run of the full-size path plus one number checked against a peer or an invariant.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

import saliency_fast as sf  # noqa: E402
from saliency_fast import metrics  # noqa: E402
from saliency_fast.cli import main  # noqa: E402
from saliency_fast.dataset import METHOD_NAMES, make_method  # noqa: E402
from saliency_fast.methods.gradcam import layer_name  # noqa: E402

SIDE = 224
PIXELS_PER_STEP = SIDE * SIDE // 4  # 5-point curves
# the fewest steps each method allows, so that every method runs at full size in seconds
CHEAP = {"ig": {"n_steps": 4}, "smoothgrad": {"n_samples": 2}, "guidedig": {"x_steps": 3},
         "samp": {"pixels_per_step": SIDE * SIDE // 3}, "samp++": {"pixels_per_step": SIDE * SIDE // 3, "n_frag": 2}}


def relative_error(ours, peer) -> float:
    peer = torch.as_tensor(peer).detach().double()
    return float((ours.detach().double() - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return sf.models.torchvision_model("resnet18").eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return sf.models.timm_model("vit_tiny_patch16_224").eval()


@pytest.fixture(scope="module")
def image():
    """Smooth random structure (a 14×14 random image upsampled): segmentations (LIME's SLIC, XRAI's
    Felzenszwalb) find regions in it, as in a photograph; pixel noise would be one superpixel."""
    coarse = torch.rand(1, 3, 14, 14, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_every_method_and_metric_at_224(request, arch, name, image):
    model = request.getfixturevalue(arch)
    with torch.no_grad():
        logits = model(image)
    target = logits.argmax(1)
    if name == "lrp" and arch == "vit":  # no LRP rule for GELU / LayerNorm: evaluate leaves it out
        with pytest.raises(sf.UnsupportedArchitecture, match="LRP has no rule for module type.*GELU"):
            make_method(name, model).attribute(image, target)
        return
    method = make_method(name, model, **CHEAP.get(name, {}))
    if name == "cam" and arch == "vit":  # a class token, not global average pooling, feeds the head
        with pytest.raises(ValueError, match="CAM needs a .* feature map whose global average"):
            method.attribute(image, target)
        return
    maps = method.attribute(image, target)
    assert maps.shape == (1, SIDE, SIDE) and bool(torch.isfinite(maps).all())
    assert float(maps.max() - maps.min()) > 0
    scores = metrics.deletion_insertion(model, image, maps, target=target, pixels_per_step=PIXELS_PER_STEP)
    logit = logits.gather(1, target.view(-1, 1))[:, 0]
    # the curves start (deletion) and end (insertion) at the model's own logit for the image
    torch.testing.assert_close(scores.deletion_curve[:, 0], logit, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores.insertion_curve[:, -1], logit, rtol=1e-4, atol=1e-4)
    assert scores.deletion_curve.shape == (1, 5) and bool(torch.isfinite(scores.deletion_auc).all())
    assert 0.0 <= float(metrics.gini(maps)) <= 1.0


def test_layer_none_on_resnet_and_vit(resnet, vit, image):
    method = sf.GradCAM(resnet)
    method.attribute(image)
    assert layer_name(resnet, method.layer) == "model.layer4"
    for cls in (sf.GradCAM, sf.GradCAMPlusPlus):
        method = cls(vit)
        method.attribute(image)
        assert layer_name(vit, method.layer) == "model.blocks.11.norm1"
        assert method.reshape_transform == sf.vit_reshape_transform
    cam = sf.CAM(resnet)
    cam.attribute(image)
    assert layer_name(resnet, cam.layer) == "model.layer4" and layer_name(resnet, cam.fc) == "model.fc"


def test_gradcam_and_ig_equal_captum_on_resnet18_in_float64(resnet, image):
    captum = pytest.importorskip("captum.attr")
    model = sf.models.torchvision_model("resnet18").double().eval()
    model.load_state_dict(resnet.state_dict())
    x = image.double()
    target = int(model(x).argmax())
    peer = captum.LayerGradCam(model, model.model.layer4).attribute(x, target=target, relu_attributions=True)
    peer = captum.LayerAttribution.interpolate(peer, (SIDE, SIDE), interpolate_mode="bilinear")[:, 0]
    assert relative_error(sf.GradCAM(model, "layer4").attribute(x, target), peer) <= 1e-10
    peer_ig = captum.IntegratedGradients(model).attribute(x, target=target, n_steps=4, method="gausslegendre").sum(1)
    # Captum sums the steps in another order: agreement to 1e-6, as in test_baselines.py
    assert relative_error(sf.IntegratedGradients(model, n_steps=4).attribute(x, target), peer_ig) <= 1e-6


def test_cam_equals_torchcam_on_resnet18_in_float64(resnet, image):
    torchcam = pytest.importorskip("torchcam.methods")
    model = sf.models.torchvision_model("resnet18").double().eval()
    model.load_state_dict(resnet.state_dict())
    x = image.double()
    target = int(model(x).argmax())
    with torchcam.CAM(model, "model.layer4", "model.fc", input_shape=(3, SIDE, SIDE)) as extractor:
        with torch.no_grad():
            model(x)
        (peer,) = extractor(target, normalized=False)
    assert relative_error(sf.CAM(model, upsample=False).attribute(x, target), peer) <= 1e-10


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_gradcam_plus_plus_equals_pytorch_grad_cam_in_float64(request, arch, image):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model = (sf.models.torchvision_model("resnet18") if arch == "resnet" else
             sf.models.timm_model("vit_tiny_patch16_224")).double().eval()
    model.load_state_dict(request.getfixturevalue(arch).state_dict())
    layer = model.model.layer4 if arch == "resnet" else model.model.blocks[-1].norm1
    x = image.double()
    target = int(model(x).argmax())
    for ours_cls, peer_cls in ((sf.GradCAMPlusPlus, grad_cam.GradCAMPlusPlus), (sf.GradCAM, grad_cam.GradCAM)):
        peer = peer_cls(model, [layer], reshape_transform=None if arch == "resnet" else vit_reshape_transform)
        peer(x, [ClassifierOutputTarget(target)])
        activation = peer.activations_and_grads.activations[0].numpy()
        grad = peer.activations_and_grads.gradients[0].numpy()
        peer_map = np.maximum(peer.get_cam_image(x, layer, None, activation, grad), 0)
        ours = ours_cls(model, upsample=False).attribute(x, target)  # layer=None finds the same layer
        assert relative_error(ours, peer_map) <= 1e-10, ours_cls.__name__


def test_weights_file_round_trip(resnet, tmp_path, image):
    trained = sf.models.torchvision_model("resnet18").eval()
    torch.save(trained.model.state_dict(), tmp_path / "resnet18.pt")
    loaded = sf.models.load_model("torchvision:resnet18", weights=tmp_path / "resnet18.pt")
    with torch.no_grad():
        assert torch.equal(loaded(image), trained(image))
    vit_small = sf.models.load_model("timm:vit_tiny_patch16_224", image_size=32)
    assert vit_small.input_size == 32 and vit_small(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_cli_evaluate_and_attribute_with_torchvision_and_timm(tmp_path, capsys):
    images = torch.rand(2, 3, 40, 48)
    torch.save(images, tmp_path / "images.pt")
    out = tmp_path / "evaluate"
    assert main(["evaluate", "--model", "torchvision:resnet18", "--image-size", "64", "--images", str(tmp_path / "images.pt"),
                 "--count", "2", "--methods", "cam,gradcam++,saliency", "--pixels-per-step", "1024", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in rows] == ["cam", "gradcam++", "saliency"]
    assert all(np.isfinite(row["deletion_auc"]) for row in rows)
    maps = tmp_path / "maps"
    assert main(["attribute", "--model", "timm:vit_tiny_patch16_224", "--image-size", "32", "--data",
                 str(tmp_path / "images.pt"), "--method", "gradcam", "--out", str(maps), "--no-progress"]) == 0
    manifest = json.loads((maps / "manifest.json").read_text())
    parameters = manifest["identity"]["method_parameters"]
    assert parameters["layer"] == "model.blocks.11.norm1" and parameters["reshape_transform"] == "vit"
    assert sf.load_attributions(maps).shape == (2, 32, 32)


def test_the_benchmarks_resnet18_is_torchvisions(resnet, image):
    """bench/test_bench_224.py builds ResNet-18 itself (so it runs without torchvision): the same
    layers, names and logits."""
    from bench.test_bench_224 import ResNet18

    ours = ResNet18().eval()
    ours.load_state_dict(resnet.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(sf.models.Normalized(ours)(image), resnet(image), rtol=0, atol=0)
