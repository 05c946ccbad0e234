"""One prepared GPU check (`make gpu-check OUT=dir`), for a GPU machine without network that has a
CUDA build of torch, nvcc, pytest and the test dependencies preinstalled.

    python scripts/gpu_check.py OUT [--budget 480] [--stages build,tests,...] [--dry-run]

Stages, in order, each run as a subprocess with its own time box (the whole run is kept within
``--budget`` seconds: a stage gets at most what is left after reserving the later stages'
minimums), its output in OUT/logs/<stage>.log. A stage that fails or times out is recorded and
the next one still runs; the exit status is 1 if any stage failed.

- environment: GPU, driver, torch, CUDA and nvcc versions (nvidia-smi, torch, nvcc --version)
- wheels: ``pip install --no-index --find-links wheels/`` of the carried wheels (captum,
  quantus, saliency and their pure-Python dependencies, ninja: `make wheels`), when there are any
- build: the extension in place against the installed torch (CUDA build, TORCH_CUDA_ARCH_LIST
  from the GPU's compute capability), then scripts/check_cuda_build.py
- tests: every CUDA test (``pytest -m cuda tests``; tests/conftest.py marks them)
- bench: the GPU benchmarks (bench/gpu_bench.py) → OUT/gpu_bench.json and its Markdown, ready
  for BENCHMARKS.md (``python bench/write_benchmarks.py --gpu OUT/gpu_bench.json``)
- sanitizer-memcheck, -racecheck, -synccheck, -initcheck: compute-sanitizer over
  scripts/sanitizer_driver.py, which calls every op at several sizes and edge cases

OUT/report.md and OUT/report.json hold every stage's status, time, limit and the tail of its log.

``--dry-run`` (alias ``--cpu-only``) runs the orchestration on a machine without a GPU: no build,
no wheels, no sanitizer; the CUDA test files are collected and their CPU dry-run cases run, the
sanitizer driver runs its cases on the CPU ops and the benchmarks run at toy sizes on the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 480  # the limit: the whole run within 8 minutes
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
SANITIZER_MAX_PIXELS = 64 * 64
LOG_TAIL_CHARS = 2500


@dataclass
class Stage:
    """One step of the check: ``command(context)`` returns the argv to run (None: skip, with
    ``skip_reason(context)`` saying why); ``limit_s`` its time box and ``reserve_s`` the least
    time worth giving it (kept free by the stages before it)."""

    name: str
    command: Callable[["Context"], Optional[List[str]]]
    limit_s: float
    reserve_s: float
    env: Callable[["Context"], Dict[str, str]] = lambda context: {}
    skip_reason: Callable[["Context"], str] = lambda context: "not needed"


@dataclass
class Context:
    out: Path
    dry_run: bool
    python: str = sys.executable
    facts: dict = field(default_factory=dict)  # what the stages learn (the GPU's arch, ...)


@dataclass
class StageResult:
    name: str
    status: str  # passed | failed | timeout | skipped
    seconds: float
    limit_s: float
    returncode: Optional[int]
    log: Optional[str]
    tail: str = ""
    note: str = ""


# -- what the stages run -----------------------------------------------------------------------
def cuda_arch(python: str = sys.executable) -> Optional[str]:
    """The first GPU's compute capability as TORCH_CUDA_ARCH_LIST wants it ("9.0"), or None; asked
    in a child process, so that this one holds no CUDA context while the stages run."""
    code = "import torch; print('%d.%d' % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else '')"
    try:
        answer = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.splitlines()[-1] if answer else None


def cuda_home() -> Optional[str]:
    """The CUDA toolkit root, as the Makefile finds it: $CUDA_HOME, else the first of the folder
    above the real nvcc on PATH (the one on PATH may be a wrapper script), /usr/local/cuda-13.0 and
    /usr/local/cuda that holds bin/nvcc and lib64/."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parents[1])
    candidates += [Path("/usr/local/cuda-13.0"), Path("/usr/local/cuda")]
    for candidate in candidates:
        if (candidate / "bin" / "nvcc").exists() and (candidate / "lib64").is_dir():
            return str(candidate)
    return None


def environment_command(context: Context) -> List[str]:
    code = (
        "import json, platform, torch, os, subprocess, shutil\n"
        "info = {'python': platform.python_version(), 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,\n"
        "        'cudnn': torch.backends.cudnn.version() if torch.cuda.is_available() else None,\n"
        "        'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],\n"
        "        'capability': [list(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())],\n"
        "        'cpu_count': os.cpu_count()}\n"
        "def run(argv):\n"
        "    try:\n"
        "        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()\n"
        "    except Exception as error:\n"
        "        return f'unavailable ({type(error).__name__})'\n"
        "info['driver'] = run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader']) "
        "if shutil.which('nvidia-smi') else None\n"
        "info['nvcc'] = run(['nvcc', '--version']).splitlines()[-1] if shutil.which('nvcc') else None\n"
        "info['compute_sanitizer'] = bool(shutil.which('compute-sanitizer'))\n"
        "print('ENVIRONMENT ' + json.dumps(info))\n"
    )
    return [context.python, "-c", code]


def build_command(context: Context) -> Optional[List[str]]:
    if context.dry_run:
        return None
    script = (
        f"{context.python} setup.py -q build_ext --inplace && "
        f"PYTHONPATH={ROOT} {context.python} scripts/check_cuda_build.py"
    )
    return ["bash", "-c", script]


def scripts_path() -> str:
    """PATH with the interpreter's script folders first: where pip puts the carried ninja."""
    folders = [sysconfig.get_path("scripts"), sysconfig.get_path("scripts", f"{os.name}_user")]
    return os.pathsep.join([f for f in folders if f] + [os.environ.get("PATH", "")])


def build_env(context: Context) -> Dict[str, str]:
    env = {"FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4), "PATH": scripts_path()}
    arch = cuda_arch(context.python)
    if arch:
        env["TORCH_CUDA_ARCH_LIST"] = arch
    home = cuda_home()
    if home:
        env["CUDA_HOME"] = home
    return env


def wheels_folder() -> Path:
    return ROOT / "wheels"


def wheels_command(context: Context) -> Optional[List[str]]:
    wheels = sorted(wheels_folder().glob("*.whl"))
    if context.dry_run or not wheels:
        return None
    # --no-deps: Quantus's compiled dependencies (pandas, scikit-image, opencv) are not carried;
    # without them in the image it fails to import and its comparisons skip, the rest installs
    return [context.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
            "--find-links", str(wheels_folder()), *map(str, wheels)]


def wheels_skip_reason(context: Context) -> str:
    if context.dry_run:
        return "dry run"
    return "no wheels/ folder: the Captum, Quantus and PAIR comparisons skip (run `make wheels` before carrying)"


def tests_command(context: Context) -> List[str]:
    if context.dry_run:  # the CUDA test files collect, and their CPU dry-run cases run
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cuda_*.py"))
        return [context.python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files]
    return [context.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests"]


def sanitizer_executable() -> str:
    """compute-sanitizer from PATH, else from the CUDA toolkit's bin/."""
    found = shutil.which("compute-sanitizer")
    home = cuda_home()
    if not found and home:
        for candidate in (Path(home, "bin", "compute-sanitizer"), Path(home, "compute-sanitizer", "compute-sanitizer")):
            if candidate.exists():
                return str(candidate)
    return found or "compute-sanitizer"


def sanitizer_env(context: Context) -> Dict[str, str]:
    # one cudaMalloc per tensor: with torch's caching allocator an access past a tensor's end
    # lands inside the cached segment, where memcheck cannot see it, and initcheck would take
    # memory written by an earlier tensor for initialised
    return {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}


def sanitizer_command(tool: str) -> Callable[[Context], Optional[List[str]]]:
    def command(context: Context) -> Optional[List[str]]:
        if context.dry_run:
            return None
        # memcheck sees every case; the slower tools the cases up to 64x64 (still more pixels
        # than a block has threads, so the kernels' strided loops run)
        sizes = [] if tool == "memcheck" else ["--max-pixels", str(SANITIZER_MAX_PIXELS)]
        return [sanitizer_executable(), "--tool", tool, "--error-exitcode", "9", context.python,
                "scripts/sanitizer_driver.py", "--device", "cuda", *sizes]
    return command


def sanitizer_dry_run(context: Context) -> Optional[List[str]]:
    if not context.dry_run:
        return None
    return [context.python, "scripts/sanitizer_driver.py", "--device", "cpu"]


def bench_command(context: Context) -> List[str]:
    argv = [context.python, "bench/gpu_bench.py", "--json", str(context.out / "gpu_bench.json"),
            "--markdown", str(context.out / "gpu_bench.md")]
    return argv + (["--device", "cpu", "--toy"] if context.dry_run else ["--device", "cuda"])


def stages() -> List[Stage]:
    def dry_reason(context):
        return "dry run"

    sanitizers = [Stage(f"sanitizer-{tool}", sanitizer_command(tool), 75, 25, env=sanitizer_env,
                        skip_reason=dry_reason) for tool in SANITIZER_TOOLS]
    return [
        Stage("environment", environment_command, 60, 5),
        Stage("wheels", wheels_command, 60, 5, skip_reason=wheels_skip_reason,  # ninja first, if carried
              env=lambda context: {"PIP_BREAK_SYSTEM_PACKAGES": "1"}),  # an image's "externally managed" python
        Stage("build", build_command, 240, 60, env=build_env, skip_reason=dry_reason),
        Stage("tests", tests_command, 180, 45),
        Stage("sanitizer-cpu-driver", sanitizer_dry_run, 60, 5,
              skip_reason=lambda context: "GPU run: the sanitizer stages run the driver on the GPU"),
        # the benchmarks before the sanitizers: the GPU figures need the longer, steadier stretch,
        # and the bench writes its JSON after every measurement, so a cut run keeps what it has
        Stage("bench", bench_command, 180, 90),
        *sanitizers,
    ]


# -- running them ------------------------------------------------------------------------------
def tail(text: str, chars: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]


def run_stage(stage: Stage, context: Context, limit_s: float) -> StageResult:
    argv = stage.command(context)
    if argv is None:
        return StageResult(stage.name, "skipped", 0.0, limit_s, None, None, note=stage.skip_reason(context))
    log_path = context.out / "logs" / f"{stage.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1", **stage.env(context)}
    start = time.monotonic()
    status, returncode = "failed", None
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        try:
            # its own session: on a timeout the whole process group (pytest, nvcc, the sanitizer's
            # child) is killed, not just the first process
            process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as error:
            log.write(f"could not start: {error}\n")
            return StageResult(stage.name, "failed", time.monotonic() - start, limit_s, None, str(log_path),
                               tail=f"could not start: {error}")
        try:
            returncode = process.wait(timeout=limit_s)
            status = "passed" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = "timeout"
            log.write(f"\n[gpu_check] killed after {limit_s:.0f} s\n")
    text = log_path.read_text(errors="replace")
    return StageResult(stage.name, status, round(time.monotonic() - start, 1), round(limit_s, 1), returncode,
                       str(log_path), tail=tail(text))


def run_stages(stage_list: List[Stage], context: Context, budget_s: float) -> List[StageResult]:
    """Run every stage within ``budget_s`` in all: each gets min(its limit, the time left minus
    the reserves of the stages after it); a stage left with under half its own reserve is skipped."""
    deadline = time.monotonic() + budget_s
    results = []
    for index, stage in enumerate(stage_list):
        later_reserve = sum(s.reserve_s for s in stage_list[index + 1:])
        available = deadline - time.monotonic() - later_reserve
        limit = min(stage.limit_s, available)
        if available < min(stage.reserve_s, stage.limit_s) / 2:  # the earlier stages overran their share
            results.append(StageResult(stage.name, "skipped", 0.0, max(limit, 0.0), None, None,
                                       note="no time left in the budget"))
            continue
        result = run_stage(stage, context, limit)
        learn(result, context)
        results.append(result)
        print(f"[gpu_check] {result.name}: {result.status} ({result.seconds:.0f} s of {result.limit_s:.0f})"
              + (f" — {result.note}" if result.note else ""), flush=True)
    return results


def learn(result: StageResult, context: Context) -> None:
    """Facts a stage printed for the report (the environment's JSON line)."""
    for line in result.tail.splitlines():
        if line.startswith("ENVIRONMENT "):
            context.facts["environment"] = json.loads(line[len("ENVIRONMENT "):])


# -- the report --------------------------------------------------------------------------------
def sanitizer_summary(result: StageResult) -> str:
    lines = [line for line in result.tail.splitlines() if "ERROR SUMMARY" in line or "sanitizer driver:" in line]
    return "; ".join(line.strip("= ").strip() for line in lines)


def write_report(results: List[StageResult], context: Context, started: str, wall_s: float) -> dict:
    bench_json = context.out / "gpu_bench.json"
    bench = json.loads(bench_json.read_text()) if bench_json.is_file() else None
    report = {
        "started": started, "wall_s": round(wall_s, 1), "dry_run": context.dry_run,
        "environment": context.facts.get("environment"),
        "ok": all(r.status in ("passed", "skipped") for r in results),
        "stages": [vars(r) for r in results],
        "bench": bench,
    }
    (context.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU check{' (dry run, CPU only)' if context.dry_run else ''}", "",
             f"Started {started}, {wall_s:.0f} s in all; {'every stage passed' if report['ok'] else 'FAILED'}.", ""]
    env = report["environment"] or {}
    if env:
        lines += [f"- GPU: {', '.join(env.get('gpus') or []) or 'none'}; driver {env.get('driver')}; "
                  f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}); "
                  f"nvcc: {env.get('nvcc')}; {env.get('cpu_count')} CPU cores", ""]
    lines += ["| stage | status | seconds | limit (s) | note |", "|---|---|---:|---:|---|"]
    for r in results:
        note = r.note or (sanitizer_summary(r) if r.name.startswith("sanitizer") else "")
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.limit_s:.0f} | {note} |")
    failed = [r for r in results if r.status in ("failed", "timeout")]
    for r in failed:
        lines += ["", f"## {r.name}: {r.status} (log: {r.log})", "", "```", r.tail, "```"]
    bench_md = context.out / "gpu_bench.md"
    if bench_md.is_file():
        lines += ["", bench_md.read_text()]
    (context.out / "report.md").write_text("\n".join(lines) + "\n")
    return report


def main(argv: Optional[List[str]] = None, stage_list: Optional[List[Stage]] = None) -> int:
    parser = argparse.ArgumentParser(description="The prepared GPU check: build, CUDA tests, compute-sanitizer, "
                                                 "GPU benchmarks; one Markdown + JSON report.")
    parser.add_argument("out", help="folder for report.md, report.json, gpu_bench.* and logs/")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--dry-run", "--cpu-only", action="store_true", dest="dry_run",
                        help="skip the GPU stages; exercise the orchestration on the CPU")
    parser.add_argument("--stages", help="comma-separated subset of: " + ", ".join(s.name for s in stages()))
    args = parser.parse_args(argv)
    stage_list = stage_list if stage_list is not None else stages()
    if args.stages:
        wanted = args.stages.split(",")
        unknown = sorted(set(wanted) - {s.name for s in stage_list})
        if unknown:
            parser.error(f"unknown stages {unknown}")
        stage_list = [s for s in stage_list if s.name in wanted]
    context = Context(out=Path(args.out).resolve(), dry_run=args.dry_run)
    context.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    begin = time.monotonic()
    results = run_stages(stage_list, context, args.budget)
    report = write_report(results, context, started, time.monotonic() - begin)
    print(f"[gpu_check] report: {context.out / 'report.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
