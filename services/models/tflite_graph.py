"""Read a TensorFlow Lite flatbuffer into a TfliteGraph (operators + constant tensors), without
TensorFlow: the `tflite` package is the schema's generated reader.  A .tflite file holds data
only (no code), so reading one runs nothing from it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nodes.core.blazeface import GraphOp, TfliteGraph

# TensorType -> numpy dtype, for the types weights and shape operands use
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
_PADDING = {0: "SAME", 1: "VALID"}


def _operator_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {value: name for name, value in vars(BuiltinOperator).items() if not name.startswith("_")}


def _options(kind: str, table: Any) -> dict[str, Any]:
    """The few options the supported operators need, from the operator's options table."""
    import tflite

    def read(cls: type) -> Any:
        options = cls()
        options.Init(table.Bytes, table.Pos)
        return options

    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = read(tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)
        return {"padding": _PADDING[o.Padding()], "stride": (o.StrideH(), o.StrideW()),
                "dilation": (o.DilationHFactor(), o.DilationWFactor()), "activation": o.FusedActivationFunction()}
    if kind == "MAX_POOL_2D":
        o = read(tflite.Pool2DOptions)
        return {"padding": _PADDING[o.Padding()], "stride": (o.StrideH(), o.StrideW()),
                "filter": (o.FilterHeight(), o.FilterWidth())}
    if kind == "ADD":
        return {"activation": read(tflite.AddOptions).FusedActivationFunction()}
    if kind == "CONCATENATION":
        o = read(tflite.ConcatenationOptions)
        return {"axis": o.Axis(), "activation": o.FusedActivationFunction()}
    if kind == "RESIZE_BILINEAR":
        o = read(tflite.ResizeBilinearOptions)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    return {}


def read_tflite(path: str | Path) -> TfliteGraph:
    """The first subgraph of the file; float16 weights behind DEQUANTIZE operators become float32
    constants.  ValueError names the file and what is wrong with it."""
    import tflite

    path = Path(path)
    data = path.read_bytes()
    if data[4:8] != b"TFL3":
        raise ValueError(f"{path.name}: not a TensorFlow Lite file")
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = _operator_names()

    constants: dict[int, np.ndarray] = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, np.ndarray) and raw.size:  # an activation's buffer is empty
            if tensor.Type() not in _DTYPES:
                raise ValueError(f"{path.name}: tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
            shape = tuple(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            constants[index] = raw.view(_DTYPES[tensor.Type()]).reshape(shape).copy()

    ops = []
    for number in range(graph.OperatorsLength()):
        op = graph.Operators(number)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        inputs, outputs = tuple(int(i) for i in op.InputsAsNumpy()), tuple(int(i) for i in op.OutputsAsNumpy())
        if kind == "DEQUANTIZE" and inputs[0] in constants:
            constants[outputs[0]] = constants.pop(inputs[0]).astype(np.float32)  # fold: weights stored as float16
            continue
        options = _options(kind, op.BuiltinOptions()) if op.BuiltinOptions() else {}
        if kind == "RESHAPE":  # the output tensor's shape (the new-shape operand is optional)
            options["shape"] = tuple(int(v) for v in graph.Tensors(outputs[0]).ShapeAsNumpy())
        ops.append(GraphOp(kind, inputs, outputs, options))

    (source,) = graph.InputsAsNumpy()
    shape = tuple(graph.Tensors(int(source)).ShapeAsNumpy())
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"{path.name}: input shape {shape}, expected (1, size, size, 3)")
    return TfliteGraph(ops, constants, int(source), tuple(int(i) for i in graph.OutputsAsNumpy()), int(shape[1]))
