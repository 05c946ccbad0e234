"""Where a SAMP++ step's time goes, timed inside real runs on the digits: the model call
(forward + input gradient), the samp_step op, and the rest of the step loop (finding the live
images, gathering their points, the loop itself), plus the once-per-call set-up spread over the
steps.

The model evicts the path state and the interpreter's working set from the caches, so the op
and the Python cost more here than when timed alone.
"""
import statistics
import time
from unittest import mock

import saliency_fast as sf
from saliency_fast import ops
from saliency_fast.methods import samp


def step_time_breakdown(model, images, target, runs: int = 5) -> dict:
    """Median over ``runs`` SAMP++ calls (after one warm-up) of the µs per step in each part."""
    spent = {"model": 0.0, "op": 0.0}

    def timed(part, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            spent[part] += time.perf_counter() - start
            return result
        return wrapper

    per_step = {"model": [], "op": [], "rest": []}
    with mock.patch.object(samp, "input_gradient", timed("model", samp.input_gradient)), \
         mock.patch.object(ops, "samp_step", timed("op", ops.samp_step)):
        for run in range(runs + 1):
            spent.update(model=0.0, op=0.0)
            start = time.perf_counter()
            result = sf.SAMP.plus(model).attribute_paths(images, target, scores=False)
            total = time.perf_counter() - start
            if run == 0:
                continue  # warm-up
            steps = result.model_calls
            per_step["model"].append(spent["model"] / steps * 1e6)
            per_step["op"].append(spent["op"] / steps * 1e6)
            per_step["rest"].append((total - spent["model"] - spent["op"]) / steps * 1e6)
    return {"steps": result.model_calls, **{part: statistics.median(v) for part, v in per_step.items()}}


if __name__ == "__main__":
    from bench.digits import digits_work

    print(step_time_breakdown(*digits_work()))
