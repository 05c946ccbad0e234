"""sf.train.fit: history and log, atomic checkpoints, resume after a kill == uninterrupted run,
2-process DDP (gloo) == 1 process, NaN/Inf stop, argument errors."""
import json

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from saliency_fast import train
from saliency_fast._distributed import destroy_process_group
from saliency_fast.train import MethodOutput, TrainingDiverged


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def tiny_data(n=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    y = (x[:, 0, :4].mean(dim=(1, 2)) * 3).long().clamp(0, 2)
    return x, y


def tiny_loader(batch_size=16, shuffle_seed=0, n=48):
    x, y = tiny_data(n)
    generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)


class FailAt(train.TrainingMethod):
    """Wraps a method and fails (a simulated kill, or a NaN loss) at one (epoch, batch)."""

    def __init__(self, inner, epoch, batch, nan=False):
        self.inner, self.fail_epoch, self.fail_batch, self.nan, self.seen = inner, epoch, batch, nan, 0
        self.name = inner.name

    def config(self):  # the wrapped method's hyper-parameters: a resumed run uses the method itself
        return self.inner.config()

    def epoch_start(self, epoch, epochs):
        self.seen = 0
        self.inner.epoch_start(epoch, epochs)

    def loss(self, model, batch, epoch):
        self.seen += 1
        output = self.inner.loss(model, batch, epoch)
        if (epoch, self.seen) == (self.fail_epoch, self.fail_batch):
            if not self.nan:
                raise KeyboardInterrupt("simulated kill")
            return MethodOutput(output.loss * float("nan"), output.logits, output.terms)
        return output


def scaat():
    return train.SCAAT(epsilon=0.1, steps=2, warmup_epochs=1, ramp_epochs=1)


def test_history_log_and_checkpoint(tmp_path):
    model = tiny_model()
    history = train.fit(model, scaat(), tiny_loader(), 2, val_loader=tiny_loader(), checkpoint_dir=tmp_path,
                        progress=False)
    assert history["epoch"] == [1, 2]
    assert history["epsilon"] == pytest.approx([0.0, 0.1])
    for key in ("loss", "accuracy", "ce", "time", "val_loss", "val_accuracy", "lr"):
        assert all(value is not None for value in history[key]), key
    assert history[1]["kl"] >= 0 and 0 < history[1]["budget_fraction"] < 1
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and lines[1]["loss"] == pytest.approx(history[1]["loss"])
    state = train.load_checkpoint(tmp_path / "last.pt")  # weights_only=True load
    assert state["epoch"] == 2 and state["method_name"] == "scaat"
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "log.jsonl"]  # no temporary files left


def run_to_completion(checkpoint_dir, method, epochs=3, fail=None):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    if fail is not None:
        method = FailAt(method, *fail)
    history = train.fit(model, method, tiny_loader(), epochs, optimizer=optimizer, checkpoint_dir=checkpoint_dir,
                        progress=False, scheduler=scheduler)
    return model, history


@pytest.mark.parametrize("make_method", [scaat, lambda: train.SaliencyGuided(k=0.5)], ids=["scaat", "sgt"])
def test_resume_after_kill_gives_the_same_weights(tmp_path, make_method):
    torch.manual_seed(123)
    reference, reference_history = run_to_completion(tmp_path / "straight", make_method())
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 3
        run_to_completion(tmp_path / "killed", make_method(), fail=(2, 2))
    assert train.load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    torch.manual_seed(999)  # the resumed process starts from another RNG state: the checkpoint restores it
    resumed, resumed_history = run_to_completion(tmp_path / "killed", make_method())
    for (name, want), got in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(got, want), name
    assert resumed_history["loss"] == reference_history["loss"]
    assert resumed_history["lr"] == [0.1, 0.05, 0.025]


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    model, history = run_to_completion(tmp_path, train.Plain(), epochs=1)
    again, history_again = run_to_completion(tmp_path, train.Plain(), epochs=1)
    for want, got in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(got, want)
    assert history_again["loss"] == history["loss"]


def test_resume_with_another_method_is_refused(tmp_path):
    run_to_completion(tmp_path, train.Plain(), epochs=1)
    with pytest.raises(ValueError, match="written by method 'plain'"):
        run_to_completion(tmp_path, scaat(), epochs=2)


def test_nan_loss_names_epoch_and_batch_and_keeps_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"epoch 2 of 3, batch 3;.*last good checkpoint \(1 epochs\)"):
        run_to_completion(tmp_path, train.Plain(), fail=(1, 3, True))
    state = train.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_amp_on_cpu_runs_and_reports():
    history = train.fit(tiny_model(), train.SCAAT(epsilon=0.1, steps=1, warmup_epochs=0), tiny_loader(), 1,
                        amp=True, progress=False)
    assert history[0]["loss"] > 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="method must be"):
        train.fit(tiny_model(), "scaat", tiny_loader(), 1)
    with pytest.raises(ValueError, match="epochs"):
        train.fit(tiny_model(), train.Plain(), tiny_loader(), -1)
    with pytest.raises(ValueError, match="no batch"):
        train.fit(tiny_model(), train.Plain(), [], 1, progress=False)


def test_evaluate_matches_a_manual_count():
    model = tiny_model()
    x, y = tiny_data()
    result = train.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=10))
    with torch.no_grad():
        logits = model(x)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)


class LearnedTemperature(train.TrainingMethod):
    """A method with its own learnable parameter (as RES-L's Φ): CE of logits / exp(t)."""

    name = "temperature"

    def __init__(self):
        self.log_t = torch.nn.Parameter(torch.zeros(()))

    def parameters(self):
        return [self.log_t]

    def state_dict(self):
        return {"log_t": self.log_t.detach().clone()}

    def load_state_dict(self, state):
        self.log_t.data.copy_(state["log_t"])

    def loss(self, model, batch, epoch):
        logits = model(batch[0])
        return MethodOutput(nn.functional.cross_entropy(logits / self.log_t.exp(), batch[1]), logits)


DDP_METHODS = {
    "plain": train.Plain,
    "temperature": LearnedTemperature,
    # deterministic attack (no random start) so that the two runs draw no different random numbers
    "scaat": lambda: train.SCAAT(epsilon=0.1, steps=2, attack_loss="ce", random_start=False, warmup_epochs=0),
}


def ddp_worker(rank, world, init_file, method_name, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, method = tiny_model(), DDP_METHODS[method_name]()
        history = train.fit(model, method, tiny_loader(), 2, progress=False,
                            optimizer=torch.optim.SGD(list(model.parameters()) + method.parameters(), lr=0.2))
        if rank == 0:
            torch.save({"model": model.state_dict(), "method": method.state_dict(), "loss": history["loss"]}, out_file)
    finally:
        destroy_process_group()  # collects fit's DDP wrapper first: see saliency_fast/_distributed.py


@pytest.mark.parametrize("method_name", sorted(DDP_METHODS))
def test_ddp_two_gloo_processes_match_one_process(tmp_path, method_name):
    out_file = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "init"), method_name, str(out_file)), nprocs=2, join=True)
    distributed = torch.load(out_file, weights_only=True)
    model, method = tiny_model(), DDP_METHODS[method_name]()
    history = train.fit(model, method, tiny_loader(), 2, progress=False,
                        optimizer=torch.optim.SGD(list(model.parameters()) + method.parameters(), lr=0.2))
    for name, tensor in {**model.state_dict(), **method.state_dict()}.items():
        want = distributed["method"][name] if name in distributed["method"] else distributed["model"][name]
        torch.testing.assert_close(want, tensor, rtol=1e-5, atol=1e-6, msg=name)
    if method_name == "temperature":
        assert float(method.log_t.detach()) != 0.0  # the method's own parameter was trained
    assert distributed["loss"] == pytest.approx(history["loss"], rel=1e-5)


def test_cli_trains_on_user_data_and_writes_outputs(tmp_path, capsys):
    import numpy as np

    from saliency_fast.cli import main

    x, y = tiny_data(32)
    np.savez(tmp_path / "data.npz", x_train=x.numpy(), y_train=y.numpy())
    out = tmp_path / "run"
    code = main(["train", "scaat", "--data", str(tmp_path / "data.npz"), "--epochs", "2", "--batch-size", "16",
                 "--epsilon", "0.1", "--steps", "1", "--warmup-epochs", "1", "--out", str(out), "--no-progress",
                 "--set", "rho=0.2"])
    assert code == 0
    assert {"last.pt", "log.jsonl", "model.pt", "gradient_maps.png"} <= {p.name for p in out.iterdir()}
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert "rho=0.2" in capsys.readouterr().out
    assert main(["train", "plain", "--data", str(tmp_path / "data.npz"), "--rho", "0.1"]) == 2  # plain takes no rho
    assert "does not take rho" in capsys.readouterr().err


def test_run_config_records_settings_as_json():
    """The config a checkpoint keeps (what resume compares): plain data as is, tuples as lists, a
    one-element tensor by value, other tensors by shape and checksum, modules by repr, other
    objects by their type's name — through the one JSON walker the manifests use too."""
    import numpy as np

    from saliency_fast._jsonable import jsonable
    from saliency_fast.train.checkpoint import content_checksum
    from saliency_fast.train.fit import run_config

    assert jsonable({"a": (1, "x"), 2: [None, np.float64(0.5), 3j]}, lambda value: f"leaf {value!r}") == \
        {"a": [1, "x"], "2": [None, 0.5, "leaf 3j"]}

    class Settings(train.Plain):
        def __init__(self):
            self.scale, self.kernel, self.act, self.other = torch.tensor(2.5), torch.ones(2, 3), nn.ReLU(), object()
            self.pair = (1, {4: torch.zeros(2)})

    model = nn.Linear(2, 2)
    config = run_config(Settings(), torch.optim.SGD(model.parameters(), lr=0.1), None, amp=False)
    assert config["method"] == {"scale": 2.5, "kernel": {"tensor": [2, 3], "checksum": content_checksum(torch.ones(2, 3))},
                                "act": "ReLU()", "other": "object",
                                "pair": [1, {"4": {"tensor": [2], "checksum": content_checksum(torch.zeros(2))}}]}
    assert config["optimizer"]["class"] == "SGD" and config["optimizer"]["groups"][0]["lr"] == 0.1
    assert config["scheduler"] is None and config["amp"] is False
    json.dumps(config)
