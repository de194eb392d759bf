"""ONNX Runtime sessions leave the cores to torch between graphs: the vision chain alternates a graph run with a
compression step in torch, and a session whose worker threads spin after a run takes a core from that step."""

import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from earlytom.engine.sessions import ort_session


def matmul_model(path, n: int) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "square", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_no_worker_thread_burns_cpu_after_a_run(tmp_path):
    """Two intra-op threads (one worker): in the 100 ms after each run the process uses under 10 ms of CPU. With
    ONNX Runtime's default (workers spin on after a run) the worker burned ~47 ms of each 100 ms here."""
    matmul_model(tmp_path / "square.onnx", 512)
    session = ort_session(tmp_path / "square.onnx", threads=2)
    x = np.ones((512, 512), np.float32)
    for _ in range(3):
        (y,) = session.run(None, {"x": x})
        start = time.process_time()
        time.sleep(0.1)
        assert (time.process_time() - start) * 1e3 < 10
    assert y[0, 0] == 512.0
