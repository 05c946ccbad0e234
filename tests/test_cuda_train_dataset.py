"""sf.train objectives, sf.train.fit and sf.attribute_dataset on CUDA.

- One loss + gradient of every objective in sf.train.OBJECTIVES on the device, in float64, against
  the float64 CPU run: same loss and parameter gradients within FLOAT64_RTOL (relative to the
  largest reference entry). Randomness is pinned: attacks start at delta = 0 and SGT's random
  fill draws its noise from a seeded CPU generator on both runs.
- sf.train.fit for one epoch on the device, with and without autocast: finite history.
- attribute_dataset on the device with evaluation, a deleted shard, then a resume: finished shards
  untouched, maps equal to the CPU's within FLOAT32_RTOL.
- The out-of-memory fallback on CUDA, provoked with torch.cuda.set_per_process_memory_fraction.
The "cpu" cases run every comparison CPU against CPU: a dry run of the tests' logic.
"""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from saliency_fast import IntegratedGradients, Saliency, train
from saliency_fast.dataset import attribute_dataset, load_attributions
from saliency_fast.models import DigitsCNN

from .conftest import DEVICES, requires_cuda

FLOAT64_RTOL, FLOAT32_RTOL = 1e-8, 1e-4
OBJECTIVE_OPTIONS = {  # deterministic and short: no random start, no warm-up, two PGD steps
    "plain": {}, "sgt": {"k": 0.5, "fill": "random"},
    "pgdat": {"steps": 2, "random_start": False, "epsilon": 0.1},
    "trades": {"steps": 2, "random_start": False, "epsilon": 0.1},
    "scaat": {"steps": 2, "random_start": False, "epsilon": 0.1, "warmup_epochs": 0, "ramp_epochs": 0},
    "res-g": {}, "res-l": {}, "gradia": {}, "haics": {},
}


def relative_error(actual, expected):
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-300))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return DigitsCNN(num_classes=3, in_channels=1, width=4, image_size=16).double()


def batch(n=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    positive = torch.rand(n, 16, 16, generator=g) < 0.3
    negative = ~positive & (torch.rand(n, 16, 16, generator=g) < 0.2)
    has_mask = torch.tensor([True, True, False, True, True, True])[:n]
    return x, y, positive, negative, has_mask


@pytest.fixture
def pinned_rand_like(monkeypatch):
    """torch.rand_like drawing from a seeded CPU generator (SGT's random fill, methods.py), so the
    CPU and device runs mask with the same noise."""
    def rand_like(tensor, **kwargs):
        noise = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        return noise.to(device=tensor.device, dtype=kwargs.get("dtype") or tensor.dtype)
    monkeypatch.setattr(torch, "rand_like", rand_like)


def loss_and_gradients(model, method, data, device):
    model.to(device)
    method.to(device)
    data = [t.to(device) for t in data]
    method.epoch_start(0, 1)
    model.train()
    output = method.loss(model, data, 0)
    parameters = list(model.parameters()) + list(method.parameters())
    gradients = torch.autograd.grad(output.loss, parameters, allow_unused=True)
    return output.loss.detach().cpu(), [None if g is None else g.cpu() for g in gradients]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(train.OBJECTIVES))
def test_every_objective_on_device_matches_float64_cpu(device, name, pinned_rand_like):
    assert set(OBJECTIVE_OPTIONS) == set(train.OBJECTIVES), "a new objective needs its options here"
    model, data = tiny_model(), batch()
    device_model = copy.deepcopy(model)
    method = train.OBJECTIVES[name](**OBJECTIVE_OPTIONS[name])
    expected_loss, expected_gradients = loss_and_gradients(model, method, data, "cpu")
    device_method = copy.deepcopy(method)  # after the CPU run: RES-L's projector Φ is built, same weights
    loss, gradients = loss_and_gradients(device_model, device_method, data, device)
    assert torch.isfinite(expected_loss) and expected_loss > 0
    assert relative_error(loss, expected_loss) <= FLOAT64_RTOL
    assert len(gradients) == len(expected_gradients)
    for index, (got, want) in enumerate(zip(gradients, expected_gradients)):
        assert (got is None) == (want is None), index
        if want is not None:
            assert relative_error(got, want) <= FLOAT64_RTOL, index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("name", ["plain", "scaat", "res-g"])
def test_fit_one_epoch_on_device(device, amp, name, tmp_path):
    x, y, positive, negative, has_mask = batch(n=6, dtype=torch.float32)
    loader = DataLoader(TensorDataset(x, y, positive, negative, has_mask), batch_size=3)
    model = tiny_model().float()
    method = train.OBJECTIVES[name](**OBJECTIVE_OPTIONS[name])
    history = train.fit(model, method, loader, epochs=1, device=device, amp=amp, progress=False,
                        checkpoint_dir=tmp_path)
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(float(v))) for v in history[0].values()
                                     if isinstance(v, (int, float)))
    assert next(model.parameters()).device.type == torch.device(device).type
    assert (tmp_path / "last.pt").is_file()


@pytest.fixture(scope="module")
def digits():
    from saliency_fast.data import load_digits
    from saliency_fast.models import digits_cnn

    return digits_cnn(), load_digits("test")[0][:12]


@pytest.mark.parametrize("device", DEVICES)
def test_attribute_dataset_on_device_with_resume(device, digits, tmp_path):
    model, images = digits
    options = dict(batch_size=4, shard_size=4, progress=False, method_options={"n_steps": 8}, evaluate=True)
    attribute_dataset(copy.deepcopy(model), images, "ig", tmp_path / "cpu", device="cpu", **options)
    out = tmp_path / "device"
    attribute_dataset(copy.deepcopy(model), images, "ig", out, device=device, **options)
    first = load_attributions(out, details=True)
    shards = sorted(out.glob("shard-*.pt"))
    assert len(shards) == 3
    stamp = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    manifest = attribute_dataset(copy.deepcopy(model), images, "ig", out, device=device, **options)
    assert manifest["complete"] and shards[0].stat().st_mtime_ns == stamp  # only the missing shard recomputed
    resumed = load_attributions(out, details=True)
    reference = load_attributions(tmp_path / "cpu", details=True)
    assert relative_error(resumed.maps, first.maps) <= FLOAT32_RTOL
    assert relative_error(resumed.maps, reference.maps) <= FLOAT32_RTOL
    assert torch.equal(resumed.targets, reference.targets)
    # the AUCs rank the pixels by the maps: two IG values ~1e-5 apart can swap across a curve
    # step on the device, which moves one curve point of ~100 by one pixel's effect
    assert relative_error(resumed.deletion_auc, reference.deletion_auc) <= 1e-2
    assert relative_error(resumed.insertion_auc, reference.insertion_auc) <= 1e-2


class Wide(nn.Module):
    """64 channels per pixel (an einsum and a tanh): activations of ~19 MiB an image at 192×192,
    and no convolution whose workspace could itself exhaust the limit."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.expand = nn.Parameter(torch.randn(64, 3) / 3)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        hidden = torch.tanh(torch.einsum("oc,bchw->bohw", self.expand, x))
        return self.head(hidden.mean(dim=(2, 3)))


@requires_cuda
@pytest.mark.cuda
def test_out_of_memory_halving_on_cuda(tmp_path):
    """With ~100 MiB free under the allocator's limit, a batch of 8 images (~150 MiB of
    activations) runs out of memory: attribute_dataset halves the batch until it fits and the
    maps equal the CPU's."""
    images = torch.rand(8, 3, 192, 192, generator=torch.Generator().manual_seed(3))
    model = Wide()
    expected = Saliency(copy.deepcopy(model)).attribute(images, copy.deepcopy(model)(images).argmax(1))
    device_model = copy.deepcopy(model).cuda()
    device_model(images[:1].cuda())  # cuBLAS's workspace is allocated before the limit
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = torch.cuda.memory_reserved(0) + 100 * 2**20  # the fraction caps what the allocator reserves
    torch.cuda.set_per_process_memory_fraction(limit / total, 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = attribute_dataset(device_model, images, "saliency", tmp_path, batch_size=8, shard_size=8,
                                         device="cuda", progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert any("out of memory with 8 images" in str(w.message) for w in caught)
    assert 1 <= manifest["settings"]["final_batch_size_rank0"] < 8
    assert relative_error(load_attributions(tmp_path), expected) <= FLOAT32_RTOL


@pytest.mark.parametrize("device", DEVICES)
def test_internal_pass_size_on_device_keeps_the_maps(device, digits):
    """IG's internal pass size (the knob the OOM fallback turns) does not change the maps on the device."""
    model, images = digits
    x = images[:4].to(device)
    device_model = copy.deepcopy(model).to(device)
    target = device_model(x).argmax(1)
    whole = IntegratedGradients(device_model, n_steps=8).attribute(x, target)
    one_at_a_time = IntegratedGradients(device_model, n_steps=8, internal_batch_size=1).attribute(x, target)
    assert relative_error(one_at_a_time.cpu(), whole.cpu()) <= FLOAT32_RTOL
