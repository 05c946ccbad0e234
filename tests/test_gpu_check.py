"""scripts/gpu_check.py without a GPU: the dry run's report, time boxes that kill a hung stage
(and its children) while the next stage still runs, failures in the exit status; and the
sanitizer driver's cases on the CPU ops."""
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

import saliency_fast as sf

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("gpu_check")


def python_stage(gpu_check, name, code, limit_s=30.0, reserve_s=1.0):
    return gpu_check.Stage(name, lambda context: [sys.executable, "-c", code], limit_s, reserve_s)


def test_failed_and_hung_stages_are_recorded_and_the_next_still_runs(gpu_check, tmp_path):
    child_marker = tmp_path / "child-survived"
    child = f"import time; time.sleep(4); open({json.dumps(str(child_marker))}, 'w')"
    hang = (  # a stage whose child process would outlive a kill of the stage's first process alone
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(60)\n"
    )
    stages = [
        python_stage(gpu_check, "fails", "import sys; print('boom'); sys.exit(3)"),
        python_stage(gpu_check, "hangs", hang, limit_s=2.0),
        python_stage(gpu_check, "passes", "print('fine')"),
    ]
    start = time.monotonic()
    status = gpu_check.main([str(tmp_path / "out")], stage_list=stages)
    assert time.monotonic() - start < 30
    assert status == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    results = {stage["name"]: stage for stage in report["stages"]}
    assert results["fails"]["status"] == "failed" and results["fails"]["returncode"] == 3
    assert "boom" in results["fails"]["tail"]
    assert results["hangs"]["status"] == "timeout" and results["hangs"]["seconds"] < 10
    assert results["passes"]["status"] == "passed" and "fine" in results["passes"]["tail"]
    assert not report["ok"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| fails | failed |" in markdown and "| hangs | timeout |" in markdown and "FAILED" in markdown
    time.sleep(4.5)
    assert not child_marker.exists(), "the hung stage's child process outlived the time box"


def test_budget_reserves_time_for_later_stages(gpu_check, tmp_path):
    stages = [python_stage(gpu_check, "greedy", "import time; time.sleep(60)", limit_s=60.0, reserve_s=1.0),
              python_stage(gpu_check, "later", "print('ran')", limit_s=30.0, reserve_s=3.0)]
    status = gpu_check.main([str(tmp_path), "--budget", "9"], stage_list=stages)
    results = {s["name"]: s for s in json.loads((tmp_path / "report.json").read_text())["stages"]}
    assert results["greedy"]["status"] == "timeout" and results["greedy"]["limit_s"] <= 6.5
    assert results["later"]["status"] == "passed"
    assert status == 1


def test_unknown_stage_is_refused(gpu_check, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--stages", "environment,nonsense"])


def test_gpu_stages_skip_in_the_dry_run(gpu_check, tmp_path):
    context = gpu_check.Context(out=tmp_path, dry_run=True)
    by_name = {stage.name: stage for stage in gpu_check.stages()}
    for name in ["build", "wheels", *(f"sanitizer-{tool}" for tool in gpu_check.SANITIZER_TOOLS)]:
        assert by_name[name].command(context) is None, name
    gpu = gpu_check.Context(out=tmp_path, dry_run=False)
    memcheck = by_name["sanitizer-memcheck"].command(gpu)
    assert memcheck[0].endswith("compute-sanitizer") and memcheck[1:3] == ["--tool", "memcheck"]
    assert "--max-pixels" not in memcheck and "--max-pixels" in by_name["sanitizer-racecheck"].command(gpu)
    assert by_name["sanitizer-initcheck"].env(gpu) == {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    assert by_name["build"].env(gpu)["FORCE_CUDA"] == "1"
    assert by_name["tests"].command(gpu)[-3:] == ["-m", "cuda", "tests"]
    assert by_name["sanitizer-cpu-driver"].command(gpu) is None


@pytest.mark.skipif(not sf.native_available(), reason="the sanitizer driver calls the compiled ops")
def test_dry_run_writes_the_report(gpu_check, tmp_path):
    """The CPU dry run of the real stages (the CUDA test files are left to the suite itself)."""
    status = gpu_check.main([str(tmp_path), "--dry-run", "--stages",
                             "environment,build,sanitizer-cpu-driver,sanitizer-memcheck,bench"])
    report = json.loads((tmp_path / "report.json").read_text())
    results = {s["name"]: s for s in report["stages"]}
    assert status == 0 and report["ok"] and report["dry_run"], report
    assert results["build"]["status"] == "skipped" and results["sanitizer-memcheck"]["status"] == "skipped"
    assert report["environment"]["torch"] and report["environment"]["cpu_count"] >= 1
    assert "cases ran" in results["sanitizer-cpu-driver"]["tail"]
    names = [r["name"] for r in report["bench"]["results"]]
    assert report["bench"]["toy"] and not report["bench"]["errors"], report["bench"]["errors"]
    assert any(name.startswith("SAMP++ end to end") for name in names)
    assert any(name.startswith("Deletion + Insertion") for name in names)
    markdown = (tmp_path / "report.md").read_text()
    assert "## GPU" in markdown and "dry run" in markdown


@pytest.mark.skipif(not sf.native_available(), reason="the sanitizer driver calls the compiled ops")
def test_sanitizer_driver_covers_every_op_on_cpu():
    driver = load_script("sanitizer_driver")
    labels = [label for family in driver.ALL_CASES for label, _ in family("cpu")]
    for op in ("samp_step", "saliency_budget", "masked_perturb", "masked_random_fill", "perturbation_curve"):
        assert any(label.startswith(op) for label in labels), op
    assert any("empty rows" in label for label in labels) and any("NaN" in label for label in labels)
    assert driver.case_pixels("samp_step ties 4x3x16x16 torch.float32") == 256
    assert driver.case_pixels("saliency_budget 224x224 torch.float32 mass") == 224 * 224
    small = [label for label in labels if driver.case_pixels(label) <= 64]
    result = driver.run_cases("cpu", max_pixels=64)  # every case runs in the dry run's driver stage
    assert result["ran"] + len(result["rejected"]) == len(small) > 0
    assert result["left_out"] == len(labels) - len(small) > 0


def test_gpu_report_merges_into_benchmarks_md_once():
    sys.path.insert(0, str(ROOT))
    from bench.write_benchmarks import GPU_BEGIN, GPU_END, gpu_section, merge_gpu_section

    report = {"environment": {"date": "2026-12-04", "gpu": "NVIDIA H200", "capability": "9.0", "driver": "580",
                              "torch": "2.11.0+cu130", "torch_cuda": "13.0", "saliency_fast": "0.1.0",
                              "native_backends": ["cpu", "cuda"]},
              "toy": False, "errors": [],
              "results": [{"name": "SAMP++ end to end / model-only bound, float32", "candidate_ms": 105.0,
                           "baseline_ms": 100.0, "ratio": 1.05, "target": "<= 1.05x", "met": True},
                          {"name": "kernel launches per SAMP++ step outside the model, float32", "value": 12.0,
                           "target": "<= 15", "met": True}]}
    cpu_text = "# Benchmarks\n\n### a CPU table\n"
    merged = merge_gpu_section(cpu_text, report)
    assert merged.startswith(cpu_text.rstrip("\n")) and merged.count(GPU_BEGIN) == 1 and GPU_END in merged
    assert "NVIDIA H200" in merged and "| 105.00 | 100.00 | 1.05× | <= 1.05x | yes |" in merged
    assert "| 12.0 | <= 15 | yes |" in merged
    report["environment"]["driver"] = "581"
    again = merge_gpu_section(merged, report)  # replaced, not appended
    assert again.count(GPU_BEGIN) == 1 and "driver 581" in gpu_section(again) and "driver 580" not in again
