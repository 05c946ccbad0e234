"""After a CUDA build: every saliency_fast op must have a CUDA kernel registered."""
import sys

import torch

import saliency_fast as sf

info = sf.build_info()
print("build:", {k: v for k, v in info.items() if k != "parallel"})
if "cuda" not in info.get("backends", []):
    sys.exit("the extension was built without CUDA")
ops = sorted({name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("saliency_fast::")})
missing = [name for name in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"saliency_fast::{name}", "CUDA")]
print("ops:", ", ".join(sorted(ops)))
if not ops or missing:
    sys.exit(f"ops without a CUDA kernel: {missing or 'no ops found'}")
print(f"all {len(ops)} ops have CUDA kernels")
