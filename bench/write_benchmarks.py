"""Runs every bench/ suite in one pytest-benchmark session and writes BENCHMARKS.md.

    make bench          # or: .venv/bin/python bench/write_benchmarks.py [pytest args]
    python bench/write_benchmarks.py --gpu OUT/gpu_bench.json   # (re)place the GPU section only

The GPU section (from `make gpu-check`, bench/gpu_bench.py) sits between GPU_BEGIN and GPU_END;
a CPU run keeps it as it is.

Within each group, the ratio of a row is its median time over the median of the group's
baseline row (the one whose extra_info says baseline=True: the model-only lower bound or the
native implementation, as the group's docstring says).
"""
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout's package, built in place or installed editable
REPORT = os.path.join(ROOT, ".benchmarks", "last.json")  # kept, so a table can be re-rendered
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")
GPU_BEGIN, GPU_END = "<!-- gpu section: python bench/write_benchmarks.py --gpu gpu_bench.json -->", "<!-- end of gpu section -->"


def run_suites(extra_args):
    os.makedirs(os.path.dirname(REPORT), exist_ok=True)
    command = [sys.executable, "-m", "pytest", "bench", "--benchmark-only", f"--benchmark-json={REPORT}",
               "-q", "-p", "no:cacheprovider", *extra_args]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    with open(REPORT) as handle:
        return json.load(handle), " ".join(["python", "-m", "pytest", "bench", "--benchmark-only", *extra_args])


# Groups whose suites mark no baseline row: the first row whose test name holds one of these.
BASELINE_NAMES = ("lower_bound", "plain_step", "perturbation_curve_op", "sf_deletion_only")


def baseline_row(rows):
    flagged = [r for r in rows if r.get("extra_info", {}).get("baseline")]
    if flagged:
        return flagged[0]
    return next((r for key in BASELINE_NAMES for r in rows if key in r["name"]), None)


def display_name(row, rows):
    params = [r.get("param") for r in rows]
    unique = row.get("param") and params.count(row["param"]) == 1
    return row["param"] if unique else row["name"].removeprefix("test_")


def group_tables(report):
    groups = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"] or bench["fullname"], []).append(bench)
    lines = []
    for group, rows in sorted(groups.items()):
        baseline = baseline_row(rows)
        lines += [f"### {group}", "", "| implementation | median (ms) | ratio to baseline | rounds |",
                  "|---|---:|---:|---:|"]
        for row in sorted(rows, key=lambda r: r["stats"]["median"]):
            median = row["stats"]["median"]
            ratio = f"{median / baseline['stats']['median']:.2f}×" if baseline else "—"
            name = display_name(row, rows)
            marker = " (baseline)" if row is baseline else ""
            lines.append(f"| {name}{marker} | {median * 1e3:.2f} | {ratio} | {row['stats']['rounds']} |")
        notes = {k: v for r in rows for k, v in r.get("extra_info", {}).items()
                 if k != "baseline" and not (isinstance(v, list) and len(v) > 8)}
        if notes:
            lines += ["", "Notes: " + ", ".join(f"{k} = {v}" for k, v in sorted(notes.items()))]
        lines.append("")
    return lines


def dispatch_section():
    from bench.digits import digits_work
    from bench.dispatch_counts import samp_dispatch_counts

    counts = samp_dispatch_counts(*digits_work())
    return [
        "### SAMP++ per step, outside the model (TorchDispatchMode, 64 digits)", "",
        f"- model calls: {counts['model_calls']}",
        f"- ATen ops dispatched per step outside the model: {counts['ops_per_step_outside_model']:.2f}",
        f"- syncing ops outside the model (item, nonzero, masked_select, ...), whole call including "
        f"the input checks: "
        f"{sum(counts['syncing_ops_outside_model'].values())}",
        f"- most frequent: {counts['top_ops_outside_model']}", "",
    ]


def step_time_section():
    from bench.digits import digits_work
    from bench.step_time import step_time_breakdown

    parts = step_time_breakdown(*digits_work())
    outside = parts["op"] + parts["rest"]
    return [
        "### SAMP++ per step: where the time goes (timed inside runs, 64 digits, median of 5 runs)", "",
        f"- model call (forward + input gradient): {parts['model']:.0f} µs",
        f"- samp_step op: {parts['op']:.0f} µs",
        f"- the rest of the step loop, and the call's set-up spread over its {parts['steps']} steps: "
        f"{parts['rest']:.0f} µs",
        f"- outside the model: {outside:.0f} µs, {outside / parts['model'] * 100:.1f} % of the model's time", "",
    ]


def allocator_section():
    from bench.allocator_effect import CALLS, MODES, RATIO_CALLS, measure

    results = {mode: measure(mode) for mode in MODES}
    lines = ["### SAMP++ on 64 digits: glibc malloc as it is vs sf.tune_cpu_allocator() (a fresh process each)", ""]
    if not results["tuned"]["applied"]:
        return lines + ["- not glibc: tune_cpu_allocator() does nothing here", ""]
    for mode, result in results.items():
        lines.append(f"- {mode}: {result['seconds'] * 1e3:.0f} ms a call (median of {CALLS}), "
                     f"{result['minor_faults']:.0f} minor page faults a call, "
                     f"{result['ratio_to_bound']:.3f}× the model-only lower bound call by call (median of "
                     f"{RATIO_CALLS}, {result['ratio_range'][0]:.3f}–{result['ratio_range'][1]:.3f})")
    ratio = results["default"]["seconds"] / results["tuned"]["seconds"]
    return lines + [f"- tuned is {ratio:.2f}× faster", ""]


def gpu_section(text: str) -> str:
    """The GPU section of a BENCHMARKS.md text, markers included ("" when it has none)."""
    begin, end = text.find(GPU_BEGIN), text.find(GPU_END)
    return text[begin : end + len(GPU_END)] if begin >= 0 and end > begin else ""


def merge_gpu_section(text: str, report: dict) -> str:
    """``text`` with its GPU section replaced by (or, without one, followed by) ``report``'s."""
    from bench.gpu_bench import render_markdown

    section = f"{GPU_BEGIN}\n{render_markdown(report)}{GPU_END}"
    old = gpu_section(text)
    if old:
        return text.replace(old, section)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--gpu":
        with open(sys.argv[2]) as handle:
            report = json.load(handle)
        with open(BENCHMARKS) as handle:
            text = handle.read()
        with open(BENCHMARKS, "w") as handle:
            handle.write(merge_gpu_section(text, report))
        print("wrote the GPU section of BENCHMARKS.md")
        return
    if sys.argv[1:] == ["--render"]:  # rewrite BENCHMARKS.md from the last run's JSON
        with open(REPORT) as handle:
            report = json.load(handle)
        command = "python -m pytest bench --benchmark-only"
    else:
        report, command = run_suites(sys.argv[1:])
    import torch

    import saliency_fast as sf

    machine = report.get("machine_info", {})
    info = sf.build_info()
    lines = [
        "# Benchmarks", "",
        f"Written by `make bench` (`python bench/write_benchmarks.py`) on {datetime.date.today()}; "
        "every number below was measured in that one run.", "",
        f"- machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}; GPU: "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
        f"- torch {torch.__version__}, saliency_fast {sf.__version__}, native backends {info.get('backends')}, "
        f"threads {info.get('threads')}",
        f"- command: `{command}`", "",
        "Medians over the rounds shown; ratio = median / the group's baseline median (lower is faster).", "",
    ]
    lines += group_tables(report)
    lines += dispatch_section()
    lines += step_time_section()
    lines += allocator_section()
    previous = open(BENCHMARKS).read() if os.path.exists(BENCHMARKS) else ""
    if gpu_section(previous):  # measured on another machine: kept as it was
        lines += ["", gpu_section(previous), ""]
    with open(BENCHMARKS, "w") as handle:
        handle.write("\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
