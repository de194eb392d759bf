"""The Triton kernel tests need the interpreter, chosen before triton is imported. conftest.py sets
TRITON_INTERPRET=1 only when the variable is unset; when a user's environment says otherwise (TRITON_INTERPRET=0),
those modules skip, saying so, and this test runs them in a child process with TRITON_INTERPRET=1 instead."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_TESTS = ["test_triton_kernels.py", "test_official_kernels.py"]


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1: the kernel tests run in this process"
)
def test_kernel_tests_pass_under_the_interpreter_in_a_child_process():
    here = Path(__file__).parent
    env = os.environ | {"TRITON_INTERPRET": "1"}
    files = [str(here / name) for name in KERNEL_TESTS if (here / name).exists()]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert " skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]
