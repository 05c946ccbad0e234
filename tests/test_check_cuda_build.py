"""scripts/check_cuda_build.py's rules on sample cuobjdump output: the CI guards on the CUDA build
must fail on a fused multiply-add in a bit-exact kernel, a 64-bit CAS loop, a stack frame over
its allowance and an unlisted kernel, and pass clean output."""
import importlib.util
import os
import sys

import pytest

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "check_cuda_build.py")


@pytest.fixture(scope="module")
def guard():
    spec = importlib.util.spec_from_file_location("check_cuda_build", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_cuda_build"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["check_cuda_build"]


PROJECT = "_ZN13saliency_fast50_GLOBAL__N__98db964e_12_samp_step_cu_b6012633_963119samp_project_kernelIfEEvPKT_"
SELECT = "_ZN13saliency_fast50_GLOBAL__N__98db964e_12_samp_step_cu_b6012633_963124samp_select_apply_kernelIfEEvPT_"
BUDGET = "_ZN13saliency_fast56_GLOBAL__N__13c2fd2b_18_saliency_budget_cu_b6012633_897321inverse_budget_kernelIfEEvPKl"


def sass(functions):
    """cuobjdump -sass layout: a header per function, then its instructions."""
    text = "\n\tcode for sm_90\n"
    for symbol, instructions in functions.items():
        text += f"\t\tFunction : {symbol}\n\t.headerflags\t@\"EF_CUDA_SM90\"\n"
        for i, instruction in enumerate(instructions):
            text += f"        /*{i * 16:04x}*/                   {instruction} ;  /* 0x000000130c137223 */\n"
        text += "\t\t..........\n\n"
    return text


def ptx(entries):
    text = ".version 9.0\n.target sm_90\n.address_size 64\n"
    for symbol, instructions in entries.items():
        text += f"\n\t// .globl\t{symbol}\n.visible .entry {symbol}(\n\t.param .u64 p0\n)\n{{\n"
        text += "".join(f"\t{instruction};\n" for instruction in instructions) + "\tret;\n}\n"
    return text


def usage(resources):
    return "Resource usage:\n" + "".join(
        f" Function {symbol}:\n  REG:32 STACK:{stack} SHARED:0 LOCAL:{local} CONSTANT[0]:600\n"
        for symbol, (stack, local) in resources.items())


def only(guard, *names):
    """Restrict KERNELS to the sample's kernels (the rest would be reported missing)."""
    return {name: guard.KERNELS[name] for name in names}


CLEAN_SASS = {
    PROJECT: ["LDG.E R2, desc[UR4][R2.64]", "FMUL R5, R2, R4", "FADD R5, R5, R6", "@!P0 HFMA2.MMA R3, -RZ, RZ, 0, 0",
              "STG.E desc[UR4][R8.64], R5", "EXIT"],
    SELECT: ["ATOMS.POPC.INC.32 RZ, [R5+URZ]", "MUFU.RCP R7, R4", "FFMA R8, -R4, R7, 1", "FFMA R7, R7, R8, R7",
             "FCHK P0, R6, R4", "BAR.SYNC.DEFER_BLOCKING 0x0", "EXIT"],
    BUDGET: ["DFMA R4, R2, R6, R8", "EXIT"],  # not bit-exact: its pow may fuse
}
CLEAN_PTX = {
    PROJECT: ["ld.global.f32 %f1, [%rd1]", "mul.rn.f32 %f3, %f1, %f2", "add.rn.f32 %f4, %f3, %f5",
              "mad.lo.s64 %rd4, %rd2, %rd3, %rd1"],
    SELECT: ["atom.shared.add.u32 %r5, [%r4], 1", "div.rn.f32 %f6, %f4, %f5", "@%p3 add.rn.f32 %f7, %f7, %f6"],
    BUDGET: ["fma.rn.f64 %fd3, %fd1, %fd2, %fd0"],
}
CLEAN_USAGE = {PROJECT: (0, 0), SELECT: (24, 0), BUDGET: (0, 0)}


def run(guard, monkeypatch, sass_functions=CLEAN_SASS, ptx_entries=CLEAN_PTX, resources=CLEAN_USAGE):
    monkeypatch.setattr(guard, "KERNELS", only(guard, "samp_project_kernel", "samp_select_apply_kernel",
                                               "inverse_budget_kernel"))
    return guard.check(sass(sass_functions), ptx(ptx_entries), usage(resources))


def test_clean_build_passes(guard, monkeypatch):
    assert run(guard, monkeypatch) == []


def test_ffma_in_a_bit_exact_kernel_fails(guard, monkeypatch):
    functions = dict(CLEAN_SASS, **{PROJECT: ["LDG.E R2, desc[UR4][R2.64]", "FFMA R5, R2, R4, R6", "EXIT"]})
    failures = run(guard, monkeypatch, sass_functions=functions)
    assert len(failures) == 1 and "samp_project_kernel" in failures[0] and "1× FFMA" in failures[0]


def test_dfma_with_a_predicate_and_modifier_fails(guard, monkeypatch):
    functions = dict(CLEAN_SASS, **{PROJECT: ["@!P1 DFMA.RM R4, R2, R6, R8", "EXIT"]})
    failures = run(guard, monkeypatch, sass_functions=functions)
    assert len(failures) == 1 and "DFMA.RM" in failures[0]


@pytest.mark.parametrize("instruction", ["fma.rn.f32 %f4, %f1, %f2, %f3", "mul.f32 %f3, %f1, %f2",
                                         "add.f64 %fd3, %fd1, %fd2", "@%p1 sub.ftz.f32 %f3, %f1, %f2"])
def test_fusable_ptx_in_a_bit_exact_kernel_fails(guard, monkeypatch, instruction):
    entries = dict(CLEAN_PTX, **{PROJECT: ["ld.global.f32 %f1, [%rd1]", instruction]})
    failures = run(guard, monkeypatch, ptx_entries=entries)
    assert len(failures) == 1 and "may fuse multiply-adds in PTX" in failures[0]


def test_division_ffmas_pass_only_where_the_ptx_divides(guard, monkeypatch):
    entries = dict(CLEAN_PTX, **{SELECT: ["atom.shared.add.u32 %r5, [%r4], 1"]})  # no div: the FFMAs are fused
    failures = run(guard, monkeypatch, ptx_entries=entries)
    assert len(failures) == 1 and "samp_select_apply_kernel" in failures[0] and "in SASS" in failures[0]


@pytest.mark.parametrize("instruction", ["ATOMS.CAST.SPIN.64 R10, [R5], R8, R10", "ATOMS.CAS.64 R4, [R2], R6, R8",
                                         "@P0 ATOMG.E.CAS.64.STRONG.GPU PT, R4, [R2.64], R6, R8"])
def test_64_bit_cas_loop_fails(guard, monkeypatch, instruction):
    functions = dict(CLEAN_SASS, **{SELECT: ["MUFU.RCP R7, R4", instruction, "BRA 0x1af0", "EXIT"]})
    failures = run(guard, monkeypatch, sass_functions=functions)
    assert len(failures) == 1 and "64-bit atomic CAS loop" in failures[0]


def test_stack_and_local_memory_over_allowance_fail(guard, monkeypatch):
    failures = run(guard, monkeypatch, resources={PROJECT: (8, 0), SELECT: (24, 4), BUDGET: (0, 0)})
    assert len(failures) == 2
    assert "samp_project_kernel" in failures[0] and "stack frame 8 B > allowance 0 B" in failures[0]
    assert "samp_select_apply_kernel" in failures[1] and "local memory 4 B" in failures[1]


def test_unlisted_and_missing_kernels_fail(guard, monkeypatch):
    other = "_ZN13saliency_fast12new_kernelIfEEvPT_"
    functions = dict(CLEAN_SASS, **{other: ["EXIT"]})
    failures = run(guard, monkeypatch, sass_functions=functions, resources=dict(CLEAN_USAGE, **{other: (0, 0)}))
    assert any("new_kernel" in f and "does not list" in f for f in failures)
    del functions[other], functions[BUDGET]
    failures = run(guard, monkeypatch, sass_functions=functions)
    assert failures == ["inverse_budget_kernel: listed in KERNELS but not in the build (renamed? update KERNELS)"]


def test_missing_ptx_fails(guard, monkeypatch):
    failures = run(guard, monkeypatch, ptx_entries={})
    assert failures[0].startswith("no PTX")


def test_every_op_kernel_is_listed_with_an_op(guard):
    ops = {kernel.op for kernel in guard.KERNELS.values()}
    assert ops == {"samp_step", "masked_perturb", "masked_random_fill", "perturbation_curve", "saliency_budget"}
    assert {k.op for k in guard.KERNELS.values() if k.bit_exact} == ops - {"saliency_budget"}
