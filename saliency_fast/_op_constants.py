"""The constants of the ops' contract: the tolerances that say when a SAMP pixel has reached its
end value, and the budget modes of ``saliency_budget``. Defined once here so that the op wrappers
(``saliency_fast.ops``, which exports them: import them from there) and their pure-PyTorch twins
(``_reference``) share them; the C++ schemas' defaults (csrc/ops.cpp) equal them (tested).
"""
from __future__ import annotations

# When a pixel has reached its end value (samp.md): torch.isclose's rule with these tolerances.
ATOL: float = 1e-8
RTOL: float = 1e-5

# The budget modes of saliency_budget (scaat.md), in the order the error messages list them.
BUDGET_MODES: tuple[str, ...] = ("mass", "topk", "inverse", "uniform")

# The tensor arguments of samp_step, in the schema's order (csrc/ops.cpp), for the messages that name them.
SAMP_STEP_TENSORS: tuple[str, ...] = ("point", "end", "grad", "grad_avg", "attribution", "active", "active_count",
                                      "step_count", "rows", "bound")
