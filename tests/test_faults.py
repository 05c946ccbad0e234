"""What happens when things go wrong: the library's promises, one table-driven test per public
entry point over a shared catalogue of bad inputs.

Every case ends in one of two ways: the correct result (checked against a clean run), or a
specific exception class whose message names the argument or the file at fault. Never a crash,
never a silent wrong answer. The CLI's promises (one line, exit 2, no traceback) and the file
system faults (full disk, read-only folder, kill -9, concurrent writers) are in
test_faults_cli.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast import metrics, ops, train
from saliency_fast.dataset import METHOD_NAMES, MANIFEST_NAME, attribute_dataset, load_attributions, make_method
from saliency_fast.train.checkpoint import LOCK_NAME, CorruptFileError, FolderInUseError

# ==============================================================================================
# shared fixtures: a tiny classifier on 8×8 images and a clean batch
# ==============================================================================================
SIZE = 8
FAST_OPTIONS = {"ig": {"n_steps": 4}, "smoothgrad": {"n_samples": 2}, "guidedig": {"x_steps": 4},
                "samp++": {"n_frag": 8}}


def tiny_model(seed: int = 0, norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if norm:  # BatchNorm + Dropout: a model whose train mode changes its output and its buffers
        layers += [nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5)]
    else:
        layers += [nn.ReLU()]
    # global average pooling into the linear layer: the architecture CAM needs, as do the others
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def clean_images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class NaNModel(nn.Module):
    """A model whose logits are NaN (a weight went NaN in training): its maps and scores must not
    pass for real ones."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_model()
        with torch.no_grad():
            self.inner[-1].weight[0] = float("nan")

    def forward(self, x):
        return self.inner(x)


# ==============================================================================================
# the catalogue: bad values of an image-batch argument
# ==============================================================================================
class Bad(NamedTuple):
    name: str
    make: Callable[[torch.Tensor], object]
    error: type
    match: str  # the message names the argument ({arg}) and what is wrong


IMAGE_CATALOGUE = [
    Bad("not a tensor", lambda x: x.numpy(), TypeError, r"{arg} must be a torch.Tensor"),
    Bad("rank 3", lambda x: x[0], ValueError, r"{arg} must have shape \(B, C, H, W\)"),
    Bad("rank 5", lambda x: x[None], ValueError, r"{arg} must have shape \(B, C, H, W\)"),
    Bad("empty batch", lambda x: x[:0], ValueError, r"{arg} is an empty batch"),
    Bad("integer dtype", lambda x: (x * 255).to(torch.uint8), TypeError, r"{arg} must be a floating tensor"),
    Bad("NaN", lambda x: x.clone().index_fill_(0, torch.tensor([1]), float("nan")), ValueError,
        r"{arg} contains NaN or Inf"),
    Bad("Inf", lambda x: x.clone().index_fill_(0, torch.tensor([0]), float("inf")), ValueError,
        r"{arg} contains NaN or Inf"),
    Bad("meta device", lambda x: x.to("meta"), ValueError, r"{arg} is on the meta device"),
]
# inputs whose dtype differs from the model's parameters (float16 images, float32 model)
DTYPE_MISMATCH = Bad("float16 inputs, float32 model", lambda x: x.half(), TypeError,
                     r"inputs are torch.float16 but the model's parameters are torch.float32")


def expect(bad: Bad, call, arg: str):
    with pytest.raises(bad.error, match=bad.match.format(arg=arg)):
        call()


# ==============================================================================================
# attribution methods
# ==============================================================================================
def method(name: str, model: nn.Module):
    return make_method(name, model, **FAST_OPTIONS.get(name, {}))


@pytest.mark.parametrize("bad", IMAGE_CATALOGUE + [DTYPE_MISMATCH], ids=lambda b: b.name)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_refuse_bad_inputs_naming_them(name, bad):
    explainer = method(name, tiny_model())
    expect(bad, lambda: explainer.attribute(bad.make(clean_images())), "inputs")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_run_a_train_mode_model_in_eval_mode_and_restore_it(name):
    """Dropout and BatchNorm in train mode would randomise the maps and change the running
    statistics; every method explains the eval-mode model and gives the model back unchanged."""
    x = clean_images()
    reference = method(name, tiny_model(norm=True)).attribute(x)
    model = tiny_model(norm=True).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    maps = method(name, model).attribute(x)
    torch.testing.assert_close(maps, reference)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())


def test_a_mixed_mode_model_gets_each_module_and_parameter_back_as_it_was():
    """Only what attributing changes is restored: eval submodules of a training model stay in eval,
    frozen parameters stay frozen, the rest train and require grad again."""
    model = tiny_model(norm=True).train()
    model[1].eval()  # a frozen BatchNorm inside a training model (fine-tuning)
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    method("GradCAM", model).attribute(clean_images())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_inside_inference_mode_say_so_or_need_no_gradients(name):
    explainer = method(name, tiny_model())
    if not explainer.needs_gradients:  # model calls only (RISE, LIME): the same maps as outside
        outside = explainer.attribute(clean_images())
        with torch.inference_mode():
            torch.testing.assert_close(explainer.attribute(clean_images()), outside)
        return
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"inside torch.inference_mode\(\)"):
        explainer.attribute(clean_images())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_accept_an_inference_tensor_outside_inference_mode(name):
    x = clean_images()
    with torch.inference_mode():
        frozen = x.clone()
    torch.testing.assert_close(method(name, tiny_model()).attribute(frozen), method(name, tiny_model()).attribute(x))


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n != "gradcam"])
def test_methods_warn_when_the_model_produces_nan(name):
    with pytest.warns(RuntimeWarning, match=r"image\(s\) 0, 1, 2 contain NaN or Inf although the inputs are finite") as caught:
        method(name, NaNModel()).attribute(clean_images(), target=0)
    assert any(warning.filename == __file__ for warning in caught)  # it points at the user's call


def test_samp_pixels_per_step_past_the_image_moves_every_pixel_at_once():
    x = clean_images()
    whole = sf.SAMP(tiny_model(), pixels_per_step=SIZE * SIZE).attribute(x)
    torch.testing.assert_close(sf.SAMP(tiny_model(), pixels_per_step=2 ** 64).attribute(x), whole)


# ==============================================================================================
# metrics (keyword arguments throughout: the argument order is the Captum one, see README)
# ==============================================================================================
def maps_for(x):
    return torch.rand(x.shape[0], SIZE, SIZE, generator=torch.Generator().manual_seed(1))


METRIC_CALLS = {
    "deletion_insertion": lambda x, maps: metrics.deletion_insertion(model=tiny_model(), inputs=x, attributions=maps),
    "completeness_error": lambda x, maps: metrics.completeness_error(attributions=maps, model=tiny_model(), inputs=x),
    "masked_accuracy": lambda x, maps: metrics.masked_accuracy(model=tiny_model(), inputs=x,
                                                              labels=torch.zeros(len(maps), dtype=torch.long),
                                                              attributions=maps),
}


@pytest.mark.parametrize("bad", IMAGE_CATALOGUE + [DTYPE_MISMATCH], ids=lambda b: b.name)
@pytest.mark.parametrize("metric", sorted(METRIC_CALLS))
def test_metrics_refuse_bad_inputs_naming_them(metric, bad):
    x = clean_images()
    expect(bad, lambda: METRIC_CALLS[metric](bad.make(x), maps_for(x)), "inputs")


ATTRIBUTION_CATALOGUE = [b for b in IMAGE_CATALOGUE if b.name in ("not a tensor", "empty batch", "NaN", "Inf",
                                                                   "integer dtype")]


@pytest.mark.parametrize("bad", ATTRIBUTION_CATALOGUE, ids=lambda b: b.name)
def test_gini_refuses_bad_attributions_naming_them(bad):
    expect(bad._replace(match=bad.match.replace(r"is an empty batch", "must be a non-empty batch")),
           lambda: metrics.gini(bad.make(clean_images())), "attributions")


def test_deletion_insertion_takes_one_path_name_as_a_string():
    x = clean_images()
    one = metrics.deletion_insertion(model=tiny_model(), inputs=x, attributions=maps_for(x), paths="deletion")
    listed = metrics.deletion_insertion(model=tiny_model(), inputs=x, attributions=maps_for(x), paths=("deletion",))
    torch.testing.assert_close(one.deletion_auc, listed.deletion_auc)
    assert one.insertion_auc is None


def test_deletion_insertion_pixels_per_step_past_the_image_is_one_step():
    x = clean_images()
    huge = metrics.deletion_insertion(model=tiny_model(), inputs=x, attributions=maps_for(x), pixels_per_step=2 ** 64)
    whole = metrics.deletion_insertion(model=tiny_model(), inputs=x, attributions=maps_for(x),
                                       pixels_per_step=SIZE * SIZE)
    assert huge.counts.tolist() == [0, SIZE * SIZE]
    torch.testing.assert_close(huge.deletion_auc, whole.deletion_auc)


def test_deletion_insertion_warns_when_the_model_produces_nan():
    x = clean_images()
    with pytest.warns(RuntimeWarning, match=r"deletion AUCs of image\(s\) 0, 1, 2 contain NaN"):
        metrics.deletion_insertion(model=NaNModel(), inputs=x, attributions=maps_for(x), target=0)


def test_metrics_restore_a_train_mode_model():
    x = clean_images()
    reference = metrics.deletion_insertion(model=tiny_model(norm=True), inputs=x, attributions=maps_for(x))
    model = tiny_model(norm=True).train()
    result = metrics.deletion_insertion(model=model, inputs=x, attributions=maps_for(x))
    torch.testing.assert_close(result.deletion_auc, reference.deletion_auc)
    assert model.training


# ==============================================================================================
# raw ops: a wrong rank, dtype or shape raises naming the argument (the native kernels check)
# ==============================================================================================
def curve_arguments():
    x = clean_images(2)
    ranks = torch.rand(2, SIZE * SIZE).argsort(1).argsort(1).reshape(2, SIZE, SIZE)
    return x, torch.zeros_like(x), ranks, torch.tensor([0, 10, SIZE * SIZE])


OP_CASES = {
    "perturbation_curve start rank 3": (lambda a: ops.perturbation_curve(a[0][0], a[1][0], a[2], a[3]), "start"),
    "perturbation_curve ranks float": (lambda a: ops.perturbation_curve(a[0], a[1], a[2].float(), a[3]), "ranks"),
    "perturbation_curve finish dtype": (lambda a: ops.perturbation_curve(a[0], a[1].double(), a[2], a[3]), "finish"),
    "perturbation_curve finish batch": (lambda a: ops.perturbation_curve(a[0], a[1][:1], a[2], a[3]), "finish"),
    "perturbation_curve counts 2-D": (lambda a: ops.perturbation_curve(a[0], a[1], a[2], a[3][None]), "counts"),
    "perturbation_curve integer images": (lambda a: ops.perturbation_curve(a[0].long(), a[1].long(), a[2], a[3]),
                                          "start"),
    "saliency_budget rank 1": (lambda a: ops.saliency_budget(a[2][0, 0].float()), "saliency"),
    "saliency_budget integer": (lambda a: ops.saliency_budget(a[2]), "saliency"),
    "saliency_budget mode": (lambda a: ops.saliency_budget(a[2].float(), mode="most"), "mode"),
    "saliency_budget epsilon": (lambda a: ops.saliency_budget(a[2].float(), epsilon=-1), "epsilon"),
    "masked_perturb delta shape": (lambda a: ops.masked_perturb(a[0], a[1][:1].contiguous(), a[0], a[0][:, 0], 0.1,
                                                                0.3), "delta"),
    "masked_perturb step_size": (lambda a: ops.masked_perturb(a[0], a[1], a[0], a[0][:, 0], -0.1, 0.3), "step_size"),
    "masked_random_fill float mask": (lambda a: ops.masked_random_fill(a[0], a[0][:, 0], a[0]), "mask"),
    "masked_random_fill noise shape": (lambda a: ops.masked_random_fill(a[0], a[0][:, 0] > 0.5, a[0][:1]), "noise"),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_ops_refuse_bad_arguments_naming_them(case):
    call, argument = OP_CASES[case]
    with pytest.raises((ValueError, RuntimeError), match=rf"\b{argument}\b"):
        call(curve_arguments())


def test_perturbation_curve_of_an_empty_batch_is_empty():
    x, finish, ranks, counts = curve_arguments()
    assert ops.perturbation_curve(x[:0], finish[:0], ranks[:0], counts).shape == (0, 3, 1, SIZE, SIZE)


# ==============================================================================================
# sf.train.fit
# ==============================================================================================
def loader(n=24, nan=False, seed=0):
    from torch.utils.data import DataLoader, TensorDataset

    x = clean_images(n, seed)
    if nan:
        x[3] = float("nan")
    y = (x.mean(dim=(1, 2, 3)) * 3).long().clamp(0, 2)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))


def fit(folder, method=None, lr=1e-2, epochs=1, **kwargs):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return train.fit(model, method or train.Plain(), loader(), epochs, optimizer=optimizer, checkpoint_dir=folder,
                     progress=False, **kwargs)


FIT_ARGUMENT_CASES = {
    "model not a module": (lambda f: train.fit("model", train.Plain(), loader(), 1, progress=False), TypeError,
                           "model must be"),
    "method not a TrainingMethod": (lambda f: train.fit(tiny_model(), "plain", loader(), 1, progress=False),
                                    TypeError, "method must be"),
    "negative epochs": (lambda f: train.fit(tiny_model(), train.Plain(), loader(), -1, progress=False), ValueError,
                        "epochs must be"),
    "loader of dicts": (lambda f: train.fit(tiny_model(), train.Plain(), [{"x": clean_images()}], 1, progress=False),
                        TypeError, "loaders must yield tuples"),
    "empty loader": (lambda f: train.fit(tiny_model(), train.Plain(), [], 1, progress=False), ValueError,
                     "yielded no batch"),
    "NaN images": (lambda f: train.fit(tiny_model(), train.Plain(), loader(nan=True), 1, progress=False),
                   train.TrainingDiverged, r"not finite\) at epoch 1 of 1, batch \d"),
    "diverging learning rate": (lambda f: fit(f, lr=1e30), train.TrainingDiverged, "Lower the learning rate"),
    "checkpoint_dir is a file": (lambda f: fit(f / "log.txt"), NotADirectoryError, "log.txt is a file"),
}


@pytest.mark.parametrize("case", sorted(FIT_ARGUMENT_CASES))
def test_fit_refuses_bad_arguments(case, tmp_path):
    (tmp_path / "log.txt").write_text("not a folder")
    call, error, match = FIT_ARGUMENT_CASES[case]
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_fit_restores_nothing_silently_from_changed_hyperparameters(tmp_path):
    """Resume with another learning rate or SCAAT epsilon: refused naming the fields."""
    fit(tmp_path / "a", lr=1e-2)
    with pytest.raises(ValueError, match=r"optimizer\.groups\[0\]\.lr \(saved 0\.01, now 0\.5\)"):
        fit(tmp_path / "a", lr=0.5, epochs=2)
    scaat = lambda eps: train.SCAAT(epsilon=eps, steps=1, warmup_epochs=0)  # noqa: E731
    fit(tmp_path / "b", method=scaat(0.1))
    with pytest.raises(ValueError, match=r"method\.epsilon \(saved 0\.1, now 0\.3\)"):
        fit(tmp_path / "b", method=scaat(0.3), epochs=2)
    assert len(fit(tmp_path / "b", method=scaat(0.1), epochs=2)) == 2  # the same settings resume
    fit(tmp_path / "b", method=scaat(0.3), epochs=1, resume=False)  # or start over


def damage_zero(path: Path):  # a few KB zeroed in the middle (the bytes of some tensor)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2048] = bytes(min(2048, len(data) - middle))
    path.write_bytes(bytes(data))


def damage_flip_tail(path: Path):  # the last tensor bytes before the zip directory changed
    data = bytearray(path.read_bytes())
    index = data.rfind(b"PK\x01\x02") - 8  # just before the central directory: inside the last record
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_empty(path: Path):
    path.write_bytes(b"")


def damage_foreign(path: Path):  # another saliency_fast-shaped file: a plain tensor
    torch.save(torch.zeros(3), path)


def damage_malicious(path: Path):  # a pickle that would run code; weights_only refuses it
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    path.write_bytes(pickle.dumps(Payload()))


FILE_DAMAGE = {"zeroed bytes": damage_zero, "one flipped byte": damage_flip_tail, "truncated": damage_truncate,
               "empty": damage_empty, "foreign": damage_foreign, "malicious pickle": damage_malicious}


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
def test_fit_refuses_a_damaged_checkpoint_naming_it(damage, tmp_path):
    fit(tmp_path)
    checkpoint = tmp_path / "last.pt"
    FILE_DAMAGE[damage](checkpoint)
    with pytest.raises(CorruptFileError, match=rf"{checkpoint}.*--no-resume"):
        fit(tmp_path, epochs=2)
    with pytest.raises(CorruptFileError, match=str(checkpoint)):
        train.load_checkpoint(checkpoint)
    assert not (tmp_path / "pwned").exists()
    assert len(fit(tmp_path, epochs=1, resume=False)) == 1  # starting over works


def test_fit_refuses_a_folder_another_live_process_writes(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                          "purpose": "training", "since": "now"}))
            with pytest.raises(FolderInUseError, match=rf"in use by process {other.pid} .*{LOCK_NAME}"):
                fit(tmp_path)
            assert not (tmp_path / "last.pt").exists()
        finally:
            other.kill()
    other.wait()
    with pytest.warns(UserWarning, match=rf"taking over the lock of process {other.pid}"):
        fit(tmp_path)  # its owner is gone: a stale lock
    assert not (tmp_path / LOCK_NAME).exists()


def test_fit_removes_temporary_files_of_a_killed_run(tmp_path):
    fit(tmp_path)
    leftovers = [tmp_path / ".last.pt.tmp-999999", tmp_path / ".log.jsonl.tmp-999999"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    fit(tmp_path, epochs=2)
    assert not any(path.exists() for path in leftovers)


# ==============================================================================================
# sf.attribute_dataset and sf.load_attributions
# ==============================================================================================
def run(folder, model=None, data=None, method="saliency", **kwargs):
    kwargs.setdefault("shard_size", 4)
    return attribute_dataset(model if model is not None else tiny_model(), clean_images(10) if data is None else data,
                             method, folder, progress=False, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (10 images, 3 shards) and its maps: copied, then damaged, by the tests."""
    folder = tmp_path_factory.mktemp("finished")
    run(folder, evaluate=True)
    return folder, load_attributions(folder, details=True)


def copy_of(finished, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(finished[0], tmp_path / "copy"))


DATASET_ARGUMENT_CASES = {
    "model not a module": (dict(model="model"), TypeError, "model must be an nn.Module"),
    "unknown method": (dict(method="lime2"), ValueError, "method must be one of"),
    "unknown option": (dict(method_options={"n_stepz": 3}), ValueError, r"no option\(s\) n_stepz"),
    "batch_size 0": (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    "shard_size -4": (dict(shard_size=-4), ValueError, "shard_size must be a positive int"),
    "dtype": (dict(dtype="int8"), ValueError, "dtype must be one of"),
    "data of rank 5": (dict(data=torch.zeros(2, 1, 1, SIZE, SIZE)), ValueError, r"data must have shape"),
    "data a list": (dict(data=3), TypeError, "data must be a tensor"),
    "data path missing": (dict(data="missing.pt"), FileNotFoundError, "missing.pt does not exist"),
    "3-channel images": (dict(data=torch.rand(4, 3, SIZE, SIZE)), ValueError,
                         r"cannot take the 3×8×8 \(C×H×W\) images of the data"),
    "all images NaN": (dict(data=torch.full((3, 1, SIZE, SIZE), float("nan"))), ValueError,
                       "none of the 3 items"),
}


@pytest.mark.parametrize("case", sorted(DATASET_ARGUMENT_CASES))
def test_attribute_dataset_refuses_bad_arguments(case, tmp_path):
    overrides, error, match = DATASET_ARGUMENT_CASES[case]
    with pytest.raises(error, match=match):
        run(tmp_path / "out", **overrides)
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_attribute_dataset_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="out_dir .*file is a file"):
        run(tmp_path / "file")


def test_attribute_dataset_explains_the_eval_mode_model_and_restores_it(tmp_path):
    run(tmp_path / "eval", model=tiny_model(norm=True))
    model = tiny_model(norm=True).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    run(tmp_path / "train", model=model)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # BatchNorm stats untouched
    assert torch.equal(load_attributions(tmp_path / "train"), load_attributions(tmp_path / "eval"))
    run(tmp_path / "train", model=model)  # the fingerprint did not change: the resume is accepted


def test_a_second_writer_is_refused_naming_the_owner(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                                  "purpose": "attribute_dataset samp++",
                                                                  "since": "now"}))
            with pytest.raises(FolderInUseError, match=rf"in use by process {other.pid} .*attribute_dataset samp\+\+"):
                run(tmp_path / "out", resume=False)
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # nothing touched
        finally:
            other.kill()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))
    with pytest.raises(FolderInUseError, match=r"process 1 on elsewhere.*delete .*\.lock"):
        run(tmp_path / "out")


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
def test_resume_recomputes_a_damaged_shard(damage, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    shard = folder / "shard-000001.pt"
    FILE_DAMAGE[damage](shard)
    with pytest.warns(UserWarning, match=r"recomputing shard-000001.pt"):
        run(folder, evaluate=True)
    result = load_attributions(folder, details=True)
    torch.testing.assert_close(result.maps, finished[1].maps, equal_nan=True)
    assert not (folder / "pwned").exists()


def test_resume_recomputes_a_shard_of_another_run(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    run(tmp_path / "ig", method="ig", method_options={"n_steps": 4}, evaluate=True)
    (folder / "shard-000000.pt").write_bytes((tmp_path / "ig" / "shard-000000.pt").read_bytes())
    with pytest.warns(UserWarning, match=r"recomputing shard-000000.pt: .*another run"):
        run(folder, evaluate=True)
    torch.testing.assert_close(load_attributions(folder), finished[1].maps)


def test_temporary_files_of_a_killed_run_are_removed(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    leftovers = [folder / ".shard-000001.pt.tmp-999999", folder / f".{MANIFEST_NAME}.tmp-999999"]
    for path in leftovers:
        path.write_bytes(b"half")
    run(folder, evaluate=True)
    assert not any(path.exists() for path in leftovers)


# load_attributions: every edit of the manifest or the shards is refused naming the file
def edit_manifest(change):
    def apply(folder: Path):
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        change(manifest)
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
        return folder / MANIFEST_NAME
    return apply


def set_identity(key, value, inner=None):
    def change(manifest):
        (manifest["identity"][inner] if inner else manifest["identity"])[key] = value
    return change


def shard_from_another_run(folder: Path):
    other = folder.parent / "other"
    run(other, method="inputxgradient", evaluate=True)
    (folder / "shard-000002.pt").write_bytes((other / "shard-000002.pt").read_bytes())
    return folder / "shard-000002.pt"


def damaged_shard(damage):
    def apply(folder: Path):
        FILE_DAMAGE[damage](folder / "shard-000001.pt")
        return folder / "shard-000001.pt"
    return apply


LOAD_CASES = {
    "shard_size -4": edit_manifest(set_identity("shard_size", -4)),
    "shard_size 8": edit_manifest(set_identity("shard_size", 8)),
    "shard_size a string": edit_manifest(set_identity("shard_size", "4")),
    "count 16": edit_manifest(set_identity("count", 16, "input")),
    "count 10**12": edit_manifest(set_identity("count", 10 ** 12, "input")),
    "count negative": edit_manifest(set_identity("count", -1, "input")),
    "shape of rank 2": edit_manifest(set_identity("shape", [8, 8], "input")),
    "dtype int8": edit_manifest(set_identity("dtype", "int8")),
    "evaluate a string": edit_manifest(set_identity("evaluate", "yes")),
    "identity missing": edit_manifest(lambda m: m.pop("identity")),
    "identity a list": edit_manifest(lambda m: m.__setitem__("identity", [])),
    "shards missing": edit_manifest(lambda m: m.pop("shards")),
    "a shard entry dropped": edit_manifest(lambda m: m["shards"].pop()),
    "a shard file outside the folder": edit_manifest(lambda m: m["shards"][0].__setitem__("file", "../x.pt")),
    "a shard checksum edited": edit_manifest(lambda m: m["shards"][1].__setitem__("checksum", "0" * 64)),
    "run id edited": edit_manifest(lambda m: m.__setitem__("run", "0" * 64)),
    "format 1": edit_manifest(lambda m: m.__setitem__("format", 1)),
    "format 99": edit_manifest(lambda m: m.__setitem__("format", 99)),
    "not JSON": lambda folder: (folder / MANIFEST_NAME).write_text("{ half") and folder / MANIFEST_NAME,
    "a shard from another run": shard_from_another_run,
    **{f"shard {name}": damaged_shard(name) for name in FILE_DAMAGE},
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_load_attributions_refuses_edited_or_damaged_files_naming_them(case, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    culprit = LOAD_CASES[case](folder)
    with pytest.raises(CorruptFileError, match=str(culprit)):
        load_attributions(folder)


def test_load_attributions_of_an_interrupted_run_says_how_to_finish(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    (folder / "shard-000002.pt").unlink()
    with pytest.raises(ValueError, match=r"incomplete: 1 of 3 shards missing .*resume=True"):
        load_attributions(folder)
    edit_manifest(lambda m: m.__setitem__("complete", False))(folder)
    with pytest.raises(ValueError, match=r"incomplete \(the run was interrupted\)"):
        load_attributions(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_attributions(tmp_path / "nothing")


def test_an_intact_copy_loads_identically(finished, tmp_path):
    result = load_attributions(copy_of(finished, tmp_path), details=True)
    torch.testing.assert_close(result.maps, finished[1].maps)
    torch.testing.assert_close(result.deletion_auc, finished[1].deletion_auc)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_finds_one_bad_value_anywhere(dtype, bad):
    """The fused min/max check sees a single NaN/±Inf in any dtype, and passes clean, empty and int tensors."""
    from saliency_fast._common import check_finite
    clean = torch.rand(3, 2, 17, 19, generator=torch.Generator().manual_seed(0)).to(dtype)
    check_finite(clean, "inputs")
    for flat_index in (0, 777, clean.numel() - 1):
        dirty = clean.clone()
        dirty.view(-1)[flat_index] = bad
        with pytest.raises(ValueError, match="inputs contains NaN or Inf"):
            check_finite(dirty, "inputs")
    check_finite(torch.empty(0, 3, dtype=dtype), "inputs")
    check_finite(torch.arange(5), "inputs")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_finite_passes_finite_values_whose_sum_overflows(dtype):
    """A sum that overflows to Inf is not a bad value: the min/max pass decides."""
    from saliency_fast._common import check_finite
    largest = torch.finfo(dtype).max
    huge = torch.full((2, 3, 4, 4), largest, dtype=dtype)
    assert not torch.isfinite(huge.sum())
    check_finite(huge, "inputs")
    check_finite(torch.stack([huge, -huge]), "inputs")  # both signs overflow: +Inf and -Inf partial sums
    huge.view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match="inputs contains NaN or Inf"):
        check_finite(huge, "inputs")
