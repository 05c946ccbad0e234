"""Guards on a CUDA build of saliency_fast._C, for CI machines without a GPU (`make cuda-check`).

Reads what nvcc produced, with cuobjdump, and fails (exit 1, one line per finding) when:
  1. an op has no kernel registered for the CUDA dispatch key;
  2. a kernel of a bit-exact op (samp_step, masked_perturb, masked_random_fill,
     perturbation_curve: README, "CPU/CUDA parity") can fuse a multiply-add:
     - in its PTX, an fma/mad on a floating type, or a floating mul/add/sub without an explicit
       rounding mode (ptxas may contract those: nvcc emits .rn only under -fmad=false);
     - in its SASS, an FFMA/DFMA, unless its PTX divides (div.rn): an IEEE division is
       itself a sequence of FFMAs that rounds correctly, and the PTX rule above covers the rest;
  3. a kernel has a 64-bit atomic compare-and-swap (ATOMS.CAST.SPIN.64, ATOM*.CAS.64): what
     a 64-bit shared atomicAdd compiles to, a loop that threads spin on;
  4. a kernel's stack frame (spills and call frames, cuobjdump -res-usage STACK) or local memory
     exceeds its allowance in KERNELS;
  5. a kernel of the package is not listed in KERNELS (so that every new kernel gets its rules),
     or a listed one is missing (a rename would silently switch its rules off).
The .so must hold PTX as well as SASS: build with TORCH_CUDA_ARCH_LIST="9.0+PTX".

Usage: python scripts/check_cuda_build.py [path/to/_C.so]   (default: the built saliency_fast/_C*.so)
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Kernel:
    op: str
    bit_exact: bool  # the op's contract is bit-identical results on CPU and CUDA
    stack_bytes: int = 0  # allowance: stack frame (spills and call frames), bytes per thread
    local_bytes: int = 0  # allowance: local memory, bytes per thread


# Every __global__ function of the package, by the name in its (mangled) symbol.
KERNELS: Dict[str, Kernel] = {
    "samp_claim_kernel": Kernel("samp_step", bit_exact=True),
    "samp_project_kernel": Kernel("samp_step", bit_exact=True),
    # Its float32 instantiation has a 32-byte stack frame (nvcc 13.0, sm_90; 24 B before the
    # parity changes): a few local stores in the selection loops and around the calls to the
    # IEEE division's slow-path subroutine (IC's bound / step_l1). Growth beyond it fails.
    "samp_select_apply_kernel": Kernel("samp_step", bit_exact=True, stack_bytes=32),
    "masked_perturb_kernel": Kernel("masked_perturb", bit_exact=True),
    "masked_random_fill_kernel": Kernel("masked_random_fill", bit_exact=True),
    "perturbation_curve_kernel": Kernel("perturbation_curve", bit_exact=True),
    "threshold_budget_kernel": Kernel("saliency_budget", bit_exact=False),
    "order_keys_kernel": Kernel("saliency_budget", bit_exact=False),
    "inverse_budget_kernel": Kernel("saliency_budget", bit_exact=False),
}

FLOAT_TYPES = {"f16", "f16x2", "bf16", "bf16x2", "f32", "f64"}
ROUNDING_MODES = {"rn", "rz", "rm", "rp"}
# An instruction line, after an optional predicate (@P0, @!%p1): its opcode and operands.
_INSTRUCTION = re.compile(r"^\s*(?:/\*[0-9a-f]+\*/\s*)?(?:@!?%?\w+\s+)?(?P<opcode>[A-Za-z][\w.]*)\b(?P<rest>.*)$")


def kernel_of(symbol: str) -> Optional[str]:
    """The KERNELS key named in a (mangled) symbol, or None."""
    for name in KERNELS:
        if name in symbol:
            return name
    return None


def _opcodes(body: str) -> List[str]:
    out = []
    for line in body.splitlines():
        match = _INSTRUCTION.match(line.split(";")[0])
        if match:
            out.append(match.group("opcode"))
    return out


def _is_package_symbol(symbol: str) -> bool:
    return "saliency_fast" in symbol


# --- parsing cuobjdump's output -----------------------------------------------------------------

def sass_functions(sass: str) -> Dict[str, str]:
    """cuobjdump -sass: symbol → its instructions (sections start with 'Function : <symbol>')."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def ptx_entries(ptx: str) -> Dict[str, str]:
    """cuobjdump -ptx: symbol → the body of its .entry."""
    parts = re.split(r"^\s*(?:\.visible\s+|\.weak\s+)*\.entry\s+(\w+)\s*\(", ptx, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def resource_usage(text: str) -> Dict[str, Dict[str, int]]:
    """cuobjdump -res-usage: symbol → {'REG': .., 'STACK': .., 'SHARED': .., 'LOCAL': ..}."""
    usage = {}
    for match in re.finditer(r"Function (\S+?):\s*\n\s*(.*)", text):
        usage[match.group(1)] = {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", match.group(2))}
    return usage


# --- the rules ----------------------------------------------------------------------------------

def ptx_fusable(body: str) -> List[str]:
    """Floating fma/mad, and floating mul/add/sub that ptxas may contract (no rounding mode)."""
    found = []
    for opcode in _opcodes(body):
        parts = opcode.split(".")
        if not FLOAT_TYPES.intersection(parts[1:]):
            continue
        if parts[0] in ("fma", "mad") or (parts[0] in ("mul", "add", "sub") and not ROUNDING_MODES.intersection(parts)):
            found.append(opcode)
    return found


def ptx_divides(body: str) -> bool:
    return any(op.startswith("div.") and FLOAT_TYPES.intersection(op.split(".")) for op in _opcodes(body))


def sass_fused(body: str) -> List[str]:
    """FFMA and DFMA, with any modifiers. (Not HFMA2: ptxas materialises integer constants with
    `HFMA2.MMA Rd, -RZ, RZ, ...`, and no kernel here does half-precision arithmetic.)"""
    return [op for op in _opcodes(body) if op.split(".")[0] in ("FFMA", "DFMA", "FFMA2")]


def sass_cas64(body: str) -> List[str]:
    """64-bit atomic compare-and-swap (ATOMS.CAST.SPIN.64, ATOMS.CAS.64, ATOMG.E.CAS.64...)."""
    found = []
    for opcode in _opcodes(body):
        parts = opcode.split(".")
        if parts[0].startswith("ATOM") and {"CAS", "CAST"} & set(parts) and "64" in parts:
            found.append(opcode)
    return found


def check(sass: str, ptx: str, usage_text: str) -> List[str]:
    """Every finding of rules 2–5 on cuobjdump's three outputs (an empty list: all hold)."""
    failures = []
    functions = {s: b for s, b in sass_functions(sass).items() if _is_package_symbol(s)}
    entries = {s: b for s, b in ptx_entries(ptx).items() if _is_package_symbol(s)}
    usage = resource_usage(usage_text)
    if not entries:
        failures.append("no PTX for the package's kernels: build with TORCH_CUDA_ARCH_LIST='<arch>+PTX'")
    seen = set()
    for symbol, body in functions.items():
        name = kernel_of(symbol)
        if name is None:
            failures.append(f"{symbol}: a kernel that KERNELS does not list; add it with its rules")
            continue
        seen.add(name)
        rules = KERNELS[name]
        ptx_body = entries.get(symbol, "")
        if rules.bit_exact:
            fused = ptx_fusable(ptx_body)
            if fused:
                failures.append(f"{name} ({symbol}): may fuse multiply-adds in PTX: {_summary(fused)} "
                                "(compile with -fmad=false)")
            sass = sass_fused(body)
            if sass and not ptx_divides(ptx_body):
                failures.append(f"{name} ({symbol}): fused multiply-add in SASS: {_summary(sass)}")
        cas = sass_cas64(body)
        if cas:
            failures.append(f"{name} ({symbol}): 64-bit atomic CAS loop: {_summary(cas)} (use 32-bit counters)")
        resources = usage.get(symbol)
        if resources is None:
            failures.append(f"{name} ({symbol}): no resource usage reported")
        else:
            if resources.get("STACK", 0) > rules.stack_bytes:
                failures.append(f"{name} ({symbol}): stack frame {resources['STACK']} B > allowance {rules.stack_bytes} B")
            if resources.get("LOCAL", 0) > rules.local_bytes:
                failures.append(f"{name} ({symbol}): local memory {resources['LOCAL']} B > allowance {rules.local_bytes} B")
    for name in sorted(set(KERNELS) - seen):
        failures.append(f"{name}: listed in KERNELS but not in the build (renamed? update KERNELS)")
    return failures


def _summary(opcodes: List[str]) -> str:
    counts: Dict[str, int] = {}
    for op in opcodes:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{count}× {op}" for op, count in sorted(counts.items()))


# --- running it ---------------------------------------------------------------------------------

def find_cuobjdump() -> str:
    """$CUOBJDUMP, the toolkit's ($CUDA_HOME/bin), PATH's, or the copy triton's wheel ships."""
    candidates = [os.environ.get("CUOBJDUMP"), os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "cuobjdump"),
                  shutil.which("cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(os.path.join(location, "backends", "nvidia", "bin", "cuobjdump"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("cuobjdump not found: set CUOBJDUMP or CUDA_HOME (a toolkit with cuobjdump), or install triton")


def cuobjdump(tool: str, flag: str, library: str) -> str:
    result = subprocess.run([tool, flag, library], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{tool} {flag} {library} failed: {result.stderr.strip()}")
    return result.stdout


def missing_cuda_registrations() -> List[str]:
    """Rule 1, on the imported build: the ops without a CUDA kernel (or why none can be checked)."""
    import torch

    import saliency_fast as sf

    info = sf.build_info()
    print("build:", {k: v for k, v in info.items() if k != "parallel"})
    if "cuda" not in info.get("backends", []):
        return ["the extension was built without CUDA"]
    ops = sorted({name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("saliency_fast::")})
    print("ops:", ", ".join(ops))
    if not ops:
        return ["no saliency_fast ops are registered"]
    return [f"{name}: no CUDA kernel registered" for name in ops
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"saliency_fast::{name}", "CUDA")]


def main(argv: List[str]) -> int:
    libraries = argv[1:] or glob.glob(os.path.join(ROOT, "saliency_fast", "_C*.so"))
    if len(libraries) != 1:
        sys.exit(f"expected one built saliency_fast/_C*.so, found {libraries}")
    library = libraries[0]
    failures = missing_cuda_registrations()
    tool = find_cuobjdump()
    sass, ptx, usage = (cuobjdump(tool, flag, library) for flag in ("-sass", "-ptx", "-res-usage"))
    failures += check(sass, ptx, usage)
    kernels = [s for s in sass_functions(sass) if _is_package_symbol(s)]
    print(f"{library}: {len(kernels)} kernels inspected with {tool}")
    for failure in failures:
        print("FAIL:", failure)
    if failures:
        return 1
    print("all CUDA registrations present; no fusable multiply-add in the bit-exact kernels; "
          "no 64-bit CAS loop; stack and local memory within their allowances")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
