"""Static performance gates for Hopper (sm_90a), checked on compiled code without a GPU.

Triton kernels are compiled with ``tests/ops/_triton_sm90_check.compile_sm90`` (the constexprs and integer
specialisation of a real launch); CUDA C++ files with ``nvcc -cubin -arch=sm_90a -Xptxas -v`` and their SASS
read with the ``cuobjdump`` shipped in triton's nvidia backend. Each ``*_gate_failures`` function returns a
list of messages (empty: the gate passes) that name the kernel and the instruction counts.

Gates, Triton GEMM-like kernels:
  * ``wgmma.mma_async`` in the PTX;
  * main-loop buffer depth >= 3 (the leading dim of the shared tiles the loop's async copies fill) and an
    in-loop ``async_wait`` with num >= 1 (a load stays in flight across the wait);
  * no ``.local`` memory in the PTX, 0 spill bytes from ``ptxas -v``;
  * vectorised global stores (``st.global.v2``/``.v4``) and no scalar ``st.global`` in the epilogue.
Gates, CUDA C++ kernels:
  * 0 spill bytes (``ptxas -v``);
  * tensor-core kernels (SASS ``HMMA``) load fragments with ``LDSM``, or use ``HGMMA`` (wgmma);
  * no 64-bit integer division (PTX ``div``/``rem`` ``.s64``/``.u64``) inside a loop (a backward branch).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.environ.get("SPARSECL_GATE_CACHE", os.path.join(ROOT, "build", "gpu_static"))
ARCH = "sm_90a"


def nvidia_bin(tool):
    """Path of ``tool`` (ptxas, cuobjdump) from triton's nvidia backend, else the CUDA toolkit / PATH, or None."""
    try:
        import triton.backends.nvidia as nv

        path = os.path.join(os.path.dirname(nv.__file__), "bin", tool)
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    cuda = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", tool)
    return cuda if os.access(cuda, os.X_OK) else shutil.which(tool)


def nvcc():
    cuda = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    return cuda if os.access(cuda, os.X_OK) else shutil.which("nvcc")


# ---- PTX / ptxas ------------------------------------------------------------------------------
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


def ptxas_spills(log):
    """{kernel: spill store + load bytes} from ``ptxas -v`` output."""
    out, name = {}, None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            name = m.group(1)
            continue
        m = _SPILL.search(line)
        if m and name is not None:
            out[name] = out.get(name, 0) + int(m.group(1)) + int(m.group(2))
    return out


def ptx_functions(ptx):
    """{entry name: body lines} of the ``.entry`` functions of a PTX module."""
    funcs = {}
    for m in re.finditer(r"\.entry\s+(\S+?)\s*\(", ptx):
        start = ptx.index("{", m.end())
        depth, i = 0, start
        while True:
            c = ptx[i]
            depth += c == "{"
            depth -= c == "}"
            i += 1
            if depth == 0:
                break
        funcs[m.group(1)] = ptx[start:i].splitlines()
    return funcs


_DIV64 = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:div|rem)(?:\.\w+)*\.[su]64\b")


def div64_in_loops(lines):
    """PTX lines of 64-bit integer div/rem that lie inside a loop (between a label and a later branch to it)."""
    labels = {}
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(\$\w+):", line)
        if m:
            labels[m.group(1)] = i
        m = re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", line)
        if m and m.group(1) in labels:
            loops.append((labels[m.group(1)], i))
    return [line.strip() for i, line in enumerate(lines)
            if _DIV64.match(line) and any(a <= i <= b for a, b in loops)]


# ---- SASS -------------------------------------------------------------------------------------
def sass_counts(cubin_path):
    """{kernel: Counter of SASS opcodes (base name, e.g. LDSM, HMMA, HGMMA)} via cuobjdump -sass."""
    tool = nvidia_bin("cuobjdump")
    txt = subprocess.run([tool, "-sass", cubin_path], capture_output=True, text=True, check=True).stdout
    parts = re.split(r"\n\s*Function : (\S+)\n", txt)
    out = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", body)
        out[name] = Counter(ops)
    return out


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    short = [re.sub(r"sparsecl::\(anonymous namespace\)::", "", o) for o in out]
    return dict(zip(names, short)) if len(short) == len(names) else {n: n for n in names}


# ---- CUDA C++ -----------------------------------------------------------------------------------
def _nvcc_flags():
    import torch.utils.cpp_extension as ext

    inc = [f"-I{p}" for p in ext.include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}"]
    try:
        import nvidia

        for base in nvidia.__path__:
            for sub in sorted(os.listdir(base)):
                d = os.path.join(base, sub, "include")
                if os.path.isdir(d):
                    inc.append(f"-I{d}")
    except ImportError:
        pass
    # the flags setup.py's CUDAExtension compiles with (COMMON_NVCC_FLAGS, -O3, the SPARSECL_WITH_CUDA define)
    return ["-O3", "-std=c++20", "-DNDEBUG", "-DSPARSECL_WITH_CUDA", *ext.COMMON_NVCC_FLAGS] + inc


def _local_sources(path, seen=None):
    """``path`` and, recursively, the project headers it ``#include "..."``s (resolved against its folder and csrc/)."""
    seen = [] if seen is None else seen
    seen.append(path)
    with open(path) as f:
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), re.M):
            for base in (os.path.dirname(path), os.path.join(ROOT, "csrc")):
                h = os.path.normpath(os.path.join(base, name))
                if os.path.exists(h):
                    if h not in seen:
                        _local_sources(h, seen)
                    break
    return seen


def compile_cu(path):
    """(ptxas log, ptx text, cubin path) for one .cu file, compiled once per source hash into CACHE.
    Raises RuntimeError with nvcc's output tail if it does not compile."""
    digest = hashlib.sha256()
    for src in _local_sources(path):  # the file and the project headers it includes
        with open(src, "rb") as f:
            digest.update(f.read())
    key = f"{os.path.basename(path)[:-3]}-{ARCH}-{digest.hexdigest()[:16]}"
    out = os.path.join(CACHE, key)
    files = [os.path.join(out, n) for n in ("ptxas.log", "kernel.ptx", "kernel.cubin")]
    if not all(os.path.exists(f) for f in files):
        tmp = out + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        cmd = [nvcc(), "-cubin", f"-arch={ARCH}", "-Xptxas", "-v", "-keep", "-keep-dir", tmp,
               "-o", os.path.join(tmp, "kernel.cubin"), path, *_nvcc_flags()]
        env = dict(os.environ, CUDA_HOME=os.environ.get("CUDA_HOME", "/usr/local/cuda"))
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"nvcc failed on {path}:\n{run.stderr[-3000:]}")
        with open(os.path.join(tmp, "ptxas.log"), "w") as f:
            f.write(run.stdout + run.stderr)
        ptx = [n for n in os.listdir(tmp) if n.endswith(".ptx")]
        os.replace(os.path.join(tmp, ptx[0]), os.path.join(tmp, "kernel.ptx"))
        for n in os.listdir(tmp):
            if n not in ("ptxas.log", "kernel.ptx", "kernel.cubin"):
                os.remove(os.path.join(tmp, n))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        stem = key.rsplit("-", 1)[0] + "-"
        for old in os.listdir(CACHE):  # entries of this file's older sources
            if old.startswith(stem) and old != key and ".tmp" not in old:
                shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
    with open(files[0]) as f, open(files[1]) as g:
        return f.read(), g.read(), files[2]


def cuda_kernel_report(path):
    """{demangled kernel: dict(spill_bytes, sass Counter, div64_in_loops list)} for one .cu file."""
    log, ptx, cubin = compile_cu(path)
    spills, sass, funcs = ptxas_spills(log), sass_counts(cubin), ptx_functions(ptx)
    names = demangle(sorted(set(spills) | set(sass)))
    return {names[n]: dict(spill_bytes=spills.get(n, 0), sass=sass.get(n, Counter()),
                           div64_in_loops=div64_in_loops(funcs.get(n, [])))
            for n in names}


def cuda_gate_failures(name, rep):
    """Gate messages for one CUDA C++ kernel (from ``cuda_kernel_report``)."""
    fails = []
    s = rep["sass"]
    if rep["spill_bytes"]:
        fails.append(f"{name}: {rep['spill_bytes']} spill bytes (ptxas -v)")
    if s["HMMA"] and not s["LDSM"] and not s["HGMMA"]:
        fails.append(f"{name}: tensor-core kernel loads fragments without LDSM "
                     f"(HMMA={s['HMMA']} LDSM=0 LD={s['LD']} MOVM={s['MOVM']})")
    if rep["div64_in_loops"]:
        fails.append(f"{name}: {len(rep['div64_in_loops'])} 64-bit integer div/rem in loops "
                     f"({', '.join(sorted(set(rep['div64_in_loops'])))})")
    return fails


# ---- Triton -------------------------------------------------------------------------------------
def _main_loop(ttgir):
    """Text of the outermost scf.for body that contains a dot (warp_group_dot or dot), or ''."""
    best = ""
    for m in re.finditer(r"scf\.for ", ttgir):
        start = ttgir.find("{\n", m.start())
        depth, i = 0, start
        while i < len(ttgir):
            depth += ttgir[i] == "{"
            depth -= ttgir[i] == "}"
            i += 1
            if depth == 0:
                break
        body = ttgir[start:i]
        if ("warp_group_dot" in body or "tt.dot " in body) and len(body) > len(best):
            best = body
    return best


def triton_report(compiled):
    """Facts the Triton gates read from a compiled kernel (``triton.compile`` result)."""
    ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
    loop = _main_loop(ttgir)
    filled = set(re.findall(r"async_copy_global_to_local %\w+, (%\w+)", loop))
    depths = [int(d) for d in re.findall(r"local_alloc : \(\) -> !ttg\.memdesc<(\d+)x\d+x\d+x", ttgir)]
    spills = None
    tool = nvidia_bin("ptxas")
    if tool:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            run = subprocess.run([tool, f"-arch={ARCH}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                                 capture_output=True, text=True)
            spills = sum(ptxas_spills(run.stdout + run.stderr).values()) if run.returncode == 0 else -1
    epilogue = ptx[ptx.rfind("wgmma.wait_group"):] if "wgmma.wait_group" in ptx else ptx
    stores = re.findall(r"\bst\.global((?:\.[a-z0-9]+)*)", epilogue)
    return dict(
        wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
        buffers=min(depths) if depths else 0,
        loop_async_copies=len(filled) or len(re.findall(r"async_copy_global_to_local", loop)),
        loop_waits=[int(n) for n in re.findall(r"async_wait[^\n]*num = (\d+)", loop)],
        local=len(re.findall(r"\.local\b", ptx)),
        spill_bytes=spills,
        vector_stores=sum(1 for s in stores if ".v2" in s or ".v4" in s),
        scalar_stores=sum(1 for s in stores if ".v2" not in s and ".v4" not in s),
        shared=compiled.metadata.shared,
    )


def triton_gate_failures(name, r):
    """Gate messages for one compiled Triton GEMM-like kernel (from ``triton_report``)."""
    fails = []
    if not r["wgmma"]:
        fails.append(f"{name}: no wgmma.mma_async")
    if r["buffers"] < 3:
        fails.append(f"{name}: main-loop buffer depth {r['buffers']} < 3")
    if not r["loop_waits"] or max(r["loop_waits"]) < 1:
        fails.append(f"{name}: in-loop async_wait counts {r['loop_waits']} (need one >= 1: a load in flight)")
    if r["local"]:
        fails.append(f"{name}: {r['local']} .local references in the PTX")
    if r["spill_bytes"]:
        fails.append(f"{name}: {r['spill_bytes']} spill bytes (ptxas -v; -1: ptxas failed)")
    if not r["vector_stores"] or r["scalar_stores"]:
        fails.append(f"{name}: epilogue stores vector={r['vector_stores']} scalar={r['scalar_stores']}")
    if r["shared"] > 227 * 1024:
        fails.append(f"{name}: {r['shared']} B shared memory > 227 KiB (H100/H200 per-block limit)")
    return fails


if __name__ == "__main__":  # python tests/gpu_static/sm90.py csrc/cuda/x.cu ...: print the CUDA gate table
    for p in sys.argv[1:]:
        for k, rep in sorted(cuda_kernel_report(p).items()):
            s = rep["sass"]
            print(f"{os.path.basename(p)} {k[:90]:90s} spill={rep['spill_bytes']} HMMA={s['HMMA']} "
                  f"LDSM={s['LDSM']} HGMMA={s['HGMMA']} div64_loop={len(rep['div64_in_loops'])}")
