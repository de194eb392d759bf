"""The kernel mutation driver (benchmarks/kernel_mutation.py) mutates the bodies of @triton.jit functions and
nothing else: not plain functions, not a kernel's parameters or their tl.constexpr annotations."""

import ast

from benchmarks.kernel_mutation import kernel_mutants

SOURCE = """import triton
import triton.language as tl


def plain(a, b):
    return a + b


@triton.jit
def scaled(x, N, BLOCK: tl.constexpr = 4):
    y = x + 1
    return y * N
"""


def test_only_kernel_bodies_are_mutated():
    mutants = kernel_mutants(SOURCE)
    assert mutants
    assert {m.line for m in mutants} <= {11, 12}  # the body of `scaled`
    assert all(m.name.startswith("scaled__") for m in mutants)
    assert len({m.name for m in mutants}) == len(mutants)


def test_a_mutant_is_the_source_with_one_node_changed():
    mutants = {m.after: m for m in kernel_mutants(SOURCE)}
    assert mutants["x - 1"].code == SOURCE.replace("x + 1", "x - 1")
    assert mutants["y / N"].code == SOURCE.replace("y * N", "y / N")
    assert mutants["x - 1"].line == 11 and mutants["x - 1"].before == "x + 1"
    for m in mutants.values():  # each parses, and differs from the source
        ast.parse(m.code)
        assert m.code != SOURCE
