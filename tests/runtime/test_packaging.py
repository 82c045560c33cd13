"""The custom-op library as a file apps ship: the system libraries and symbol versions it needs stay
within manylinux_2_28, onnxruntime can load and unload it without leaking, and a pruned file of an
old-IR model loads in the onnxruntime installed here (CI runs this on the oldest one we support)."""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_prune
from helpers_models import assert_close, mlp, mlp_reference

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF / glibc checks")

# auditwheel's policy for manylinux_2_28 (manylinux-policy.json): the newest symbol version of each
# system library a wheel may ask for, and the only libraries it may link against that we could use.
MANYLINUX_2_28_MAX_VERSIONS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
MANYLINUX_2_28_UNNUMBERED = {"CXXABI_TM_1", "CXXABI_FLOAT128"}
MANYLINUX_2_28_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                       "libstdc++.so.6", "libgcc_s.so.1"}


def elf_dependencies(library: str) -> tuple[set[str], dict[str, set[str]]]:
    """NEEDED libraries and, per library, the symbol versions required from it (objdump -p)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    text = subprocess.run([objdump, "-p", library], check=True, capture_output=True, text=True).stdout
    needed = set(re.findall(r"^\s+NEEDED\s+(\S+)", text, re.M))
    versions: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"\s+required from (\S+):", line)
        if match:
            current = versions.setdefault(match.group(1), set())
        elif current is not None and re.match(r"\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ \S+$", line):
            current.add(line.split()[-1])
        elif line.strip() and not line.startswith(" "):
            current = None
    return needed, versions


def version_tuple(version: str) -> tuple[str, tuple[int, ...]]:
    """'GLIBCXX_3.4.21' -> ('GLIBCXX', (3, 4, 21)); unnumbered tags (CXXABI_TM_1) -> (tag, ())."""
    match = re.fullmatch(r"([A-Z]+)_(\d+(?:\.\d+)*)", version)
    if match is None:
        return version, ()
    return match.group(1), tuple(int(part) for part in match.group(2).split("."))


@linux_only
@pytest.mark.skipif(not re.match(r"x86_64|amd64", __import__("platform").machine(), re.I),
                    reason="the manylinux_2_28 numbers checked here are x86_64's")
def test_library_needs_nothing_newer_than_manylinux_2_28(library_path):
    needed, versions = elf_dependencies(library_path)
    assert needed <= MANYLINUX_2_28_LIBS, f"links against {sorted(needed - MANYLINUX_2_28_LIBS)}"
    assert "libc.so.6" in versions  # the parse found the version references at all
    too_new = []
    for lib, tags in versions.items():
        for tag in tags:
            if tag in MANYLINUX_2_28_UNNUMBERED:
                continue
            family, number = version_tuple(tag)
            limit = MANYLINUX_2_28_MAX_VERSIONS.get(family)
            if limit is None or number > limit:
                too_new.append(f"{lib}: {tag}")
    assert not too_new, f"symbol versions newer than manylinux_2_28 allows: {sorted(too_new)}"


def test_version_parser_orders_numbers_not_strings():
    assert version_tuple("GLIBCXX_3.4.9") < version_tuple("GLIBCXX_3.4.21")
    assert version_tuple("GLIBC_2.2.5") == ("GLIBC", (2, 2, 5))
    assert version_tuple("GLIBC_2.36")[1] > MANYLINUX_2_28_MAX_VERSIONS["GLIBC"]
    assert version_tuple("CXXABI_TM_1") == ("CXXABI_TM_1", ())


# Creates and destroys onnxruntime sessions that register the library (onnxruntime loads it for the
# session's options and unloads it with them) and runs the SparseGemm model once in each; prints the
# growth of the C heap (malloc'd bytes in use) per session over the measured loop.
LOAD_UNLOAD_SCRIPT = textwrap.dedent("""
    import ctypes, gc, sys
    import numpy as np
    import onnxruntime as ort

    library, model, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    libc = ctypes.CDLL(None)
    fields = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    Info = type("Info", (ctypes.Structure,), {"_fields_": fields})
    libc.mallinfo2.restype = Info  # glibc >= 2.33

    def heap_in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    x = np.ones((4, 20), np.float32)

    def one_session():
        options = ort.SessionOptions()
        options.register_custom_ops_library(library)
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        session.run(None, {"input": x})
        del session, options
        gc.collect()

    for _ in range(20):  # warm-up: onnxruntime's own one-time allocations
        one_session()
    before = heap_in_use()
    for _ in range(sessions):
        one_session()
    print((heap_in_use() - before) / sessions)
""")

# Measured growth per session on glibc 2.36 / onnxruntime 1.32: 71 KiB with the C++ runtime linked
# statically (each load allocated a new exception-handling pool that unload never freed); ~0.2 KiB
# with it linked dynamically, ~0.07 KiB of which onnxruntime shows without our library. The bound
# is 20x the measured figure and 9x below the old leak.
MAX_HEAP_GROWTH_PER_SESSION = 8 * 1024


@linux_only
def test_loading_and_unloading_the_library_does_not_leak(library_path, tmp_path):
    libc_version = tuple(int(p) for p in __import__("platform").libc_ver()[1].split(".")[:2] if p.isdigit())
    if libc_version < (2, 33):
        pytest.skip("mallinfo2 needs glibc >= 2.33")
    model, _ = onnx_prune.prune(mlp(), 0.8, auto_dense=False)
    path = tmp_path / "pruned.onnx"
    onnx.save(model, str(path))
    result = subprocess.run([sys.executable, "-c", LOAD_UNLOAD_SCRIPT, library_path, str(path), "200"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    growth = float(result.stdout.strip().splitlines()[-1])
    assert growth < MAX_HEAP_GROWTH_PER_SESSION, f"heap grew {growth:.0f} bytes per session"


def test_pruned_file_of_an_ir7_model_loads_in_this_onnxruntime(library_path):
    """IR 7 in; the file written must be an IR this onnxruntime reads, with and without the library."""
    model = mlp()
    model.ir_version = 7
    pruned, _ = onnx_prune.prune(model, 0.8, auto_dense=False)
    assert 7 <= pruned.ir_version <= 9  # 9: the newest IR onnxruntime 1.17 loads
    x = np.random.default_rng(1).standard_normal((3, 20)).astype(np.float32)
    expected = mlp_reference(model, x, 0.8)
    with_library = ort.InferenceSession(pruned.SerializeToString(), onnx_prune.session_options(),
                                        providers=["CPUExecutionProvider"])
    fallback = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(with_library.run(None, {"input": x})[0], expected)
    assert_close(fallback.run(None, {"input": x})[0], expected)



def test_package_namespace_holds_only_the_api_and_its_modules():
    """``dir(onnx_prune)`` is what users explore: the public names and submodules, no leftovers of
    import machinery such as ``annotations`` from a ``from __future__`` line."""
    public = [n for n in dir(onnx_prune) if not n.startswith("_")]
    assert "annotations" not in public
    for name in onnx_prune.__all__:
        assert hasattr(onnx_prune, name), name
    leftovers = [n for n in public if n not in onnx_prune.__all__ and not inspect.ismodule(getattr(onnx_prune, n))]
    assert leftovers == [], leftovers
