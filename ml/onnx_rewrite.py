"""An exact rewrite of the VAE decoder's tail in an ONNX graph, for ONNX Runtime (numpy + onnx; no torch).

``ml.export`` applies ``rewrite_decoder_tail`` to every exported decoder; ``ml.bench`` maps the
rewritten weights back to the torch layout with ``tail_weights_from_phases``. The derivation:
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The decoder ends in ConvTranspose(4x4, stride 2, padding 1) -> activation -> Conv(3x3, padding 1) at
# full resolution. ONNX Runtime runs that ConvTranspose as a GEMM with a small inner dimension plus a
# col2im scatter, and a Conv with 3 output channels padded to 16-channel NCHWc blocks: the two layers
# took a third of the decoder's time for a sixth of its FLOPs. Both are rewritten in "phase space",
# the four interleaved half-resolution grids (a, c) of the full-resolution image, which ends up about
# 10% faster end to end (see the README's model section):
#
# - output pixel (2m + a, 2n + c) of the transposed convolution only sees input rows m - 1 + a + dy
#   and columns n - 1 + c + dx (dy, dx in {0, 1}), through kernel tap (3 - a - 2 dy, 3 - c - 2 dx):
#   four 2x2 convolutions, one per phase, concatenated phase-major (fast NCHWc convolutions);
# - the activation is elementwise, so the layout does not matter to it;
# - the 3x3 convolution becomes a 3x3 convolution over the phases at half resolution: from output
#   phase a', full-resolution offset dy lands in phase (a' + dy) mod 2 at half-resolution offset
#   floor((a' + dy) / 2); 4x the output channels, one block per output phase. It runs as the
#   equivalent stride-1 ConvTranspose, which ONNX Runtime computes as one GEMM without NCHWc padding;
# - DepthToSpace (DCR) interleaves the phases into the full-resolution image once, at the end.
#
# ``tail_weights_from_phases`` maps the rewritten weights back to the torch layout (``ml.bench``).

PHASE_SUFFIX = ".phase"  # + "<a><c>": the 2x2 kernel of phase (a, c) of a transposed convolution
PHASE_SPACE_SUFFIX = ".phase_space"  # the 3x3 convolution over the phases, as a stride-1 ConvTranspose
ELEMENTWISE = {"LeakyRelu", "Relu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus"}


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _plain(attrs: dict[str, Any], kernel: int, stride: int, pad: int) -> bool:
    return (
        list(attrs.get("kernel_shape", [])) == [kernel, kernel]
        and list(attrs.get("strides", [1, 1])) == [stride, stride]
        and list(attrs.get("pads", [0, 0, 0, 0])) == [pad] * 4
        and attrs.get("group", 1) == 1
        and list(attrs.get("dilations", [1, 1])) == [1, 1]
        and list(attrs.get("output_padding", [0, 0])) == [0, 0]
        and "output_shape" not in attrs
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def phase_kernels(weight: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """ConvTranspose(4x4, stride 2, pad 1) weight ``[Cin, C, 4, 4]`` -> per phase ``(a, c)`` the Conv
    weight ``[C, Cin, 2, 2]`` that computes output pixels ``(2m + a, 2n + c)``."""
    return {
        (a, c): np.ascontiguousarray(weight[:, :, [3 - a, 1 - a]][:, :, :, [3 - c, 1 - c]].transpose(1, 0, 2, 3))
        for a in (0, 1)
        for c in (0, 1)
    }


def phase_space_kernel(weight: np.ndarray) -> np.ndarray:
    """Conv(3x3, pad 1) weight ``[K, C, 3, 3]`` -> ``[4K, 4C, 3, 3]`` over phase-major channels."""
    k, c = weight.shape[:2]
    out = np.zeros((4 * k, 4 * c, 3, 3), weight.dtype)
    for ap in (0, 1):
        for cp in (0, 1):
            o = (ap * 2 + cp) * k
            for dy in (-1, 0, 1):
                a, e = (ap + dy) % 2, (ap + dy) // 2
                for dx in (-1, 0, 1):
                    col, f = (cp + dx) % 2, (cp + dx) // 2
                    i = (a * 2 + col) * c
                    out[o : o + k, i : i + c, e + 1, f + 1] = weight[:, :, dy + 1, dx + 1]
    return out


def conv_as_transpose(weight: np.ndarray) -> np.ndarray:
    """Conv weight ``[O, I, kh, kw]`` -> the stride-1 ConvTranspose weight ``[I, O, kh, kw]`` (flipped)."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def rewrite_decoder_tail(proto: Any) -> bool:
    """Apply the phase-space rewrite (above) to ``proto`` in place; False if the pattern is absent."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    for conv in graph.node:
        if conv.op_type != "Conv" or not _plain(_attributes(conv), 3, 1, 1) or conv.input[1] not in inits:
            continue
        act = producer.get(conv.input[0])
        if act is None or act.op_type not in ELEMENTWISE or len(act.input) != 1:
            continue
        up = producer.get(act.input[0])
        if up is None or up.op_type != "ConvTranspose" or not _plain(_attributes(up), 4, 2, 1):
            continue
        if up.input[1] not in inits or (len(up.input) > 2 and up.input[2] and up.input[2] not in inits):
            continue
        if any(consumers.get(n) != 1 or n in graph_outputs for n in (up.output[0], act.output[0])):
            continue
        break
    else:
        return False

    new_inits = []
    bias_name = up.input[2] if len(up.input) > 2 and up.input[2] else ""
    phase_inputs = []
    nodes = []
    for (a, c), kernel in phase_kernels(numpy_helper.to_array(inits[up.input[1]])).items():
        name = f"{up.input[1]}{PHASE_SUFFIX}{a}{c}"
        new_inits.append(numpy_helper.from_array(kernel, name))
        phase_inputs.append(f"{up.output[0]}{PHASE_SUFFIX}{a}{c}")
        inputs = [up.input[0], name, *([bias_name] if bias_name else [])]
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [phase_inputs[-1]],
                name=phase_inputs[-1],
                kernel_shape=[2, 2],
                pads=[1 - a, 1 - c, a, c],
            )
        )
    nodes.append(helper.make_node("Concat", phase_inputs, [up.output[0] + ".phases"], name=up.name + ".phases", axis=1))
    activation = helper.make_node(act.op_type, [up.output[0] + ".phases"], [act.output[0] + ".phases"], name=act.name)
    activation.attribute.extend(act.attribute)
    nodes.append(activation)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    inputs = [act.output[0] + ".phases", conv.input[1] + PHASE_SPACE_SUFFIX]
    new_inits.append(numpy_helper.from_array(conv_as_transpose(phase_space_kernel(weight)), inputs[-1]))
    if len(conv.input) > 2 and conv.input[2]:
        inputs.append(conv.input[2] + PHASE_SPACE_SUFFIX)
        new_inits.append(numpy_helper.from_array(np.tile(numpy_helper.to_array(inits[conv.input[2]]), 4), inputs[-1]))
    phased = conv.output[0] + ".phases"
    nodes.append(
        helper.make_node(
            "ConvTranspose",
            inputs,
            [phased],
            name=conv.name + PHASE_SPACE_SUFFIX,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )
    )
    nodes.append(
        helper.make_node(
            "DepthToSpace", [phased], [conv.output[0]], name=conv.name + ".interleave", blocksize=2, mode="DCR"
        )
    )
    index = list(graph.node).index(up)
    for old in (up, act, conv):
        graph.node.remove(old)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    replaced = {up.input[1], *conv.input[1:]}
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return True


def tail_weights_from_phases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo ``rewrite_decoder_tail`` on a ``{initializer name: array}`` map (torch layouts back)."""
    out: dict[str, np.ndarray] = {}
    phases: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for name, value in tensors.items():
        base, _, tag = name.rpartition(PHASE_SUFFIX)
        if base and len(tag) == 2 and tag.isdigit():
            phases.setdefault(base, {})[int(tag[0]), int(tag[1])] = value
        elif name.endswith(PHASE_SPACE_SUFFIX) and value.ndim == 4:
            full = conv_as_transpose(value)  # back to the Conv layout [4K, 4C, 3, 3]
            k, c = full.shape[0] // 4, full.shape[1] // 4
            weight = np.zeros((k, c, 3, 3), value.dtype)
            for dy in (-1, 0, 1):  # read output phase (0, 0), which uses every tap once
                a, e = dy % 2, dy // 2
                for dx in (-1, 0, 1):
                    col, f = dx % 2, dx // 2
                    weight[:, :, dy + 1, dx + 1] = full[:k, (a * 2 + col) * c : (a * 2 + col + 1) * c, e + 1, f + 1]
            out[name.removesuffix(PHASE_SPACE_SUFFIX)] = weight
        elif name.endswith(PHASE_SPACE_SUFFIX):
            out[name.removesuffix(PHASE_SPACE_SUFFIX)] = value[: len(value) // 4]
        else:
            out[name] = value
    for base, kernels in phases.items():
        c, cin = kernels[0, 0].shape[:2]
        weight = np.zeros((cin, c, 4, 4), kernels[0, 0].dtype)
        for (a, col), kernel in kernels.items():
            for dy in (0, 1):
                for dx in (0, 1):
                    weight[:, :, 3 - a - 2 * dy, 3 - col - 2 * dx] = kernel[:, :, dy, dx].T
        out[base] = weight
    return out
