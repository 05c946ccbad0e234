"""The demo and explain subcommands end to end (small), and CLI error handling."""
import os
import subprocess
import sys

import pytest
import torch

from saliency_fast.cli import main


def test_demo_writes_the_grid_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert os.path.getsize(tmp_path / "demo.png") > 10_000
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("SAMP", "gradient"))}
    assert set(rows) == {"gradient", "SAMP", "SAMP++"}
    assert float(rows["SAMP++"][1]) >= 0 and int(rows["SAMP++"][2]) > 50  # IC: at least ~n_frag steps per path


def test_explain_saves_maps_for_user_images(tmp_path, capsys):
    images = torch.rand(3, 1, 32, 32)
    torch.save(images, tmp_path / "images.pt")
    code = main(["explain", "--images", str(tmp_path / "images.pt"), "--method", "saliency", "--out",
                 str(tmp_path / "out"), "--target", "3"])
    assert code == 0
    saved = torch.load(tmp_path / "out" / "maps.pt", weights_only=True)
    assert saved["maps"].shape == (3, 32, 32) and bool(torch.isfinite(saved["maps"]).all())
    assert (tmp_path / "out" / "explain.png").exists()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["explain", "--images", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--images", "0", "--out", str(tmp_path)]) == 2


def test_module_entry_point_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "saliency_fast", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("saliency_fast 0.1.0\n") and "compiled ops: loaded (cpu" in out


def test_evaluate_writes_table_csv_json_and_curves(tmp_path, capsys):
    import json

    code = main(["evaluate", "--count", "3", "--methods", "saliency,ig", "--option", "ig.n_steps=16",
                 "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["saliency", "ig"]
    ig = rows[1]
    assert ig["completeness_error"] < 0.05  # Gauss–Legendre IG on a ReLU CNN is nearly complete
    assert all(r["insertion_auc"] == r["insertion_auc"] and 0 <= r["gini"] <= 1 for r in rows)
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "results.csv").exists()
    assert "| ig |" in capsys.readouterr().out
    assert main(["evaluate", "--methods", "occlusion", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("method", ["res-g", "res-l"])
def test_train_res_on_annotated_digits_writes_checkpoint_log_and_figures(tmp_path, method):
    import json

    out = tmp_path / method
    code = main(["train", method, "--epochs", "1", "--n-train", "128", "--n-annotated", "32", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    for name in ("last.pt", "log.jsonl", "model.pt", "gradcam_masks.png", "gradient_maps.png"):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records and all(r["loss"] == r["loss"] for r in records if "loss" in r)  # logged, finite
