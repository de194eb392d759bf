"""Lint an ONNX graph against what TensorRT's ONNX parser accepts, without TensorRT.

Source of the operator list: onnx-tensorrt `docs/operators.md` (the support matrix, "Y" rows) and its
importer's restrictions, plus the operators the TensorRT 10/11 parser added that the matrix predates
(LayerNormalization from opset 17, Gelu from opset 20, GroupNormalization, HardSwish, Mish), as collected
in shared/reference/tensorrt-api-brief.md section 6. NonZero and Unique are unsupported or
data-dependent; Loop is rejected here too (its scan outputs cannot have dynamic length, and nothing in a
vision encoder needs it).
"""

import onnx

TENSORRT_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
    Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization GRU HardSigmoid
    HardSwish Identity If InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mish Mul Neg Not Or Pad Pow PRelu
    QuantizeLinear RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Where Xor
    """.split()
)

REJECTED_OPS = {
    "NonZero": "data-dependent output shape",
    "Unique": "unsupported by the parser",
    "Loop": "scan outputs cannot have a dynamic length",
}

# (op, input position) pairs that must be initializers or Constant outputs.
CONSTANT_INPUTS = {
    ("Slice", 3): "axes",
    ("Pad", 3): "axes",
    ("Squeeze", 1): "axes",
    ("Unsqueeze", 1): "axes",
    ("ReduceMean", 1): "axes",
    ("CumSum", 1): "axis",
    ("TopK", 1): "K",
}

RESIZE_MODES = {"nearest", "linear"}


def lint_for_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Problems TensorRT's ONNX parser would have with `model` (empty when none); custom-domain nodes
    (plugins) are skipped."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    problems = []
    for node in graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in REJECTED_OPS:
            problems.append(f"{where}: {node.op_type} is rejected ({REJECTED_OPS[node.op_type]})")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: {node.op_type} is not supported by TensorRT's ONNX parser")
        for position, name in enumerate(node.input):
            what = CONSTANT_INPUTS.get((node.op_type, position))
            if what and name and name not in constants:
                problems.append(f"{where}: its {what} input {name!r} must be an initializer or a Constant")
        if node.op_type == "Resize":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: Resize mode {mode!r} (TensorRT supports nearest and linear)")
            if any(a.name == "antialias" and a.i for a in node.attribute):
                problems.append(f"{where}: antialiased Resize is not supported by TensorRT")
    return problems
