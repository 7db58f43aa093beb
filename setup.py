"""Build sparsecl and its compiled extension ``sparsecl._C``.

Environment:
  SPARSECL_CUDA=0|1|auto   build the CUDA kernels (auto: when torch is a CUDA build and nvcc is found)
  TORCH_CUDA_ARCH_LIST     CUDA architectures, e.g. "8.0;9.0" (default here: "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (ninja)
  SPARSECL_SANITIZE=1      compile the C++ sources with ASan+UBSan (see `make asan`; pair with SPARSECL_CUDA=0)
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper; prefer the real toolkit.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _cuda_requested():
    flag = os.environ.get("SPARSECL_CUDA", "auto").strip().lower()
    if flag not in ("0", "1", "auto"):
        sys.exit(f"SPARSECL_CUDA must be 0, 1 or auto, got {flag!r}")
    nvcc = cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    available = torch.version.cuda is not None and bool(nvcc or shutil.which("nvcc"))
    if flag == "1" and not available:
        sys.exit("SPARSECL_CUDA=1 but torch is not a CUDA build or nvcc was not found")
    return flag != "0" and available


def _nvidia_include_dirs():
    """cusparse.h / cublas_v2.h live in the pip 'nvidia' wheels when the toolkit has cudart headers only."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += glob.glob(os.path.join(base, "cu*", "include")) + glob.glob(os.path.join(base, "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _extension():
    with_cuda = _cuda_requested()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-DNDEBUG"]
    link = ["-fopenmp"]
    if os.environ.get("SPARSECL_SANITIZE"):  # `make asan`: CPU-only ASan+UBSan build into build-asan/
        cxx += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
                "-O1", "-g"]
        link += ["-fsanitize=address,undefined"]
    define = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define.append(("SPARSECL_WITH_CUDA", None))
        define.append(("SPARSECL_CUDA_ARCHS", '"' + os.environ["TORCH_CUDA_ARCH_LIST"] + '"'))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG"]
        return cpp_extension.CUDAExtension(
            "sparsecl._C", sources, define_macros=define,
            include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_include_dirs(),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "sparsecl._C", sources, define_macros=define,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=link,
    )


setup(
    name="sparsecl",
    version="0.1.0",
    description="Sparse and width-sliced kernels for continual and controllable multi-task learning",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["sparsecl", "sparsecl.*"]) + ["sparsecl.kernels", "sparsecl.bench"],
    package_dir={"sparsecl": "sparsecl", "sparsecl.kernels": "kernels", "sparsecl.bench": "bench"},
    install_requires=["torch>=2.11,<2.15", "numpy", "tqdm", "pyyaml"],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis", "expecttest"]},
    package_data={"sparsecl.ops": ["schemas.def"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["sparsecl=sparsecl.cli:main"]},
    zip_safe=False,
)
