"""machine.py: /proc/cpuinfo parsing and the kernel-variant rule of csrc/kernels/dispatch.cc."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnx_prune.measure import machine

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2
bogomips\t: 4900.00

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2
"""
SKYLAKE_X = "model name : Intel Xeon\nflags : avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni\n"
AVX512_NO_VL = "model name : Odd\nflags : avx2 fma avx512f avx512bw\n"
AVX2_NO_FMA = "model name : Old\nflags : avx avx2\n"
ARM = "processor : 0\nFeatures : fp asimd evtstrm aes\nCPU part : 0xd0c\n"


def test_parse_first_processor():
    model, flags = machine.parse_cpuinfo(ZEN3)
    assert model == "AMD EPYC 7B13" and {"avx2", "fma", "f16c"} <= flags and "avx512f" not in flags


def test_cpu_simd_list_in_fixed_order():
    cpu = machine.read_cpu(SKYLAKE_X)
    assert cpu.model == "Intel Xeon" and cpu.cores >= 1
    assert cpu.simd == ["avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"]
    assert machine.read_cpu(ZEN3).simd == ["avx2", "fma", "f16c"]


@pytest.mark.parametrize("text,variant", [(SKYLAKE_X, "avx512vnni"), (ZEN3, "avx2"), (AVX512_NO_VL, "avx2"),
                                          (AVX2_NO_FMA, "portable")])
def test_variant_rule_on_x86(text, variant):
    flags = machine.parse_cpuinfo(text)[1]
    assert machine.kernel_variant(flags, env={}, machine="x86_64") == variant


def test_isa_env_forces_a_supported_variant_only():
    flags = machine.parse_cpuinfo(SKYLAKE_X)[1]
    assert machine.kernel_variant(flags, env={"ONNX_PRUNE_ISA": "avx2"}, machine="x86_64") == "avx2"
    assert machine.kernel_variant(flags, env={"ONNX_PRUNE_ISA": "portable"}, machine="x86_64") == "portable"
    assert machine.kernel_variant(flags, env={"ONNX_PRUNE_ISA": "avx512"}, machine="x86_64") == "avx512"
    zen3 = machine.parse_cpuinfo(ZEN3)[1]
    assert machine.kernel_variant(zen3, env={"ONNX_PRUNE_ISA": "avx512"}, machine="x86_64") == "avx2"
    assert machine.kernel_variant(zen3, env={"ONNX_PRUNE_ISA": "fast"}, machine="x86_64") == "avx2"
    assert machine.kernel_variant(zen3, env={"ONNX_PRUNE_ISA": ""}, machine="x86_64") == "avx2"


def test_other_architectures_and_unreadable_flags():
    model, flags = machine.parse_cpuinfo(ARM)
    assert model is None and flags is None
    assert machine.kernel_variant(flags, env={}) == "unknown"
    assert machine.kernel_variant(frozenset({"avx2", "fma"}), env={}, machine="aarch64") == "portable"
    assert machine.supported_variants(frozenset(), machine="x86_64") == ["portable"]


def test_machine_info_names_this_machine():
    info = machine.machine_info()
    assert set(info) == {"cpu", "cores", "simd", "onnxruntime", "python", "kernel_isa"}
    assert info["kernel_isa"] in ("portable", "avx2", "avx512", "avx512vnni", "unknown")
    line = machine.describe(info)
    assert info["cpu"] in line and f"kernel {info['kernel_isa']}" in line and "\n" not in line


DISPATCH = Path(__file__).resolve().parents[2] / "csrc" / "kernels" / "dispatch.cc"
GCC_TO_CPUINFO = {"avx512vnni": "avx512_vnni"}  # __builtin_cpu_supports names -> /proc/cpuinfo flags


def dispatch_rule() -> list[tuple[str, set]]:
    """(variant, the CPU flags it needs) in the order csrc/kernels/dispatch.cc's supported_kernels()
    adds them, read from its source: each cpu_has_*() check with the checks it calls, and each
    table's ISA name."""
    text = DISPATCH.read_text()
    needs: dict[str, set] = {}
    for check, body in re.findall(r"bool (cpu_has_\w+)\(\) \{(.*?)\n\}", text, re.S):
        flags = {GCC_TO_CPUINFO.get(f, f) for f in re.findall(r'__builtin_cpu_supports\("(\w+)"\)', body)}
        for called in re.findall(r"(cpu_has_\w+)\(\)", body):
            flags |= needs[called]
        needs[check] = flags
    body = re.search(r"supported_kernels\(\) \{(.*?)\n\}", text, re.S).group(1)
    rule = [(name, set()) for name in re.findall(r"tables\{&isa_(\w+)::kTable\}", body)]
    for check, table in re.findall(r"if \((cpu_has_\w+)\(\)\) tables\.push_back\(&?(\w+)", body):
        rule.append((re.fullmatch(r"isa_(\w+)|(\w+)_table", table).group(1) or table[:-len("_table")],
                     needs[check]))
    return rule


def test_kernel_variants_are_the_rule_of_dispatch_cc():
    """machine.KERNEL_VARIANTS restates the library's run-time dispatch: the same variants, in the
    same order, each needing the same CPU flags."""
    rule = dispatch_rule()
    assert [name for name, _ in rule] == ["portable", "avx2", "avx512", "avx512vnni"]
    assert [(name, set(flags)) for name, flags in machine.KERNEL_VARIANTS] == rule
