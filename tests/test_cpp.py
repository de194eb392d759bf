"""The C++ vision library (cpp/, CMakeLists.txt), checked without the TensorRT libraries or a GPU.

The compile checks need TensorRT's headers: set EARLYTOM_TRT_INCLUDE to a directory holding NvInfer.h, e.g.
    git -C TensorRT archive v11.1 include | tar -x -C /tmp/trt && EARLYTOM_TRT_INCLUDE=/tmp/trt/include pytest ...
The CUDA headers come from EARLYTOM_CUDA_INCLUDE, or else from the nvcc on PATH."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = ("cpp/earlytom_vision.cpp", "cpp/example.cpp")
# The same warnings CMakeLists.txt turns into errors for earlytom_vision_syntax.
WARNINGS = ("-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror")
needs_cmake = pytest.mark.skipif(not shutil.which("cmake"), reason="cmake is not installed")


def header_dir(variable: str, header: str) -> Path | None:
    """The directory in environment variable `variable`, refused unless it holds `header`; None if unset."""
    value = os.environ.get(variable)
    if value is None:
        return None
    if not (Path(value) / header).is_file():
        pytest.fail(f"{variable}={value} has no {header}; point it at the directory that holds {header}")
    return Path(value)


def trt_include() -> Path:
    found = header_dir("EARLYTOM_TRT_INCLUDE", "NvInfer.h")
    if found is None:
        pytest.skip("EARLYTOM_TRT_INCLUDE is not set: point it at TensorRT's include/ to compile cpp/ against it")
    return found


def cuda_include() -> Path:
    """EARLYTOM_CUDA_INCLUDE, or the include directory nvcc itself uses (its --dryrun INCLUDES)."""
    found = header_dir("EARLYTOM_CUDA_INCLUDE", "cuda_runtime_api.h")
    if found is not None:
        return found
    if not shutil.which("nvcc"):
        pytest.skip("no CUDA headers: set EARLYTOM_CUDA_INCLUDE or put nvcc on PATH")
    dry = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull], capture_output=True, text=True)
    for directory in re.findall(r'INCLUDES="-I([^"]+)"', dry.stderr):
        if (Path(directory) / "cuda_runtime_api.h").is_file():
            return Path(directory)
    pytest.skip(f"nvcc names no include directory with cuda_runtime_api.h: {dry.stderr.strip()[:300]}")


@pytest.mark.parametrize("source", SOURCES)
def test_source_compiles_against_tensorrt_headers_without_warnings(source):
    """cpp/ uses TensorRT's runtime API (IRuntime, enqueueV3, setTensorAddress, ...) as the headers declare it."""
    trt, cuda = trt_include(), cuda_include()
    compiler = os.environ.get("CXX", "g++")
    if not shutil.which(compiler):
        pytest.skip(f"no C++ compiler {compiler!r} on PATH")
    command = [compiler, "-std=c++17", "-fsyntax-only", *WARNINGS, "-I", "cpp", "-isystem", str(trt)]
    done = subprocess.run([*command, "-isystem", str(cuda), source], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@needs_cmake
def test_cmake_builds_the_syntax_target_from_headers_alone(tmp_path):
    """-DEARLYTOM_TRT_INCLUDE gives earlytom_vision_syntax: both sources compiled to objects, nothing linked."""
    trt = trt_include()
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DEARLYTOM_TRT_INCLUDE={trt}"], capture_output=True, text=True
    )
    assert configure.returncode == 0, configure.stderr
    if "the CUDA toolkit not found" in configure.stdout:
        pytest.skip("CMake finds no CUDA toolkit here (set CUDAToolkit_ROOT)")
    assert "earlytom_vision_syntax compiles cpp/" in configure.stdout
    build = subprocess.run(
        ["cmake", "--build", str(tmp_path), "--target", "earlytom_vision_syntax"], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout + build.stderr
    objects = sorted(p.name for p in tmp_path.rglob("*.o"))
    assert objects == ["earlytom_vision.cpp.o", "example.cpp.o"]


@needs_cmake
def test_cmake_configure_without_tensorrt_says_what_it_skips_and_succeeds(tmp_path):
    """Searches rooted in an empty directory: no TensorRT (and no CUDA) whatever this machine has."""
    empty = tmp_path / "empty"
    empty.mkdir()
    rooted = [f"-DCMAKE_FIND_ROOT_PATH={empty}"] + [
        f"-DCMAKE_FIND_ROOT_PATH_MODE_{kind}=ONLY" for kind in ("INCLUDE", "LIBRARY", "PACKAGE")
    ]
    done = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), *rooted], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "earlytom_vision: skipped" in done.stdout and "TensorRT's headers" in done.stdout


@needs_cmake
def test_cmake_refuses_a_trt_include_without_nvinfer(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DEARLYTOM_TRT_INCLUDE={empty}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert f"EARLYTOM_TRT_INCLUDE={empty} has no NvInfer.h" in " ".join(done.stderr.split())  # CMake wraps lines
