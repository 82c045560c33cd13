"""The one reader of what machine a number was measured on: CPU model, its vector extensions,
cores, onnxruntime version, and which SparseGemm kernel variant runs there.

The variant follows the rule of the library's run-time dispatch (csrc/kernels/dispatch.cc): avx512
needs avx512f + avx512bw + avx512vl on top of avx2 + fma, avx2 needs avx2 + fma, anything else runs
the portable kernel; ONNX_PRUNE_ISA names a supported variant to force (an unsupported name is
ignored, as the library ignores it). tests/measure/test_machine.py reads dispatch.cc and checks
KERNEL_VARIANTS against it, so the two cannot drift apart.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

CPUINFO = Path("/proc/cpuinfo")
ISA_ENV = "ONNX_PRUNE_ISA"
# Extensions worth reporting with a timing: those the kernels use or could use.
SIMD_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c")
# Kernel variants from least to most demanding, each with the CPU flags it needs.
KERNEL_VARIANTS = (("portable", ()), ("avx2", ("avx2", "fma")),
                   ("avx512", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")),
                   ("avx512vnni", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")))


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: Optional[frozenset]  # None when the CPU flags could not be read
    cores: int

    @property
    def simd(self) -> list[str]:
        return [f for f in SIMD_FLAGS if self.flags and f in self.flags]


def parse_cpuinfo(text: str) -> tuple[Optional[str], Optional[frozenset]]:
    """(model name, flags) of the first processor listed in /proc/cpuinfo text (None: absent)."""
    model = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def read_cpu(cpuinfo: Optional[str] = None) -> Cpu:
    """This machine's CPU (``cpuinfo``: /proc/cpuinfo text to use instead of reading the file)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    model, flags = parse_cpuinfo(cpuinfo)
    return Cpu(model=model or platform.processor() or platform.machine(), flags=flags, cores=os.cpu_count() or 1)


def supported_variants(flags: frozenset, machine: Optional[str] = None) -> list[str]:
    """Kernel variants the library can run on a CPU with ``flags``, least demanding first (the x86
    variants only on x86-64, where the library builds them)."""
    machine = (machine or platform.machine()).lower()
    x86 = machine in ("x86_64", "amd64")
    return [name for name, needs in KERNEL_VARIANTS if not needs or (x86 and all(f in flags for f in needs))]


def kernel_variant(flags: Optional[frozenset], env: Optional[Mapping[str, str]] = None,
                   machine: Optional[str] = None) -> str:
    """The variant the library runs: ONNX_PRUNE_ISA when it names a supported one, else the most
    capable supported one ("unknown" when the CPU flags could not be read)."""
    if flags is None:
        return "unknown"
    supported = supported_variants(flags, machine)
    forced = (os.environ if env is None else env).get(ISA_ENV, "")
    return forced if forced in supported else supported[-1]


def machine_info() -> dict:
    """What a reader needs to judge timings: CPU, its vector extensions, cores, versions, kernel."""
    import onnxruntime as ort

    cpu = read_cpu()
    return {"cpu": cpu.model, "cores": cpu.cores, "simd": cpu.simd, "onnxruntime": ort.__version__,
            "python": platform.python_version(), "kernel_isa": kernel_variant(cpu.flags)}


def describe(info: Mapping) -> str:
    """machine_info as one line for a table title or a log."""
    return (f"{info['cpu']}, {info['cores']} logical cores, SIMD {','.join(info['simd']) or 'none'}, "
            f"onnxruntime {info['onnxruntime']}, kernel {info['kernel_isa']}")
