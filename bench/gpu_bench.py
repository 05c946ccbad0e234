"""GPU benchmarks (issue 14 E): CUDA-event timing, warm-up, medians over rounds, inputs rotated
between rounds. Run by scripts/gpu_check.py, or alone:

    python bench/gpu_bench.py --device cuda --json out/gpu_bench.json --markdown out/gpu_bench.md
    python bench/write_benchmarks.py --gpu out/gpu_bench.json   # merge into BENCHMARKS.md's GPU section

Measurements (each against its bound or straightforward PyTorch, with the issue's target):
- SAMP++ end to end on torchvision ResNet-50 (random init) at 32x3x224x224, float32 and bfloat16
  autocast + channels-last, vs the model-only bound: the same forward+input-gradient calls on the
  same inputs (recorded from a SAMP++ run, bench/interleaved.py), target <= 1.05x;
- kernel launches per SAMP++ step outside the model (torch.profiler: launches of the SAMP++ run
  minus those of the bound's replay, over the model calls), target <= 15;
- the native samp_step vs the quantile-based step (bench/straightforward_samp.py), target >= 20x;
- Deletion + Insertion vs its model-only bound (the same forward calls replayed), target <= 1.10x;
- perturbation_curve vs the scatter-per-point loop, target >= 10x;
- masked_perturb and saliency_budget ("mass", "topk") vs straightforward PyTorch (no target).

``--toy`` shrinks every size (and uses a small CNN instead of ResNet-50) so that the CPU dry run
of scripts/gpu_check.py exercises this code in seconds; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import saliency_fast as sf  # noqa: E402
from saliency_fast._common import attribution_mode, input_gradient  # noqa: E402

from bench.interleaved import record_inputs  # noqa: E402
from bench.straightforward_samp import straightforward_step  # noqa: E402

WARMUP, ROUNDS = 1, 5
TOY_SIDE = 8  # --toy: 2 images of 3x8x8 (DigitsCNN needs a multiple of 4)


# -- timing ------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(function: Callable[[object], object], inputs: Sequence, device: torch.device,
                rounds: int = ROUNDS, warmup: int = WARMUP) -> List[float]:
    """Milliseconds of ``function(inputs[i % len(inputs)])`` for each timed round (after
    ``warmup`` untimed ones): CUDA events on a GPU, perf_counter (after a sync) elsewhere. The
    inputs rotate so that no round reads the previous round's data from the L2 cache."""
    times = []
    for round_index in range(warmup + rounds):
        argument = inputs[round_index % len(inputs)]
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function(argument)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end)
        else:
            begin = time.perf_counter()
            function(argument)
            elapsed = (time.perf_counter() - begin) * 1e3
        if round_index >= warmup:
            times.append(elapsed)
    return times


def compare(name: str, candidate: Callable, baseline: Callable, inputs: Sequence, device: torch.device,
            target: Optional[str] = None, rounds: int = ROUNDS, lower_is_better_ratio: bool = True) -> dict:
    """Median times of candidate and baseline, timed in alternating rounds (so drift cancels),
    and their ratio: candidate / baseline when the target is an upper bound on the candidate's
    cost, baseline / candidate (a speed-up) otherwise."""
    candidate_ms, baseline_ms = [], []
    for round_index in range(WARMUP + rounds):
        argument = inputs[round_index % len(inputs)]
        pair = [time_rounds(candidate, [argument], device, rounds=1, warmup=0)[0],
                time_rounds(baseline, [argument], device, rounds=1, warmup=0)[0]]
        if round_index >= WARMUP:
            candidate_ms.append(pair[0])
            baseline_ms.append(pair[1])
    c, b = statistics.median(candidate_ms), statistics.median(baseline_ms)
    ratio = c / b if lower_is_better_ratio else b / c
    return {"name": name, "candidate_ms": round(c, 3), "baseline_ms": round(b, 3), "ratio": round(ratio, 3),
            "ratio_kind": "candidate / baseline" if lower_is_better_ratio else "speed-up (baseline / candidate)",
            "target": target, "met": None if target is None else _meets(ratio, target), "rounds": rounds,
            "candidate_range_ms": [round(min(candidate_ms), 3), round(max(candidate_ms), 3)]}


def _meets(value: float, target: str) -> bool:
    operator, number = target.split()
    number = float(number.rstrip("x"))
    return value <= number if operator == "<=" else value >= number


def rounds(toy: bool, full: int = ROUNDS) -> int:
    return 1 if toy else full


# -- workloads ---------------------------------------------------------------------------------
def make_model(toy: bool, device: torch.device) -> nn.Module:
    """ResNet-50 with random weights (no download), or a small CNN in toy mode."""
    if toy:
        from saliency_fast.models import DigitsCNN

        model = DigitsCNN(num_classes=10, in_channels=3, width=4, image_size=TOY_SIDE)
    else:
        import torchvision

        model = torchvision.models.resnet50(weights=None)
    return model.to(device).eval()


def image_batches(toy: bool, device: torch.device, count: int = 2) -> List[torch.Tensor]:
    shape = (2, 3, TOY_SIDE, TOY_SIDE) if toy else (32, 3, 224, 224)
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(shape, generator=generator).to(device) for _ in range(count)]


class Autocast(nn.Module):
    """The model under bfloat16 autocast with channels-last inputs, float32 logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def samp_run_and_bound(model: nn.Module, batches, targets, toy: bool):
    """(run, bound, calls): ``run(x)`` is SAMP++ on batch x; ``bound(x)`` replays the forward +
    input-gradient calls SAMP++ made with autograd on x (recorded once); ``calls`` their count."""
    options = {"pixels_per_step": 16, "n_frag": 4} if toy else {}
    target_of = {id(x): t for x, t in zip(batches, targets)}

    def run(x):
        return sf.SAMP.plus(model, **options).attribute(x, target_of[id(x)])

    recorded = {id(x): record_inputs(model, lambda x=x: run(x), only_with_grad=True) for x in batches}

    def bound(x):
        target = target_of[id(x)]
        with attribution_mode(model):
            for point in recorded[id(x)]:
                input_gradient(model, point, target[: point.shape[0]])

    return run, bound, len(recorded[id(batches[0])])


def samp_plus_vs_bound(model: nn.Module, batches, targets, device, label: str, toy: bool) -> dict:
    """SAMP++ end to end vs the model-only bound."""
    run, bound, calls = samp_run_and_bound(model, batches, targets, toy)
    result = compare(f"SAMP++ end to end / model-only bound, {label}", run, bound, batches, device,
                     target="<= 1.05x", rounds=rounds(toy, 3))
    result["model_calls"] = calls
    return result


def samp_launches_per_step(batches, device, label: str, autocast: bool, toy: bool) -> List[dict]:
    """Kernel launches per SAMP++ step outside the model: (launches of a SAMP++ run − launches of
    the bound's replay of its model calls) / model calls. What SAMP adds does not depend on the
    model, so a small CNN stands in for ResNet-50 (the profiler then records thousands of events,
    not hundreds of thousands)."""
    from saliency_fast.models import DigitsCNN

    side = batches[0].shape[-1]
    model = DigitsCNN(num_classes=10, in_channels=3, width=4, image_size=side - side % 4).to(device).eval()
    model = Autocast(model) if autocast else model
    batches = [x[..., : side - side % 4, : side - side % 4].contiguous() for x in batches[:1]]
    with torch.no_grad():
        targets = [model(x).argmax(1) for x in batches]
    run, bound, calls = samp_run_and_bound(model, batches, targets, toy)
    run(batches[0])  # warm-up: cuDNN's autotuning launches are not SAMP's
    launches = count_launches(lambda: run(batches[0]), device) - count_launches(lambda: bound(batches[0]), device)
    per_step = launches / max(1, calls)
    return [{"name": f"kernel launches per SAMP++ step outside the model, {label}", "value": round(per_step, 2),
             "target": "<= 15", "met": _meets(per_step, "<= 15"), "model_calls": calls}]


def count_launches(function: Callable[[], object], device: torch.device) -> int:
    """Kernels, copies and memsets the GPU ran during ``function()`` (torch.profiler). On the CPU
    (the dry run) the profiler's CPU events instead: the code runs, the count means nothing."""
    from torch.profiler import ProfilerActivity, profile

    kind = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        function()
        synchronize(device)
    return sum(1 for event in profiler.events() if event.device_type == kind)


def step_state(toy: bool, device: torch.device):
    from saliency_fast import ops

    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, TOY_SIDE, TOY_SIDE) if toy else (32, 3, 224, 224)
    point = torch.randn(shape, generator=generator).to(device)
    end = torch.zeros_like(point)
    grad = torch.randn(shape, generator=generator).to(device)
    bound = (point - end).abs().flatten(1).sum(1) / 50
    active = ops.pixels_active(point, end)
    return dict(point=point, end=end, grad=grad, grad_avg=torch.randn_like(point),
                attribution=torch.zeros(shape[0], *shape[2:], device=device), active=active,
                count=active.flatten(1).sum(1), steps=torch.zeros(shape[0], dtype=torch.long, device=device),
                rows=torch.arange(shape[0], device=device), bound=bound)


def native_vs_quantile_step(toy: bool, device: torch.device) -> dict:
    k = 16 if toy else 3584
    states = [step_state(toy, device) for _ in range(2)]

    def fresh(s):  # both implementations step from the same state, copied the same way
        return {name: s[name].clone() for name in ("point", "grad_avg", "attribution", "active", "count", "steps")}

    def native(s):
        c = fresh(s)
        sf.ops.samp_step(c["point"], s["end"], s["grad"], c["grad_avg"], c["attribution"], c["active"], c["count"],
                         c["steps"], s["rows"], s["bound"], k, 0.5, False, False)

    def quantile(s):
        c = fresh(s)
        straightforward_step(c["point"], s["end"], s["grad"], c["grad_avg"], c["attribution"], c["active"],
                             s["bound"], k, 0.5, False, False)

    return compare("samp_step native vs quantile-based step (speed-up)", native, quantile, states, device,
                   target=">= 20x", rounds=rounds(toy), lower_is_better_ratio=False)


def deletion_insertion_vs_bound(model: nn.Module, batches, targets, device, toy: bool) -> dict:
    maps = {id(x): torch.rand(x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(1)).to(device)
            for x in batches}
    target_of = {id(x): t for x, t in zip(batches, targets)}

    def candidate(x):
        sf.metrics.deletion_insertion(model, x, maps[id(x)], target=target_of[id(x)])

    recorded = {id(x): record_inputs(model, lambda x=x: candidate(x)) for x in batches}

    def bound(x):
        with torch.no_grad(), attribution_mode(model):
            for images in recorded[id(x)]:
                model(images)

    return compare("Deletion + Insertion / model-only bound", candidate, bound, batches, device, target="<= 1.10x",
                   rounds=rounds(toy, 3))


def curve_vs_scatter(toy: bool, device: torch.device) -> dict:
    from bench.test_bench_metrics import scatter_loop_curve

    batch, side, points = (2, TOY_SIDE, 5) if toy else (32, 224, 8)
    generator = torch.Generator().manual_seed(2)
    inputs = []
    for _ in range(2):
        start = torch.rand(batch, 3, side, side, generator=generator).to(device)
        finish = torch.zeros_like(start)
        ranks = torch.stack([torch.randperm(side * side, generator=generator) for _ in range(batch)])
        ranks = ranks.view(batch, side, side).to(device)
        counts = torch.linspace(0, side * side, points).long().to(device)
        inputs.append((start, finish, ranks, counts))
    return compare("perturbation_curve vs scatter-per-point loop (speed-up)", lambda a: sf.ops.perturbation_curve(*a),
                   lambda a: scatter_loop_curve(*a), inputs, device, target=">= 10x", rounds=rounds(toy),
                   lower_is_better_ratio=False)


def plain_masked_perturb(x, delta, grad, budget, step_size, epsilon, low, high):
    """masked_perturb in straightforward PyTorch (the op's definition, csrc/ops.cpp)."""
    e = budget.unsqueeze(1)
    delta = torch.maximum(torch.minimum(delta + (step_size / epsilon) * e * grad.sign(), e), -e)
    return (x + delta).clamp(low, high) - x


def plain_budget(saliency, mode, epsilon, rho, k):
    """"topk" / "mass" budgets in straightforward PyTorch: a sort per image, then the threshold."""
    flat = saliency.flatten(1)
    ordered, _ = flat.sort(dim=1)
    if mode == "topk":
        count = int(k * flat.shape[1])
        if count == 0:
            return torch.zeros_like(saliency)
        threshold = ordered[:, count - 1 : count]
    else:
        cumulative = ordered.cumsum(1)
        inside = cumulative <= rho * cumulative[:, -1:]
        last = inside.sum(1, keepdim=True).clamp_min(1) - 1
        threshold = torch.where(inside.any(1, keepdim=True), ordered.gather(1, last),
                                torch.full_like(last, -1, dtype=flat.dtype))
    return (epsilon * (flat <= threshold)).view_as(saliency).to(saliency.dtype)


def scaat_ops(toy: bool, device: torch.device) -> List[dict]:
    batch, side = (2, TOY_SIDE) if toy else (64, 224)
    generator = torch.Generator().manual_seed(3)
    perturb_inputs, maps = [], []
    for _ in range(2):
        x = torch.rand(batch, 3, side, side, generator=generator).to(device)
        grad = torch.randn(batch, 3, side, side, generator=generator).to(device)
        budget = torch.rand(batch, side, side, generator=generator).to(device) * 0.03
        perturb_inputs.append((x, torch.zeros_like(x), grad, budget))
        maps.append(torch.rand(batch, side, side, generator=generator).to(device))
    results = [compare("masked_perturb vs straightforward PyTorch (speed-up)",
                       lambda a: sf.ops.masked_perturb(a[0], a[1].clone(), a[2], a[3], 0.01, 0.03),
                       lambda a: plain_masked_perturb(a[0], a[1].clone(), a[2], a[3], 0.01, 0.03, 0.0, 1.0),
                       perturb_inputs, device, rounds=rounds(toy), lower_is_better_ratio=False)]
    for mode in ("mass", "topk"):
        results.append(compare(f"saliency_budget {mode} vs sort-based PyTorch (speed-up)",
                               lambda s, m=mode: sf.ops.saliency_budget(s, m, 8 / 255, 0.1, 0.5),
                               lambda s, m=mode: plain_budget(s, m, 8 / 255, 0.1, 0.5), maps, device,
                               rounds=rounds(toy), lower_is_better_ratio=False))
    return results


# -- everything --------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "saliency_fast": sf.__version__,
            "native_backends": sf.build_info().get("backends"), "device": str(device),
            "date": datetime.date.today().isoformat()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def run_all(device: str = "cuda", toy: bool = False, save: Optional[Callable[[dict], None]] = None) -> dict:
    """Every measurement, the quick ones first; ``save(report)`` after each one, so that a run
    stopped by its time box still leaves what it measured."""
    device = torch.device(device)
    torch.backends.cudnn.benchmark = True
    if toy and device.type == "cpu":
        # the dry run exercises the code, it measures nothing: one thread keeps it quick on a busy
        # CI machine, where OpenMP teams on tiny tensors can wait for cores ~1000x longer than the work
        torch.set_num_threads(1)
    report = {"environment": environment(device), "toy": toy, "results": [], "errors": []}

    def attempt(function, *args):
        try:
            produced = function(*args)
            report["results"].extend(produced if isinstance(produced, list) else [produced])
        except Exception as error:  # noqa: BLE001  (one failed measurement must not lose the others)
            report["errors"].append(f"{getattr(function, '__name__', function)}: {type(error).__name__}: {error}")
        if save is not None:
            save(report)

    attempt(native_vs_quantile_step, toy, device)
    attempt(curve_vs_scatter, toy, device)
    attempt(scaat_ops, toy, device)
    model = make_model(toy, device)
    batches = image_batches(toy, device)
    with torch.no_grad():
        targets = [model(x).argmax(1) for x in batches]
    attempt(deletion_insertion_vs_bound, model, batches, targets, device, toy)
    attempt(samp_launches_per_step, batches, device, "float32", False, toy)
    attempt(samp_launches_per_step, batches, device, "bfloat16 autocast + channels-last", True, toy)
    attempt(samp_plus_vs_bound, model, batches, targets, device, "float32", toy)
    attempt(samp_plus_vs_bound, Autocast(make_model(toy, device)), batches, targets, device,
            "bfloat16 autocast + channels-last", toy)
    return report


def render_markdown(report: dict) -> str:
    """The "GPU" section of BENCHMARKS.md for one report."""
    env = report["environment"]
    lines = ["## GPU", "",
             f"Measured by `make gpu-check` (bench/gpu_bench.py) on {env.get('date')}"
             + (" — TOY SIZES ON THE CPU (dry run): these figures mean nothing" if report.get("toy") else "") + ".",
             "",
             f"- device: {env.get('gpu', env.get('device'))} (compute capability {env.get('capability')}), "
             f"driver {env.get('driver')}",
             f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), saliency_fast {env.get('saliency_fast')}, "
             f"native backends {env.get('native_backends')}", "",
             "CUDA-event timing, one warm-up round, medians over the rounds, two input batches rotated; "
             "candidate and baseline alternate round by round.", "",
             "| measurement | candidate (ms) | baseline (ms) | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for r in report["results"]:
        met = "—" if r.get("met") is None else ("yes" if r["met"] else "NO")
        if "value" in r:
            lines.append(f"| {r['name']} | | | {r['value']} | {r.get('target') or ''} | {met} |")
        else:
            lines.append(f"| {r['name']} | {r['candidate_ms']:.2f} | {r['baseline_ms']:.2f} | {r['ratio']:.2f}× "
                         f"| {r.get('target') or ''} | {met} |")
    if report.get("errors"):
        lines += ["", "Measurements that failed:", ""] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU benchmarks → JSON + the Markdown of BENCHMARKS.md's GPU section")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true", help="tiny sizes and a small CNN (the CPU dry run)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", help="write the GPU section here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmarks need one (or --device cpu --toy for a dry run)", file=sys.stderr)
        return 2

    def save(report):
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
        if args.markdown:
            with open(args.markdown, "w") as handle:
                handle.write(render_markdown(report))

    report = run_all(args.device, args.toy, save)
    print(render_markdown(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
