"""The packaged int8 generator made fp32 at load time: the fastest exact form found for a CPU.

The packaged export was quantized by onnxruntime's dynamic quantizer: each of the
generator's convolutions and linear layers quantizes its input to uint8 at run time and
runs an integer kernel. On a CPU without VNNI that integer path is no faster than fp32,
and the quantization of activations costs time of its own. Measured on a 2-core AVX2
CPU, on the same 80- and 160-frame windows of real sentences, both voices (median of
12, alternated):

- the int8 generator as packaged: 1.00 (1.83 s per 80 frames there);
- the same weights dequantized to fp32: 0.96;
- and with every 1-D convolution written as a 2-D one over [N, C, 1, T]: **0.93**, because
  onnxruntime's blocked (NCHWc) CPU convolutions only take 2-D ones;
- the converted torch ``KModel``: 1.15; OpenVINO on the int8 graph 1.12, on the fp32 one
  1.02 (and 2.4 dB from the int8 audio: its float32 sines of large phases differ);
  onnxruntime session options (spinning, optimisation levels, saved optimised graph): none.

The fp32 generator's audio is 0.49 dB (log-mel, mean; 0.65 at most) from the int8
graph's on those windows, which is the run-to-run difference of the torch model itself.
The front end stays int8: dequantized it is not faster and moves some token durations.

Only the rewrite is new; every weight is the int8 one, ``W = (q - zero_point) * scale``.
It needs onnx and numpy, no torch, and takes about half a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import TYPE_CHECKING

import numpy as np
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    import onnx

INTEGER_OPS = ("ConvInteger", "MatMulInteger")


class NotDequantizable(ValueError):
    """The graph's quantized ops are not in the shape onnxruntime's dynamic quantizer
    makes; the caller keeps the graph as it is."""


def fp32_generator(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (the generator stage, modified in place) with its integer ops made fp32
    and its 1-D convolutions made 2-D; NotDequantizable when it cannot be done."""
    _dequantize(model)
    _convolutions_as_2d(model)
    _drop_dead(model)
    return model


def _dequantize(model: onnx.ModelProto) -> None:
    """Each ``DynamicQuantizeLinear(x) -> ConvInteger|MatMulInteger [-> Add(int32 bias)]
    -> Cast -> Mul(x_scale * w_scale)`` becomes one float Conv (with the float bias) or
    MatMul of ``x``, writing the Mul's output."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str) -> np.ndarray:
        if name not in initializers:
            raise NotDequantizable(f"{name} is not a constant")
        return numpy_helper.to_array(initializers[name]).astype(np.float32)

    def next_node(name: str, op_types: tuple[str, ...]) -> onnx.NodeProto:
        found = consumers.get(name, [])
        if len(found) != 1 or found[0].op_type not in op_types:
            raise NotDequantizable(
                f"{name} is read by {[node.op_type for node in found]}, not one {op_types}"
            )
        return found[0]

    replacements: dict[int, onnx.NodeProto] = {}
    dequantized: set[str] = set()  # a weight read by several ops is made once
    for index, node in enumerate(graph.node):
        if node.op_type not in INTEGER_OPS:
            continue
        quantizer = producer.get(node.input[0])
        if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
            raise NotDequantizable(f"{node.name}: its input is not quantized at run time")
        after = next_node(node.output[0], ("Add", "Cast"))
        bias = None
        if after.op_type == "Add":
            bias = _float_bias(producer, next(name for name in after.input if name != node.output[0]))
            after = next_node(after.output[0], ("Cast",))
        scale_mul = next_node(after.output[0], ("Mul",))
        scales = producer.get(scale_mul.input[1])
        weight_scales = [
            name for name in (scales.input if scales is not None else ()) if name in initializers
        ]
        if scales is None or scales.op_type != "Mul" or len(weight_scales) != 1:
            raise NotDequantizable(f"{node.name}: no weight scale")
        quantized, scale = constant(node.input[1]), constant(weight_scales[0])
        zero_point = constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.float32(0.0)
        if node.op_type == "ConvInteger":  # W [out, in/groups, k]; per tensor or per output channel
            per_channel = (-1,) + (1,) * (quantized.ndim - 1)
            weight = (quantized - zero_point.reshape(per_channel if zero_point.ndim else ())) * scale.reshape(
                per_channel if scale.ndim else ()
            )
            inputs = [quantizer.input[0], node.input[1] + "_fp32", *([bias] if bias else [])]
            replacement = helper.make_node("Conv", inputs, [scale_mul.output[0]], name=node.name + "_fp32")
            replacement.attribute.extend(node.attribute)
        else:  # B [in, out]; per tensor or per output column
            weight = (quantized - zero_point) * scale
            inputs = [quantizer.input[0], node.input[1] + "_fp32"]
            replacement = helper.make_node("MatMul", inputs, [scale_mul.output[0]], name=node.name + "_fp32")
        if node.input[1] not in dequantized:
            dequantized.add(node.input[1])
            graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), inputs[1]))
        replacements[index] = replacement
    if not replacements:
        return
    replaced = {node.output[0] for node in replacements.values()}
    nodes = [
        replacements.get(index, node)
        for index, node in enumerate(graph.node)
        if index in replacements or not (node.op_type == "Mul" and node.output[0] in replaced)
    ]
    del graph.node[:]
    graph.node.extend(nodes)


def _float_bias(producer: dict[str, onnx.NodeProto], int_bias: str) -> str:
    """The float bias behind the quantizer's ``Reshape <- Cast <- Floor <- Div(bias, scale)``."""
    node = producer.get(int_bias)
    for op_type in ("Reshape", "Cast", "Floor", "Div"):
        if node is None or node.op_type != op_type:
            raise NotDequantizable(f"the bias {int_bias} is not quantized as expected")
        if op_type == "Div":
            return str(node.input[0])
        node = producer.get(node.input[0])
    raise AssertionError("unreachable")


def _convolutions_as_2d(model: onnx.ModelProto) -> None:
    """Every Conv with a constant 1-D kernel becomes Unsqueeze -> 2-D Conv [1, k] -> Squeeze."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    axis = "krt_conv2d_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axis))
    kernels: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is None or len(weight.dims) != 3:
            nodes.append(node)
            continue
        if weight.name not in kernels:
            kernels[weight.name] = weight.name + "_2d"
            array = numpy_helper.to_array(weight)
            graph.initializer.append(numpy_helper.from_array(array[:, :, None, :], kernels[weight.name]))
        widened, narrowed = node.output[0] + "_4d_in", node.output[0] + "_4d_out"
        conv = helper.make_node(
            "Conv", [widened, kernels[weight.name], *node.input[2:]], [narrowed], name=node.name
        )
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            if attribute.name in ("kernel_shape", "strides", "dilations"):
                conv.attribute.append(helper.make_attribute(attribute.name, [1, *value]))
            elif attribute.name == "pads":
                conv.attribute.append(helper.make_attribute("pads", [0, value[0], 0, value[1]]))
            else:
                conv.attribute.append(attribute)
        nodes += [
            helper.make_node("Unsqueeze", [node.input[0], axis], [widened], name=node.name + "_unsqueeze"),
            conv,
            helper.make_node("Squeeze", [narrowed, axis], [node.output[0]], name=node.name + "_squeeze"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove the nodes and constants nothing reads any more (the quantizers, the int8 weights)."""
    graph = model.graph
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    live = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)
    info = [value for value in graph.value_info if value.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(info)


def return_freed_memory() -> None:
    """Hand the heap freed while building sessions back to the system (glibc only): the
    int8 and fp32 copies of the weights met there, and resident memory would stay ~250 MB
    higher for good."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory is reused, just not returned
