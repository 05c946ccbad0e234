"""The ops layer's contract (saliency_fast/ops.py): the fakes check shapes and dtypes like the
kernels, ops validates the scalars on both paths, no op is differentiable and each says so
clearly, the constants are exported by ops and agree with the C++ schemas, and nothing but ops
reaches the pure-PyTorch twins."""
import ast
import math
from pathlib import Path

import pytest
import torch

import saliency_fast as sf
from saliency_fast import ops

from .test_samp_step import call, clone, random_state

native = pytest.mark.skipif(not sf.native_available(), reason="the extension is not built")
PACKAGE = Path(ops.__file__).parent


def samp_meta_args(**changes):
    state = random_state(2, 3, 5, 4)
    names = ("point", "end", "grad", "grad_avg", "attribution", "active", "active_count", "step_count")
    tensors = dict({n: state[n] for n in names}, rows=torch.arange(2), bound=state["bound"])
    tensors.update(changes)
    return [t.to("meta") for t in tensors.values()], (3, 1.0, False, False, ops.ATOL, ops.RTOL, 0.0)


# --- the fakes -----------------------------------------------------------------------------------

@native
@pytest.mark.parametrize("change, match", [
    (dict(end=torch.zeros(2, 3, 5, 3, dtype=torch.float64)), "end must have shape"),
    (dict(grad=torch.zeros(1, 3, 5, 4, dtype=torch.float64)), "grad must have shape"),
    (dict(grad_avg=torch.zeros(2, 3, 5, 4)), "grad_avg must have dtype"),
    (dict(attribution=torch.zeros(2, 4, 5, dtype=torch.float64)), "attribution must have shape"),
    (dict(active=torch.zeros(2, 5, 4)), "active must have dtype"),
    (dict(active_count=torch.zeros(2, dtype=torch.int32)), "active_count must have dtype"),
    (dict(step_count=torch.zeros(3, dtype=torch.long)), "step_count must have shape"),
    (dict(rows=torch.arange(2, dtype=torch.int32)), "rows must have dtype"),
    (dict(bound=torch.zeros(2)), "bound must have dtype"),
    (dict(point=torch.zeros(2, 3, 5, 4, dtype=torch.int64)), "point must be one of"),
])
def test_samp_step_fake_rejects_wrong_shapes_and_dtypes(change, match):
    tensors, scalars = samp_meta_args(**change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.saliency_fast.samp_step(*tensors, *scalars)


@native
def test_samp_step_fake_accepts_the_right_arguments():
    tensors, scalars = samp_meta_args()
    torch.ops.saliency_fast.samp_step(*tensors, *scalars)


def _meta(*shape, dtype=torch.float64):
    return torch.empty(*shape, dtype=dtype, device="meta")


@native
@pytest.mark.parametrize("op, args, match", [
    ("perturbation_curve", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 5), _meta(2, 4, 4, dtype=torch.long),
                                    _meta(3, dtype=torch.long)), "finish must have shape"),
    ("perturbation_curve", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 4), _meta(2, 4, 4),
                                    _meta(3, dtype=torch.long)), "ranks must have dtype"),
    ("perturbation_curve", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 4), _meta(2, 4, 4, dtype=torch.long),
                                    _meta(3, 1, dtype=torch.long)), "counts must be a 1-D"),
    ("saliency_budget", lambda: (_meta(2, 4, 4, dtype=torch.float16), "mass", 0.1, 0.1, 0.5, 1.0), "saliency must be"),
    ("saliency_budget", lambda: (_meta(2, 1, 4, 4), "mass", 0.1, 0.1, 0.5, 1.0), "saliency must have shape"),
    ("masked_perturb", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 4, dtype=torch.float32), _meta(2, 3, 4, 4),
                                _meta(2, 4, 4), 0.01, 0.1, 0.0, 1.0), "delta must have dtype"),
    ("masked_perturb", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 4), _meta(2, 1, 4, 4),
                                _meta(2, 4, 4), 0.01, 0.1, 0.0, 1.0), "grad must have shape"),
    ("masked_perturb", lambda: (_meta(2, 3, 4, 4), _meta(2, 3, 4, 4), _meta(2, 3, 4, 4),
                                _meta(2, 1, 4, 4), 0.01, 0.1, 0.0, 1.0), "budget must have shape"),
    ("masked_random_fill", lambda: (_meta(2, 3, 4, 4), _meta(2, 4, 4), _meta(2, 3, 4, 4)), "mask must have dtype"),
    ("masked_random_fill", lambda: (_meta(2, 3, 4, 4), _meta(2, 4, 4, dtype=torch.bool), _meta(2, 3, 4)),
     "noise must have shape"),
])
def test_fakes_reject_wrong_shapes_and_dtypes(op, args, match):
    with pytest.raises(RuntimeError, match=match):
        getattr(torch.ops.saliency_fast, op)(*args())


@native
def test_fakes_give_the_output_shapes():
    out = torch.ops.saliency_fast.perturbation_curve(_meta(2, 3, 4, 5), _meta(2, 3, 4, 5),
                                                     _meta(2, 4, 5, dtype=torch.long), _meta(7, dtype=torch.long))
    assert out.shape == (2, 7, 3, 4, 5) and out.device.type == "meta"
    fill = torch.ops.saliency_fast.masked_random_fill(_meta(2, 3, 4, 5), _meta(2, 4, 5, dtype=torch.bool),
                                                      _meta(2, 3, 4, 5))
    assert fill.shape == (2, 3, 4, 5)


# --- scalars: validated by ops on both paths -------------------------------------------------------

@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("options, match", [
    (dict(k=0), "k \\(pixels per step\\) must be a positive int"),
    (dict(k=2.5), "k \\(pixels per step\\) must be a positive int"),
    (dict(k=2, tie_tolerance=-1.0), "tie_tolerance must be a finite number"),
    (dict(k=2, tie_tolerance=math.nan), "tie_tolerance must be a finite number"),
    (dict(k=2, tie_tolerance=0.1, exact_ties=True), "exact_ties"),
])
def test_samp_step_scalars_are_validated_on_both_paths(monkeypatch, fallback, options, match):
    if fallback:
        monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    state = random_state(2, 1, 4, 4)
    before = clone(state)
    with pytest.raises(ValueError, match=match):
        call(ops.samp_step, state, torch.arange(2), **options)
    for name in state:
        assert torch.equal(state[name], before[name]), name  # nothing moved


@pytest.mark.parametrize("fallback", [False, True])
def test_budget_and_perturb_scalars_are_validated_on_both_paths(monkeypatch, fallback):
    if fallback:
        monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    s = torch.rand(2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.saliency_budget(s, "median")
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        ops.saliency_budget(s, "mass", epsilon=-1.0)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        ops.masked_perturb(x, torch.zeros_like(x), torch.randn_like(x), s, -0.1, 0.1)


# --- differentiability ------------------------------------------------------------------------------

def _grad_calls():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    s = torch.rand(2, 4, 4, dtype=torch.float64)
    ranks = torch.randperm(16).view(1, 4, 4).repeat(2, 1, 1)
    mask = torch.rand(2, 4, 4) < 0.5
    state = random_state(2, 1, 4, 4)
    return [
        ("perturbation_curve", "start", lambda t: ops.perturbation_curve(t, x, ranks, torch.tensor([0, 5])), x),
        ("saliency_budget", "saliency", lambda t: ops.saliency_budget(t, "mass", 0.1), s),
        ("masked_random_fill", "x", lambda t: ops.masked_random_fill(t, mask, torch.rand_like(x)), x),
        ("masked_perturb", "delta", lambda t: ops.masked_perturb(x, t, torch.randn_like(x), s, 0.01, 0.1), x),
        ("samp_step", "attribution",
         lambda t: call(ops.samp_step, dict(state, attribution=t), torch.arange(2), k=2), state["attribution"]),
    ]


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("op, name, run, tensor", _grad_calls(), ids=[c[0] for c in _grad_calls()])
def test_no_op_is_differentiable_and_each_says_so(monkeypatch, fallback, op, name, run, tensor):
    if fallback:
        monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    elif not sf.native_available():
        pytest.skip("the extension is not built")
    leaf = tensor.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=rf"saliency_fast::{op} is not differentiable.*{name} requires grad"):
        run(leaf)
    with torch.no_grad():  # as documented: under no_grad (or with detached tensors) it runs
        run(leaf)
    run(tensor.clone())


# --- one contract: constants in ops, schemas agree, nobody else reaches _reference ----------------

@native
def test_the_schema_defaults_are_the_exported_tolerances():
    arguments = {a.name: a for a in torch.ops.saliency_fast.samp_step.default._schema.arguments}
    assert arguments["atol"].default_value == ops.ATOL and arguments["rtol"].default_value == ops.RTOL


def test_only_ops_imports_the_pure_pytorch_twins():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("ops.py", "_reference.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(n.split(".")[-1] == "_reference" for n in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == []
