"""Export the vision chain's graphs (earlytom.engine.layout) and verify each before it is kept.

The frame axis is dynamic (1 .. max_frames). fp16 graphs are converted from the fp32 export with
LayerNormalization, Softmax and Resize kept in fp32 (SigLIP in plain fp16 loses accuracy). Weights go to
external data beside a graph when they are large.
"""

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxconverter_common import float16

from earlytom.dtypes import numpy_dtype
from earlytom.engine.layout import GraphSpec
from earlytom.engine.sessions import ort_session
from earlytom.engine.stretch import stretch_module
from earlytom.export.lint import lint_for_tensorrt

OPSET = 18
FP32_OPS = ["LayerNormalization", "Softmax", "Resize"]
EXTERNAL_DATA_BYTES = 64 << 20  # graphs with more initializer bytes keep their weights in <name>.onnx.data
MAX_REL_ERROR = {"fp32": 1e-4, "fp16": 2e-2}


class ExportError(RuntimeError):
    """An exported graph failed verification; nothing of it is kept."""


@dataclass(frozen=True)
class Verified:
    """A verified graph: its path (and external data, if any) and the max relative error per output."""

    path: Path
    max_rel_error: dict[str, float]

    @property
    def files(self) -> list[Path]:
        data = self.path.with_name(self.path.name + ".data")
        return [self.path, data] if data.exists() else [self.path]


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 graph (inputs and outputs too) with FP32_OPS computed in fp32 behind Casts."""
    return float16.convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS)


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write `model`, its weights to `<path>.data` when they exceed EXTERNAL_DATA_BYTES."""
    external = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, path, save_as_external_data=external, location=path.name + ".data", size_threshold=1024)


def export_graph(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    spec: GraphSpec,
    path: Path,
    *,
    dtype: str,
    max_frames: int,
) -> None:
    """torch.onnx (dynamo) export of `module` with a dynamic frame axis shared by every input, optimised
    (constant-folded), then converted to `dtype` and saved to `path`."""
    frames = torch.export.Dim("frames", min=1, max=max_frames)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), quiet():
        raw = Path(tmp) / "raw.onnx"
        program = torch.onnx.export(
            module,
            example,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=(tuple({0: frames} for _ in spec.inputs),),  # Stretch.forward(*inputs): one varargs
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        program.save(str(raw), external_data=True)
        model = onnx.load(raw)
        save(to_fp16(model) if dtype == "fp16" else model, path)


@contextlib.contextmanager
def quiet():
    """Silence the exporter's progress prints and warnings (build_engine shows its own progress)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to the largest |expected| (the output's scale)."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max() / scale)


def verify(path: Path, spec: GraphSpec, reference, inputs: list[tuple[torch.Tensor, ...]], dtype: str) -> Verified:
    """onnx.checker, the TensorRT lint, and ONNX Runtime vs `reference` (the eager module) on each input."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path.name} fails onnx.checker: {error}") from error
    problems = lint_for_tensorrt(onnx.load(path, load_external_data=False))
    if problems:
        raise ExportError(f"{path.name} would not parse in TensorRT:\n  " + "\n  ".join(problems))
    runner = ort_session(path)
    errors = dict.fromkeys(spec.outputs, 0.0)
    for x in inputs:
        with torch.inference_mode():
            expected = reference(*x)
        feed = {name: t.numpy().astype(numpy_dtype(dtype)) for name, t in zip(spec.inputs, x, strict=True)}
        actual = runner.run(list(spec.outputs), feed)
        for name, a, e in zip(spec.outputs, actual, expected, strict=True):
            if a.shape != tuple(e.shape):
                raise ExportError(f"{path.name}: {name} has shape {a.shape} in ONNX Runtime, {tuple(e.shape)} eager")
            errors[name] = max(errors[name], max_rel_error(a, e.float().numpy()))
    worst = max(errors.values())
    if worst > MAX_REL_ERROR[dtype]:
        raise ExportError(
            f"{path.name} ({dtype}) disagrees with the eager model: max relative error {worst:.2e} > "
            f"{MAX_REL_ERROR[dtype]:.0e} ({errors})"
        )
    return Verified(path, errors)


def vision_graphs(
    backbone: torch.nn.Module, chain: tuple[GraphSpec, ...], seed: int = 0
) -> list[tuple[torch.nn.Module, GraphSpec, list[tuple[torch.Tensor, ...]]]]:
    """(module, spec, inputs) for every graph of `chain` over `backbone` (earlytom.models.backbone): inputs[0] is
    the export example (2 units), the rest (3 units, 1 unit) are the verification inputs, so the dynamic frame axis
    is exercised. Each graph's inputs are the eager outputs of the one before (a tail's attention input is the
    attention of the graph before it, unmerged). Sample pixels are uniform in [-1, 1) in the backbone's unit
    shape."""
    unit_shape = backbone.dims.unit_shape
    g = torch.Generator().manual_seed(seed)
    values = [{"pixels": torch.rand(b, *unit_shape, generator=g) * 2 - 1} for b in (2, 3, 1)]
    graphs = []
    for spec in chain:
        module = stretch_module(backbone, spec).eval()  # a last graph may give the compared methods' inputs too
        inputs = [tuple(v[name] for name in spec.inputs) for v in values]
        graphs.append((module, spec, inputs))
        with torch.inference_mode():
            for v, x in zip(values, inputs, strict=True):
                v |= zip(spec.outputs, module(*x), strict=True)
    return graphs


def export_and_verify(
    module: torch.nn.Module,
    spec: GraphSpec,
    inputs: list[tuple[torch.Tensor, ...]],
    out_dir: Path,
    *,
    dtype: str = "fp32",
    max_frames: int = 32,
) -> Verified:
    """Export one graph into `out_dir` and verify it; a graph that fails is deleted and ExportError raised."""
    if dtype not in MAX_REL_ERROR:
        raise ValueError(f"dtype = {dtype!r}; choose fp32 or fp16")
    path = out_dir / spec.file
    export_graph(module, inputs[0], spec, path, dtype=dtype, max_frames=max_frames)
    try:
        return verify(path, spec, module, inputs[1:], dtype)
    except ExportError:
        for leftover in (path, path.with_name(path.name + ".data")):
            leftover.unlink(missing_ok=True)
        raise
