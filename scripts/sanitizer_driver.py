"""Calls every saliency_fast op (torch.ops.saliency_fast.*) on one device at several sizes and
edge cases, for compute-sanitizer (memcheck, racecheck, synccheck, initcheck) to watch:

    compute-sanitizer --tool memcheck python scripts/sanitizer_driver.py --device cuda

Cases: odd sizes, one pixel, k above the active pixels, exact ties, NaN inputs, empty ``rows``,
images with nothing left to move, empty and oversized curve counts. Arguments an op rejects
(TORCH_CHECK) are recorded as "rejected" and the run goes on; a CUDA error (illegal address,
device-side assert) stops it with exit status 1. With ``--device cpu`` it exercises the same
cases on the CPU ops (the orchestration's dry run, tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Iterator, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from saliency_fast import ops  # noqa: E402

Case = Tuple[str, Callable[[], object]]
CUDA_FAILURES = ("CUDA error", "device-side assert", "illegal memory access", "cudaError", "CUBLAS", "unspecified launch")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def samp_state(batch, channels, height, width, dtype, device, seed, ties=False, done_fraction=0.3, n_frag=50,
               nan=False):
    """A mid-path SAMP state like tests/test_samp_step.py's: some pixels at their end already."""
    g = _generator(seed)
    shape = (batch, channels, height, width)
    if ties:  # small integers: equal projections and +0 / −0 keys
        point = torch.randint(-2, 3, shape, generator=g).to(dtype)
        end = torch.randint(-2, 3, shape, generator=g).to(dtype)
        grad = torch.randint(-1, 2, shape, generator=g).to(dtype)
    else:
        point, end, grad = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    done = torch.rand(batch, 1, height, width, generator=g) < done_fraction
    point = torch.where(done, end, point)
    if nan:
        grad.view(-1)[:: max(1, grad.numel() // 7)] = float("nan")
    active = ops.pixels_active(point, end)
    distance = (point - end).abs().flatten(1).sum(1)
    state = dict(point=point, end=end, grad=grad, grad_avg=torch.randn(shape, generator=g, dtype=dtype),
                 attribution=torch.zeros(batch, height, width, dtype=dtype), active=active,
                 active_count=active.flatten(1).sum(1), step_count=torch.zeros(batch, dtype=torch.long),
                 bound=distance / n_frag if n_frag else torch.full_like(distance, math.inf))
    return {name: tensor.to(device) for name, tensor in state.items()}


def samp_cases(device) -> Iterator[Case]:
    op = torch.ops.saliency_fast.samp_step
    configurations = [  # (label, shape, k, options)
        ("one pixel", (1, 1, 1, 1), 1, {}),
        ("odd 3x3x7x5", (3, 3, 7, 5), 4, {}),
        ("k > active 2x1x33x31", (2, 1, 33, 31), 5000, {}),
        ("ties 4x3x16x16", (4, 3, 16, 16), 37, {"ties": True}),
        ("NaN grad 2x3x9x11", (2, 3, 9, 11), 13, {"nan": True}),
        ("all done 2x3x8x8", (2, 3, 8, 8), 5, {"done_fraction": 1.1}),
        ("no IC 2x3x17x13", (2, 3, 17, 13), 20, {"n_frag": None}),
        ("224x224 s=3584", (2, 3, 224, 224), 3584, {}),
    ]
    for dtype in (torch.float32, torch.float64):
        for label, shape, k, options in configurations:
            for exact in (False, True):
                for insertion in (False, True):
                    def run(shape=shape, k=k, options=options, dtype=dtype, exact=exact, insertion=insertion):
                        s = samp_state(*shape, dtype=dtype, device=device, seed=len(label), **options)
                        rows = torch.arange(shape[0] - 1, -1, -1, device=device)  # reversed: grad row i ≠ image i
                        for momentum in (1.0, 0.5):
                            op(s["point"], s["end"], s["grad"], s["grad_avg"], s["attribution"], s["active"],
                               s["active_count"], s["step_count"], rows, s["bound"], k, momentum, insertion, exact,
                               ops.ATOL, ops.RTOL)
                        return s["attribution"]
                    yield f"samp_step {label} {dtype} exact={exact} insertion={insertion}", run

    def empty_rows():
        s = samp_state(3, 3, 7, 5, torch.float32, device, seed=1)
        rows = torch.empty(0, dtype=torch.long, device=device)
        op(s["point"], s["end"], s["grad"][:0], s["grad_avg"], s["attribution"], s["active"], s["active_count"],
           s["step_count"], rows, s["bound"], 3, 1.0, False, False, ops.ATOL, ops.RTOL)
        return s["attribution"]

    def subset_rows():
        s = samp_state(5, 2, 9, 7, torch.float32, device, seed=2)
        rows = torch.tensor([3, 0], device=device)
        op(s["point"], s["end"], s["grad"][:2], s["grad_avg"], s["attribution"], s["active"], s["active_count"],
           s["step_count"], rows, s["bound"], 6, 1.0, True, True, ops.ATOL, ops.RTOL)
        return s["attribution"]

    yield "samp_step empty rows", empty_rows
    yield "samp_step a subset of rows", subset_rows


def budget_cases(device) -> Iterator[Case]:
    op = torch.ops.saliency_fast.saliency_budget
    maps = {
        "one pixel": torch.rand(1, 1, 1, generator=_generator(3)),
        "odd 3x7x5": torch.rand(3, 7, 5, generator=_generator(4)),
        "ties 2x33x31": torch.randint(0, 4, (2, 33, 31), generator=_generator(5)).float(),
        "all zero 2x9x9": torch.zeros(2, 9, 9),
        "224x224": torch.rand(2, 224, 224, generator=_generator(6)),
        "NaN 2x8x8": torch.rand(2, 8, 8, generator=_generator(7)).index_fill_(1, torch.tensor([3]), float("nan")),
    }
    for label, saliency in maps.items():
        for dtype in (torch.float32, torch.float64):
            for mode, rho, k in (("mass", 0.1, 0.5), ("mass", 1.0, 0.5), ("mass", 0.0, 0.5), ("topk", 0.1, 0.0),
                                 ("topk", 0.1, 0.37), ("topk", 0.1, 1.0), ("inverse", 0.1, 0.5), ("uniform", 0.1, 0.5)):
                yield (f"saliency_budget {label} {dtype} {mode} rho={rho} k={k}",
                       lambda s=saliency, d=dtype, m=mode, r=rho, kk=k: op(s.to(device, d), m, 8 / 255, r, kk, 1.5))


def perturb_cases(device) -> Iterator[Case]:
    perturb, fill = torch.ops.saliency_fast.masked_perturb, torch.ops.saliency_fast.masked_random_fill
    for shape in ((1, 1, 1, 1), (3, 3, 7, 5), (2, 1, 33, 31), (2, 3, 224, 224)):
        batch, _, height, width = shape
        for dtype in (torch.float32, torch.float64):
            g = _generator(sum(shape))

            def tensors(nan, g=g, shape=shape, dtype=dtype):
                x = torch.rand(shape, generator=g, dtype=dtype)
                grad = torch.randn(shape, generator=g, dtype=dtype)
                grad.view(-1)[:: 3] = 0.0  # sign(0) = 0
                if nan:
                    x.view(-1)[:: max(1, x.numel() // 5)] = float("nan")
                    grad.view(-1)[1 :: max(1, grad.numel() // 5)] = float("nan")
                return x.to(device), grad.to(device)

            for nan in (False, True):
                def run_perturb(nan=nan, batch=batch, height=height, width=width, dtype=dtype):
                    x, grad = tensors(nan)
                    delta = torch.zeros_like(x)
                    budget = torch.rand(batch, height, width, generator=_generator(9), dtype=dtype).to(device) * 0.03
                    perturb(x, delta, grad, budget, 0.01, 0.03, 0.0, 1.0)
                    return delta

                def run_fill(nan=nan, batch=batch, height=height, width=width, dtype=dtype):
                    x, _ = tensors(nan)
                    mask = (torch.rand(batch, height, width, generator=_generator(10)) < 0.5).to(device)
                    noise = torch.rand(x.shape, generator=_generator(11), dtype=dtype).to(device)
                    return fill(x, mask, noise), fill(x, torch.ones_like(mask), noise), fill(x, torch.zeros_like(mask), noise)

                label = f"{'x'.join(map(str, shape))} {dtype} nan={nan}"
                yield f"masked_perturb {label}", run_perturb
                yield f"masked_random_fill {label}", run_fill


def curve_cases(device) -> Iterator[Case]:
    op = torch.ops.saliency_fast.perturbation_curve
    for shape, counts in (((1, 1, 1, 1), [0, 1]), ((3, 3, 7, 5), [0, 4, 35, 36, 100]), ((2, 1, 33, 31), []),
                          ((2, 3, 64, 64), list(range(0, 4097, 256)))):
        batch, _, height, width = shape
        for dtype in (torch.float16, torch.float32, torch.float64):
            for tied in (False, True):
                def run(shape=shape, counts=counts, dtype=dtype, tied=tied, batch=batch, height=height, width=width):
                    g = _generator(12)
                    start = torch.rand(shape, generator=g).to(device, dtype)
                    finish = torch.rand(shape, generator=g).to(device, dtype)
                    if tied:  # equal ranks: many pixels cross together
                        ranks = torch.randint(0, 3, (batch, height, width), generator=g)
                    else:
                        ranks = torch.stack([torch.randperm(height * width, generator=g) for _ in range(batch)])
                    ranks = ranks.view(batch, height, width).to(device)
                    return op(start, finish, ranks, torch.tensor(counts, dtype=torch.long, device=device))
                yield f"perturbation_curve {'x'.join(map(str, shape))} S={len(counts)} {dtype} tied={tied}", run


ALL_CASES = (samp_cases, budget_cases, perturb_cases, curve_cases)


def case_pixels(label: str) -> int:
    """H·W of a case, read from the size in its label ("3x7x5", "2x3x224x224", "224x224")."""
    sizes = [word for word in label.split() if "x" in word and word.replace("x", "").isdigit()]
    if not sizes:
        return 1
    dims = [int(d) for d in sizes[0].split("x")]
    return dims[-1] * dims[-2] if len(dims) >= 2 else dims[-1]


def run_cases(device: str, verbose: bool = False, max_pixels: Optional[int] = None) -> dict:
    """Run every case (``max_pixels``: only those of images up to that many pixels); returns
    {"ran": n, "rejected": [(case, message)], "left_out": n}; raises on a CUDA error."""
    import saliency_fast  # noqa: F401  (registers the ops)

    if not hasattr(torch.ops.saliency_fast, "samp_step"):
        raise SystemExit("the compiled ops are not loaded: build the extension first")
    ran, rejected, left_out = 0, [], 0
    for family in ALL_CASES:
        for label, case in family(device):
            if max_pixels is not None and case_pixels(label) > max_pixels:
                left_out += 1
                continue
            try:
                case()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                ran += 1
            except RuntimeError as error:
                message = str(error).splitlines()[0]
                if any(marker in str(error) for marker in CUDA_FAILURES):
                    raise RuntimeError(f"{label}: {message}") from error
                rejected.append((label, message))
            if verbose:
                print(label, flush=True)
    return {"ran": ran, "rejected": rejected, "left_out": left_out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--verbose", action="store_true", help="print each case as it finishes")
    parser.add_argument("--max-pixels", type=int, help="only the cases of images up to this many pixels (H·W)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    result = run_cases(args.device, args.verbose, args.max_pixels)
    for label, message in result["rejected"]:
        print(f"rejected: {label}: {message}")
    print(f"sanitizer driver: {result['ran']} cases ran, {len(result['rejected'])} rejected by the ops' checks, "
          f"{result['left_out']} larger than --max-pixels left out, on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
