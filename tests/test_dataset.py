"""sf.attribute_dataset / sf.load_attributions: data sources, shards, resume after kill -9,
manifest checks, torchrun (2 processes, gloo), the OOM fallback, bad images, evaluation."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from saliency_fast import IntegratedGradients, Saliency, metrics
from saliency_fast.data import load_digits
from saliency_fast.dataset import (MANIFEST_NAME, METHOD_NAMES, attribute_dataset, load_attributions, make_method,
                                   method_parameters)
from saliency_fast.models import DigitsCNN, digits_cnn

REPO = Path(__file__).resolve().parents[1]
# skipped-image and OOM-retry warnings are expected here; the tests that care use pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore:attribute_dataset:UserWarning")
BATCH, SHARD = 8, 16


@pytest.fixture(scope="module")
def images():
    return load_digits("test")[0][:40]


@pytest.fixture(scope="module")
def model():
    return digits_cnn()


def run(model, data, out, method="saliency", **kwargs):
    kwargs = {"batch_size": BATCH, "shard_size": SHARD, "progress": False, **kwargs}
    return attribute_dataset(model, data, method, out, **kwargs)


def expected_maps(model, images, method):
    """The method applied shard by shard, batch by batch, on the predicted class."""
    maps = []
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH]
        maps.append(method.attribute(x, model(x).argmax(1)))
    return torch.cat(maps)


def shard_files(out):
    return sorted(Path(out).glob("shard-*.pt"))


# --- results ------------------------------------------------------------------------------------
def test_maps_match_the_method_in_dataset_order(model, images, tmp_path):
    manifest = run(model, images, tmp_path, method="ig", method_options={"n_steps": 8})
    result = load_attributions(tmp_path, details=True)
    reference = expected_maps(model, images, IntegratedGradients(model, n_steps=8))
    torch.testing.assert_close(result.maps, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.targets, model(images).argmax(1))
    assert result.valid.all() and result.skipped == [] and result.deletion_auc is None
    assert manifest["complete"] and len(manifest["shards"]) == 3  # 40 images in shards of 16
    assert manifest["identity"]["method_parameters"]["n_steps"] == 8
    assert [s["images"] for s in manifest["shards"]] == [16, 16, 8]
    assert manifest["version"] and manifest["identity"]["model"]["sha256"]


def test_every_method_name_runs(model, images, tmp_path):
    options = {"samp": {"pixels_per_step": 64}, "samp++": {"pixels_per_step": 64, "n_frag": 4}, "ig": {"n_steps": 4},
               "smoothgrad": {"n_samples": 2}, "guidedig": {"x_steps": 4}, "rise": {"n_masks": 8},
               "lime": {"n_samples": 8}, "xrai": {"steps": 4}, "blurig": {"steps": 4}}
    for name in METHOD_NAMES:
        if name == "cam":  # DigitsCNN flattens its 8×8 maps into the linear layer: no global average pooling
            with pytest.raises(ValueError, match="CAM.*global average"):
                run(model, images[:2], tmp_path / name, method=name)
            continue
        run(model, images[:2], tmp_path / name, method=name, method_options=options.get(name, {}))
        maps = load_attributions(tmp_path / name)
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all(), name


def test_float16_storage(model, images, tmp_path):
    run(model, images[:16], tmp_path / "32")
    run(model, images[:16], tmp_path / "16", dtype="float16")
    half = load_attributions(tmp_path / "16")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), load_attributions(tmp_path / "32"), rtol=1e-3, atol=1e-4)


def test_evaluate_stores_deletion_insertion(model, images, tmp_path):
    x = images[:6]
    run(model, x, tmp_path, evaluate=True, batch_size=3, shard_size=6)
    result = load_attributions(tmp_path, details=True)
    target = model(x).argmax(1)
    direct = [metrics.deletion_insertion(model, x[s : s + 3], result.maps[s : s + 3], target=target[s : s + 3])
              for s in (0, 3)]
    torch.testing.assert_close(result.deletion_auc, torch.cat([d.deletion_auc for d in direct]))
    torch.testing.assert_close(result.insertion_auc, torch.cat([d.insertion_auc for d in direct]))


# --- data sources -------------------------------------------------------------------------------
class PairDataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], 0


def test_pt_npy_and_dataset_sources_agree_with_the_tensor(model, images, tmp_path):
    x = images[:20]
    run(model, x, tmp_path / "tensor")
    torch.save((x, torch.zeros(20)), tmp_path / "data.pt")
    np.save(tmp_path / "data.npy", x.numpy())
    reference = load_attributions(tmp_path / "tensor")
    for name, data in {"pt": tmp_path / "data.pt", "npy": str(tmp_path / "data.npy"), "ds": PairDataset(x)}.items():
        run(model, data, tmp_path / name)
        assert torch.equal(load_attributions(tmp_path / name), reference), name


def write_png_folder(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    quantized = (images * 255).round().to(torch.uint8)
    for index, image in enumerate(quantized):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{index:04d}.png")
    return quantized.float() / 255


def test_image_folder_source(model, images, tmp_path):
    pixels = write_png_folder(tmp_path / "png", images[:12])
    run(model, tmp_path / "png", tmp_path / "out")
    run(model, pixels, tmp_path / "tensor")
    assert torch.equal(load_attributions(tmp_path / "out"), load_attributions(tmp_path / "tensor"))
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["source"].startswith("folder")
    # the same images moved to another folder resume (the identity is their content, not their path)
    (tmp_path / "png").rename(tmp_path / "moved")
    stamps = [path.stat().st_mtime_ns for path in shard_files(tmp_path / "out")]
    run(model, tmp_path / "moved", tmp_path / "out")
    assert [path.stat().st_mtime_ns for path in shard_files(tmp_path / "out")] == stamps


def test_bad_images_are_reported_by_index_and_skipped(model, images, tmp_path):
    from PIL import Image

    pixels = write_png_folder(tmp_path / "png", images[:12])
    (tmp_path / "png" / "0003.png").write_bytes(b"not an image")
    Image.new("L", (16, 16)).save(tmp_path / "png" / "0007.png")
    with pytest.warns(UserWarning, match=r"skipping image 3 \(0003.png\): unreadable"):
        manifest = run(model, tmp_path / "png", tmp_path / "out")
    assert [(s["index"], s["reason"].split(":")[0]) for s in manifest["skipped"]] == [(3, "unreadable"), (7, "shape (1, 16, 16) differs from the dataset's (1, 32, 32)")]
    result = load_attributions(tmp_path / "out", details=True)
    good = torch.tensor([i not in (3, 7) for i in range(12)])
    assert torch.equal(result.valid, good)
    assert torch.isnan(result.maps[~good]).all() and (result.targets[~good] == -1).all()
    keep = pixels[good]
    reference = torch.cat([Saliency(model).attribute(keep[s : s + BATCH], model(keep[s : s + BATCH]).argmax(1))
                           for s in range(0, len(keep), BATCH)])
    torch.testing.assert_close(result.maps[good], reference)


def test_nan_image_in_a_tensor_is_skipped(model, images, tmp_path):
    x = images[:10].clone()
    x[4, 0, 3, 3] = float("nan")
    with pytest.warns(UserWarning, match="skipping image 4: contains NaN"):
        manifest = run(model, x, tmp_path)
    assert [s["index"] for s in manifest["skipped"]] == [4]


# --- manifest and resume ------------------------------------------------------------------------
def test_mismatched_manifest_is_refused_with_the_differences(model, images, tmp_path):
    run(model, images[:16], tmp_path)
    with pytest.raises(ValueError, match=r"different run; these differ: method .*saved \"saliency\", now \"ig\""):
        run(model, images[:16], tmp_path, method="ig", method_options={"n_steps": 4})
    with pytest.raises(ValueError, match=r"these differ: model"):
        run(DigitsCNN(), images[:16], tmp_path)
    with pytest.raises(ValueError, match=r"these differ: input"):
        run(model, images[1:17], tmp_path)
    with pytest.raises(ValueError, match=r"these differ: shard_size"):
        run(model, images[:16], tmp_path, shard_size=4)
    # resume=False overwrites the folder with the new run
    run(model, images[:16], tmp_path, method="ig", method_options={"n_steps": 4}, resume=False)
    assert load_attributions(tmp_path, details=True).manifest["identity"]["method"] == "ig"


def test_resume_skips_finished_shards(model, images, tmp_path):
    run(model, images, tmp_path)
    reference = load_attributions(tmp_path)
    first = shard_files(tmp_path)[0]
    stamp = first.stat().st_mtime_ns
    shard_files(tmp_path)[1].unlink()
    run(model, images, tmp_path)
    assert first.stat().st_mtime_ns == stamp  # not recomputed
    assert torch.equal(load_attributions(tmp_path), reference)


def test_incomplete_output_cannot_be_loaded(model, images, tmp_path):
    run(model, images[:20], tmp_path)
    shard_files(tmp_path)[0].unlink()
    with pytest.raises(ValueError, match="incomplete: 1 of 2 shards missing"):
        load_attributions(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_attributions(tmp_path / "nothing")


KILL_SCRIPT = """
import sys, time
from saliency_fast.dataset import attribute_dataset
from saliency_fast.models import digits_cnn
model = digits_cnn()
model.register_forward_pre_hook(lambda module, args: time.sleep(0.1))  # 0.2 s a shard: killed mid-run even on a loaded machine
attribute_dataset(model, sys.argv[1], "saliency", sys.argv[2], batch_size=4, shard_size=8, progress=False)
"""


def test_kill_9_then_resume_gives_identical_maps(model, images, tmp_path):
    torch.save(images, tmp_path / "data.pt")
    (tmp_path / "job.py").write_text(KILL_SCRIPT)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(tmp_path / "job.py"), str(tmp_path / "data.pt"), str(out)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not (out / "shard-000001.pt").exists():
        assert process.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "no shard written within 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = shard_files(out)
    assert 2 <= len(finished) < 5  # 40 images in 5 shards: killed mid-run
    assert not json.loads((out / MANIFEST_NAME).read_text())["complete"]
    stamps = {path: path.stat().st_mtime_ns for path in finished}

    run(model, tmp_path / "data.pt", out, batch_size=4, shard_size=8)
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps  # finished shards kept as they were
    assert not list(out.glob(".shard-*"))  # no temporary file left behind
    run(model, tmp_path / "data.pt", tmp_path / "whole", batch_size=4, shard_size=8)
    assert torch.equal(load_attributions(out), load_attributions(tmp_path / "whole"))


TORCHRUN_SCRIPT = """
import sys
from saliency_fast.dataset import attribute_dataset
from saliency_fast.models import digits_cnn
attribute_dataset(digits_cnn(), sys.argv[1], "ig", sys.argv[2], batch_size=8, shard_size=16, progress=False,
                  method_options={"n_steps": 4})
"""


def test_two_processes_equal_one(model, images, tmp_path):
    torch.save(images, tmp_path / "data.pt")
    (tmp_path / "job.py").write_text(TORCHRUN_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "job.py"), str(tmp_path / "data.pt"), str(tmp_path / "p2")]
    completed = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = load_attributions(tmp_path / "p2", details=True)
    ranks = {int(torch.load(path, weights_only=True)["rank"]) for path in shard_files(tmp_path / "p2")}
    assert ranks == {0, 1}  # both processes wrote shards
    assert two.manifest["settings"]["processes"] == 2 and two.manifest["complete"]
    run(model, tmp_path / "data.pt", tmp_path / "p1", method="ig", method_options={"n_steps": 4})
    one = load_attributions(tmp_path / "p1", details=True)
    assert torch.equal(one.maps, two.maps)
    assert torch.equal(one.targets, two.targets)


# --- out of memory ------------------------------------------------------------------------------
class RaisesAboveBatch(nn.Module):
    """The digits CNN, but "out of memory" for more than ``limit`` images a call."""

    def __init__(self, limit):
        super().__init__()
        self.net, self.limit, self.sizes = digits_cnn(), limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} images > {self.limit}")
        return self.net(x)


def test_out_of_memory_splits_the_batch_and_keeps_the_size(images, tmp_path):
    oom = RaisesAboveBatch(limit=3)
    with pytest.warns(UserWarning, match="out of memory with 16 images; retrying with batch_size=8"):
        manifest = attribute_dataset(oom, images[:32], "saliency", tmp_path, batch_size=16, shard_size=16, progress=False)
    assert manifest["settings"]["final_batch_size_rank0"] == 2
    assert max(oom.sizes[-10:]) <= 2  # the size that worked is kept, no more retries at 16
    maps = load_attributions(tmp_path)
    net = oom.net
    reference = torch.cat([Saliency(net).attribute(images[s : s + 2], net(images[s : s + 2]).argmax(1)) for s in range(0, 32, 2)])
    torch.testing.assert_close(maps, reference)


def test_out_of_memory_also_shrinks_internal_passes(images, tmp_path):
    oom = RaisesAboveBatch(limit=4)  # IG's default pass would hold all 8 steps × the batch
    attribute_dataset(oom, images[:8], "ig", tmp_path, batch_size=8, shard_size=8, progress=False,
                      method_options={"n_steps": 8})
    reference = IntegratedGradients(oom.net, n_steps=8).attribute(images[:8], oom.net(images[:8]).argmax(1))
    torch.testing.assert_close(load_attributions(tmp_path), reference, rtol=1e-4, atol=1e-6)


def test_out_of_memory_at_one_image_raises(images, tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match="single image"):
        attribute_dataset(RaisesAboveBatch(limit=0), images[:4], "saliency", tmp_path, batch_size=4, progress=False)


# --- arguments ----------------------------------------------------------------------------------
def test_make_method_and_bad_arguments(model, images, tmp_path):
    assert make_method("samp++", model).n_frag == 50
    assert method_parameters("gradcam", model)["layer"] == DigitsCNN.GRADCAM_LAYER
    with pytest.raises(ValueError, match="method must be one of"):
        make_method("occlusion", model)
    with pytest.raises(ValueError, match="has no option.*n_step"):
        run(model, images, tmp_path, method="ig", method_options={"n_step": 3})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        run(model, images, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        run(model, images, tmp_path, dtype="int8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(model, tmp_path / "missing.pt", tmp_path / "out")
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        run(model, torch.zeros(4, 32), tmp_path / "out")


# --- command line -------------------------------------------------------------------------------
def test_cli_attribute_matches_the_api(model, images, tmp_path, capsys):
    from saliency_fast.cli import main

    torch.save(images[:20], tmp_path / "data.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    common = ["--data", str(tmp_path / "data.pt"), "--batch-size", "8", "--shard-size", "16", "--no-progress"]
    assert main(["attribute", "--model", "digits", "--method", "ig", "--option", "n_steps=4",
                 "--out", str(tmp_path / "cli"), *common]) == 0
    assert "20 maps in 2 shards" in capsys.readouterr().err
    assert main(["attribute", "--model", "saliency_fast.models:DigitsCNN", "--weights", str(tmp_path / "weights.pt"),
                 "--method", "ig", "--option", "n_steps=4", "--out", str(tmp_path / "factory"),
                 "--dtype", "float16", *common]) == 0
    run(model, images[:20], tmp_path / "api", method="ig", method_options={"n_steps": 4})
    cli, api = load_attributions(tmp_path / "cli", details=True), load_attributions(tmp_path / "api", details=True)
    assert torch.equal(cli.maps, api.maps) and torch.equal(cli.targets, api.targets)
    torch.testing.assert_close(load_attributions(tmp_path / "factory").float(), api.maps, rtol=1e-3, atol=1e-4)
    # a different method into the same folder is refused with exit status 2 and the reason
    assert main(["attribute", "--model", "digits", "--method", "saliency", "--out", str(tmp_path / "cli"), *common]) == 2
    assert 'method (saved "ig", now "saliency")' in capsys.readouterr().err
    assert main(["attribute", "--model", "nomodule", "--method", "saliency", "--out", str(tmp_path / "x"), *common]) == 2
    assert "module:factory" in capsys.readouterr().err


def test_amp_and_channels_last_run_and_are_recorded(model, images, tmp_path):
    manifest = run(model, images[:8], tmp_path / "amp", amp=True, channels_last=True)
    assert manifest["identity"]["amp"] == "bfloat16" and manifest["settings"]["channels_last"]
    run(model, images[:8], tmp_path / "fp32")
    low, full = load_attributions(tmp_path / "amp"), load_attributions(tmp_path / "fp32")
    assert torch.isfinite(low).all()
    correlation = torch.corrcoef(torch.stack([low.flatten(), full.flatten()]))[0, 1]
    assert correlation > 0.9  # bfloat16 forward: the same maps up to rounding
    with pytest.raises(ValueError, match="these differ: amp"):
        run(model, images[:8], tmp_path / "amp")
