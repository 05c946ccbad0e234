"""Counts the ATen ops a SAMP++ step dispatches outside the model, and the ops that would
synchronise a GPU (.item(), nonzero, host copies), with a TorchDispatchMode.

Outside the model = the ops of the whole SAMP++ run minus those of the model-only replay (the
same forward + input-gradient calls with the same batch sizes), divided by the model calls.
"""
from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

import saliency_fast as sf
from saliency_fast._common import attribution_mode, input_gradient

SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.item.default", "aten.is_nonzero.default",
           "aten.equal.default", "aten.masked_select.default"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def samp_dispatch_counts(model, images, target):
    method = sf.SAMP.plus(model)
    result = method.attribute_paths(images, target)
    sizes = [int((p.steps > t).sum()) for p in result.paths.values() for t in range(p.model_calls)]
    with CountOps() as total:
        method.attribute(images, target)
    with CountOps() as model_only, attribution_mode(model):
        for size in sizes:
            input_gradient(model, images[:size], target[:size])
    outside = total.counts - model_only.counts
    steps = len(sizes)
    return {
        "model_calls": steps,
        "ops_per_step_outside_model": sum(outside.values()) / steps,
        "syncing_ops_outside_model": {name: n for name, n in outside.items() if name in SYNCING},
        "top_ops_outside_model": dict(outside.most_common(8)),
    }


if __name__ == "__main__":
    from bench.digits import digits_work

    print(samp_dispatch_counts(*digits_work()))
