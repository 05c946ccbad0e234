"""What happens when things go wrong, at the command line and on the file system.

CLI promise: a failure the user can fix prints one line saying what is wrong and what to do
(plus a pointer to --debug), exits 2, and shows no traceback; ``--debug`` raises instead. File
system promises: a full disk or a read-only folder is an OSError naming the file, nothing half
written is left; a second writer is refused naming the first; ``kill -9`` at any moment loses
only unfinished work, and the rerun gives the same result as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency_fast import train
from saliency_fast.cli import main
from saliency_fast.dataset import load_attributions
from saliency_fast.train.checkpoint import LOCK_NAME

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny inputs, good and bad, shared by every CLI case."""
    root = tmp_path_factory.mktemp("cli")
    generator = torch.Generator().manual_seed(0)
    torch.save(torch.rand(3, 1, 32, 32, generator=generator), root / "digits.pt")
    torch.save(torch.rand(3, 3, 32, 32, generator=generator), root / "rgb.pt")
    torch.save(torch.rand(3, 1, 64, 64, generator=generator), root / "big.pt")
    torch.save({"a.weight": torch.zeros(3)}, root / "other_weights.pt")
    (root / "evil.pt").write_bytes(pickle.dumps(Evil()))
    (root / "notes.txt").write_text("not data\n")
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("x")
    x = np.random.default_rng(0).random((16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 3
    arrays = {
        "good": dict(x_train=x, y_train=y), "negative": dict(x_train=x, y_train=-y - 1),
        "mismatched": dict(x_train=x, y_train=y[:10]), "empty": dict(x_train=x[:0], y_train=y[:0]),
        "float_labels": dict(x_train=x, y_train=np.random.default_rng(1).random(16)),
        "out_of_range": dict(x_train=x * 3, y_train=y), "nan": dict(x_train=np.where(x > 0.9, np.nan, x), y_train=y),
        "no_labels": dict(x_train=x),
    }
    for name, content in arrays.items():
        np.savez(root / f"{name}.npz", **content)
    (root / "renamed.npz").write_text("a text file with the wrong suffix")
    # a finished training run whose checkpoint the train cases damage (copies of it)
    assert main(["train", "plain", "--data", str(root / "good.npz"), "--epochs", "1", "--batch-size", "8",
                 "--out", str(root / "trained"), "--no-progress", "--device", "cpu"]) == 0
    return root


ATTRIBUTE = ["attribute", "--model", "digits", "--method", "saliency", "--no-progress"]
TRAIN = ["train", "plain", "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu"]

# name → (argv with {root} for the fixture folder and {out} for a fresh output folder, what stderr says)
CLI_CASES = {
    # every subcommand: a device this machine lacks or that does not exist
    **{f"{command} --device bogus": ([command, *rest, "--device", "bogus"], r"--device 'bogus' is not a device; use cpu")
       for command, rest in [("demo", ["--images", "1", "--out", "{out}"]),
                             ("explain", ["--method", "saliency", "--count", "1", "--out", "{out}"]),
                             ("evaluate", ["--methods", "saliency", "--count", "1", "--out", "{out}"]),
                             ("attribute", ATTRIBUTE[1:] + ["--data", "{root}/digits.pt", "--out", "{out}"])]},
    "attribute --device cuda without CUDA": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--device",
                                                          "cuda"], r"--device cuda: .*(no CUDA|cuda:0)"),
    "attribute --out is a file": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{root}/a_file"],
                                  r"a_file is a file, not a folder"),
    "attribute --model nosuchmodule:f": (["attribute", "--model", "nosuchmodule:f", "--method", "saliency",
                                          "--data", "{root}/digits.pt", "--out", "{out}"],
                                         r"--model nosuchmodule:f: cannot import module 'nosuchmodule'"),
    "attribute --model without a factory": (["attribute", "--model", "saliency_fast:nothing", "--method", "saliency",
                                             "--data", "{root}/digits.pt", "--out", "{out}"],
                                            r"has no callable 'nothing'"),
    "attribute --weights a folder": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--weights",
                                                  "{root}/a_folder"], r"--weights .*a_folder is a folder"),
    "attribute --weights a text file": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--weights",
                                                     "{root}/notes.txt"], r"notes.txt is not a readable state_dict"),
    "attribute --weights of another model": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--weights",
                                                          "{root}/other_weights.pt"],
                                             r"other_weights.pt does not fit --model digits: Missing key"),
    "attribute --weights malicious": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--weights",
                                                   "{root}/evil.pt"], r"evil.pt .*could run code"),
    "attribute --weights missing": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--weights",
                                                 "{root}/missing.pt"], r"missing.pt does not exist"),
    "attribute 3-channel images": (ATTRIBUTE + ["--data", "{root}/rgb.pt", "--out", "{out}"],
                                   r"cannot take the 3×32×32 \(C×H×W\) images"),
    "attribute 64×64 images": (ATTRIBUTE + ["--data", "{root}/big.pt", "--out", "{out}"],
                               r"cannot take the 1×64×64 \(C×H×W\) images"),
    "attribute --option max_steps=1": (["attribute", "--model", "digits", "--method", "samp", "--no-progress",
                                        "--data", "{root}/digits.pt", "--out", "{out}", "--option", "max_steps=1"],
                                       r"SAMP exceeded max_steps=1 .*raise max_steps"),
    "attribute --option unknown": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--option", "n=1"],
                                   r"has no option\(s\) n"),
    "attribute --data a text file": (ATTRIBUTE + ["--data", "{root}/notes.txt", "--out", "{out}"],
                                     r"notes.txt must be .pt, .pth or .npy"),
    "attribute --data missing": (ATTRIBUTE + ["--data", "{root}/missing.npy", "--out", "{out}"],
                                 r"missing.npy does not exist"),
    "attribute --batch-size 0": (ATTRIBUTE + ["--data", "{root}/digits.pt", "--out", "{out}", "--batch-size", "0"],
                                 r"batch_size must be a positive int"),
    "explain 3-channel images": (["explain", "--images", "{root}/rgb.pt", "--method", "saliency", "--out", "{out}"],
                                 r"cannot take the 3×32×32 \(C×H×W\) images of --images"),
    "explain --count 0": (["explain", "--count", "0", "--out", "{out}"], r"--count must be >= 1"),
    "evaluate unknown method": (["evaluate", "--methods", "lime2", "--out", "{out}"], r"--methods: unknown \['lime2'\]"),
    "evaluate 64×64 images": (["evaluate", "--images", "{root}/big.pt", "--methods", "saliency", "--out", "{out}"],
                              r"cannot take the 1×64×64"),
    "demo --images 0": (["demo", "--images", "0", "--out", "{out}"], r"--images must be >= 1"),
    "train --data a text file": (TRAIN + ["--data", "{root}/notes.txt", "--out", "{out}"],
                                 r"--data .*notes.txt: expected 'digits' or an .npz"),
    "train --data not a zip": (TRAIN + ["--data", "{root}/renamed.npz", "--out", "{out}"],
                               r"renamed.npz cannot be read as an .npz"),
    "train negative labels": (TRAIN + ["--data", "{root}/negative.npz", "--out", "{out}"], r"y_train holds negative"),
    "train mismatched lengths": (TRAIN + ["--data", "{root}/mismatched.npz", "--out", "{out}"],
                                 r"y_train has 10 labels for 16 images"),
    "train empty arrays": (TRAIN + ["--data", "{root}/empty.npz", "--out", "{out}"], r"x_train holds no images"),
    "train float labels": (TRAIN + ["--data", "{root}/float_labels.npz", "--out", "{out}"],
                           r"y_train holds non-integer values"),
    "train values outside [0, 1]": (TRAIN + ["--data", "{root}/out_of_range.npz", "--out", "{out}"],
                                    r"x_train must hold values in \[0, 1\]"),
    "train NaN images": (TRAIN + ["--data", "{root}/nan.npz", "--out", "{out}"], r"x_train contains NaN or Inf"),
    "train no labels": (TRAIN + ["--data", "{root}/no_labels.npz", "--out", "{out}"], r"lacks the arrays \['y_train'\]"),
    "train --set k=abc": (["train", "sgt", "--data", "{root}/good.npz", "--out", "{out}", "--set", "k=abc"],
                          r"--set k=abc: k must be a number"),
    "train --set unknown": (TRAIN + ["--data", "{root}/good.npz", "--out", "{out}", "--set", "nope=1"],
                            r"does not take nope"),
    "train --lr 1e12": (TRAIN + ["--data", "{root}/good.npz", "--out", "{out}", "--lr", "1e12"],
                        r"training loss is nan .*Lower the learning rate"),
    "train --device cuda without CUDA": (["train", "plain", "--out", "{out}", "--device", "cuda:7"],
                                         r"--device cuda:7: "),
    "train resume with another --lr": (TRAIN + ["--data", "{root}/good.npz", "--out", "{root}/trained", "--epochs",
                                                "2", "--lr", "0.5"], r"lr \(saved 0.001, now 0.5\).*--no-resume"),
}


def run_cli(argv, root: Path, out: Path):
    return main([part.format(root=root, out=out) for part in argv])


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_user_errors_print_one_line_and_exit_2(case, files, tmp_path, capsys):
    if "without CUDA" in case and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, expected = CLI_CASES[case]
    code = run_cli(argv, files, tmp_path / "out")
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("saliency-fast") or line.startswith("(add")]
    assert code == 2, error
    assert "Traceback" not in error
    assert len(lines) == 2 and lines[1].startswith("(add --debug"), error
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "out" / LOCK_NAME).exists() and not (files / "pwned").exists()


def test_debug_shows_the_exception(files, tmp_path):
    with pytest.raises(ValueError, match="is not a device"):
        main(["--debug", "explain", "--device", "bogus", "--out", str(tmp_path)])


def test_a_real_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from saliency_fast.commands import explain

    def broken(args):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(explain, "run", broken)
    with pytest.raises(RuntimeError, match="an internal error"):
        main(["explain", "--out", str(tmp_path)])


def test_bench_passes_pytest_options_through(monkeypatch):
    from saliency_fast.commands import bench

    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda command, cwd: calls.append(command) or 0)
    assert main(["bench", "-k", "samp", "-x"]) == 0  # the example in its own help
    assert calls[0][-3:] == ["-k", "samp", "-x"]
    monkeypatch.setattr(bench.os.path, "exists", lambda path: False)
    assert main(["bench"]) == 2  # an installed package without bench/: one line


def test_unknown_arguments_of_other_subcommands_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--nonsense"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --nonsense" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "empty", "foreign", "malicious"])
def test_train_resume_from_a_damaged_checkpoint(damage, files, tmp_path, capsys):
    import shutil

    from tests.test_faults import FILE_DAMAGE

    out = Path(shutil.copytree(files / "trained", tmp_path / "trained"))
    name = {"zeroed": "zeroed bytes", "malicious": "malicious pickle"}.get(damage, damage)
    FILE_DAMAGE[name](out / "last.pt")
    argv = TRAIN + ["--data", str(files / "good.npz"), "--out", str(out), "--epochs", "2"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{out / 'last.pt'}" in error and "--no-resume" in error and "Traceback" not in error
    assert main(argv + ["--no-resume"]) == 0


def test_attribute_resume_recomputes_a_corrupt_shard(files, tmp_path, capsys):
    argv = ATTRIBUTE + ["--data", str(files / "digits.pt"), "--out", str(tmp_path), "--shard-size", "2"]
    assert main(argv) == 0
    reference = load_attributions(tmp_path)
    (tmp_path / "shard-000001.pt").write_bytes((tmp_path / "shard-000001.pt").read_bytes()[:100])
    with pytest.warns(UserWarning, match="recomputing shard-000001.pt"):
        assert main(argv) == 0
    assert torch.equal(load_attributions(tmp_path), reference)


def test_the_installed_command_shows_no_traceback(tmp_path):
    """The real entry point in its own process: one line on stderr, exit 2."""
    done = subprocess.run([sys.executable, "-m", "saliency_fast", "attribute", "--model", "digits", "--method", "ig",
                           "--data", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith(("saliency-fast", "(add"))] == [
        f"saliency-fast attribute: error: data path {tmp_path / 'missing.pt'} does not exist (expected a .pt/.npy "
        "file or an image folder)", "(add --debug before the subcommand for the traceback)"]


# ==============================================================================================
# small and read-only file systems (a tmpfs mounted for the test; skipped where we may not mount)
# ==============================================================================================
@contextlib.contextmanager
def mounted(folder: Path, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_during_attribution_is_one_line_naming_the_file(files, tmp_path, capsys):
    with mounted(tmp_path / "small", "size=48k") as small:
        data = tmp_path / "many.pt"
        torch.save(torch.rand(40, 1, 32, 32), data)  # 40 maps × 4 KiB: more than the disk holds
        code = main(ATTRIBUTE + ["--data", str(data), "--out", str(small / "out"), "--shard-size", "8"])
        error = capsys.readouterr().err
        assert code == 2 and "Traceback" not in error, error
        assert "No space left on device" in error and "free some disk space" in error
        assert f"{small / 'out'}/" in error  # names the file it could not write
        assert not list((small / "out").glob(".*tmp-*")) and not (small / "out" / LOCK_NAME).exists()


def test_full_disk_during_training_names_the_checkpoint(tmp_path):
    with mounted(tmp_path / "small", "size=16k") as small:
        from tests.test_faults import loader

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 3))  # 70 KiB of weights
        with pytest.raises(OSError, match=rf"cannot write {small}/last.pt: No space left on device") as raised:
            train.fit(model, train.Plain(), loader(), 1, checkpoint_dir=small, progress=False)
        assert raised.value.errno == errno.ENOSPC
        assert sorted(p.name for p in small.iterdir()) == []  # no half-written file, no lock


def test_read_only_output_folder(files, tmp_path, capsys):
    with mounted(tmp_path / "ro", "ro,size=16k") as read_only:
        code = main(ATTRIBUTE + ["--data", str(files / "digits.pt"), "--out", str(read_only)])
        error = capsys.readouterr().err
        assert code == 2 and "Traceback" not in error
        assert f"cannot write in {read_only}: Read-only file system; choose a writable folder" in error


# ==============================================================================================
# concurrent writers and kill -9
# ==============================================================================================
def start_attribute(data: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saliency_fast", "attribute", "--model", "digits", "--method",
                             "ig", "--option", "n_steps=512", "--data", str(data), "--out", str(out), "--shard-size",
                             "2", "--batch-size", "2", "--no-progress"], env=ENVIRONMENT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def wait_for(condition, process, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_second_writer_refused_then_kill_9_at_a_random_moment_and_resume(seed, tmp_path, capsys):
    data = tmp_path / "data.pt"
    torch.save(torch.rand(24, 1, 32, 32, generator=torch.Generator().manual_seed(seed)), data)
    argv = ["attribute", "--model", "digits", "--method", "ig", "--option", "n_steps=512", "--data", str(data),
            "--shard-size", "2", "--batch-size", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "reference")]) == 0
    first = start_attribute(data, tmp_path / "out")
    try:
        wait_for(lambda: (tmp_path / "out" / LOCK_NAME).exists(), first)
        # a second run into the same folder, even one that would overwrite it, is refused naming the first
        assert main(["attribute", "--model", "digits", "--method", "saliency", "--data", str(data), "--out",
                     str(tmp_path / "out"), "--no-resume", "--no-progress"]) == 2
        assert f"in use by process {first.pid}" in capsys.readouterr().err
        # killed somewhere in the middle of the run: after 1 to 6 of its 12 shards (a fixed sleep
        # instead let a fast machine finish the run first, and then there was no lock to take over)
        kill_after = random.Random(seed).randint(1, 6)
        wait_for(lambda: len(list((tmp_path / "out").glob("shard-*.pt"))) >= kill_after, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock of process {first.pid}"):
        assert main(argv + ["--out", str(tmp_path / "out")]) == 0
    assert torch.equal(load_attributions(tmp_path / "out"), load_attributions(tmp_path / "reference"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


FIT_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
from tests.test_faults import loader, tiny_model
from saliency_fast import train
model = tiny_model()
train.fit(model, train.SaliencyGuided(k=0.5), loader(), 60, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
          checkpoint_dir={out!r}, progress=False)
"""


@pytest.mark.slow
def test_fit_killed_9_at_a_random_moment_resumes_to_the_same_weights(tmp_path):
    from tests.test_faults import loader, tiny_model

    def finish(folder):
        model = tiny_model()
        train.fit(model, train.SaliencyGuided(k=0.5), loader(), 60, optimizer=torch.optim.SGD(model.parameters(),
                  lr=0.05), checkpoint_dir=folder, progress=False)
        return model

    reference = finish(tmp_path / "reference")
    killed = subprocess.Popen([sys.executable, "-c", FIT_SCRIPT.format(repo=str(REPO), out=str(tmp_path / "out"))],
                              env=ENVIRONMENT, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (tmp_path / "out" / "last.pt").exists(), killed)
        time.sleep(random.Random(uuid.uuid4().int).uniform(0.0, 0.3))
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    with pytest.warns(UserWarning, match="taking over the lock"):
        resumed = finish(tmp_path / "out")
    for (name, want), got in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


# ==============================================================================================
# the test suite itself against a non-editable install
# ==============================================================================================
@pytest.mark.slow
def test_tests_run_against_a_non_editable_install_whose_source_tree_is_not_built(tmp_path):
    """After ``pip install .`` the source tree beside tests/ has no compiled _C; pytest puts that
    tree first on sys.path. conftest.py then imports the installed copy (here: a copy of this
    package in a site folder with its dist-info), so the suite tests what is installed."""
    import shutil

    site, source = tmp_path / "site", tmp_path / "source"
    shutil.copytree(REPO / "saliency_fast", site / "saliency_fast", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "saliency_fast-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: saliency_fast\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("")
    shutil.copytree(REPO / "saliency_fast", source / "saliency_fast",
                    ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_C*.pyd", "weights"))
    (source / "tests").mkdir()
    for name in ("__init__.py", "conftest.py"):
        shutil.copy(REPO / "tests" / name, source / "tests" / name)
    (source / "tests" / "test_where.py").write_text(
        "import saliency_fast\n\ndef test_where():\n    assert saliency_fast.native_available()\n"
        f"    assert saliency_fast.__file__ == {str(site / 'saliency_fast' / '__init__.py')!r}\n")
    # -S: no site processing, so an editable install of this checkout (a .pth finder) cannot interfere
    packages = [p for p in sys.path if p.endswith("site-packages")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *packages]),
                   "SALIENCY_FAST_REQUIRE_NATIVE": "1"}
    command = [sys.executable, "-S", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_where.py"]
    done = subprocess.run(command, cwd=source, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    forced = subprocess.run(command, cwd=source, env={**environment, "SALIENCY_FAST_TEST_SOURCE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode != 0 and "saliency_fast._C) is not built" in forced.stdout + forced.stderr  # the source tree's own, clear failure
