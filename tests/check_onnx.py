#!/usr/bin/env python3
"""loom's ONNX export, checked from the file alone: runs export_onnx_fixture
(an MLP and a small CNN with BatchNorm and pooling), loads each model with
python3-onnx, runs onnx.checker.check_model, rebuilds the graph from the
file's nodes and initializers, and compares its outputs on the fixed inputs
with loom's within 1e-5.

The graph is rebuilt twice when it can be: in numpy (float64), always, since
python3-onnx depends on python3-numpy, so the check runs wherever onnx is
installed (CI included); and in PyTorch (float32, each node by its torch
twin) when python3-torch is installed too. LOOM_CHECK_ONNX_TORCH=0 leaves
PyTorch out, as on a machine without it.

usage: check_onnx.py FIXTURE DIR   (exit 77: skipped, onnx or numpy missing)"""
import math
import os
import subprocess
import sys

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
except ImportError as e:
    print("check_onnx: skipped: %s (install python3-onnx)" % e)
    sys.exit(77)

torch = None
if os.environ.get("LOOM_CHECK_ONNX_TORCH", "1") != "0":
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def same_pads(a):
    """ONNX pads are [top, left, bottom, right]; loom pads symmetrically."""
    p = a.get("pads", [0, 0, 0, 0])
    assert p[0] == p[2] and p[1] == p[3], p
    assert a.get("ceil_mode", 0) == 0 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    return p[0], p[1]


def windows(x, kernel, strides, dilations, pads, fill):
    """x [N, C, H, W] padded with fill: a list over the kernel's positions of
    the strided views [N, C, OH, OW] each position reads, and the kernel
    index (ky, kx) of each."""
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[0]), (pads[1], pads[1])), constant_values=fill)
    oh = (x.shape[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    ow = (x.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    out = []
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilations[0], kx * dilations[1]
            out.append(((ky, kx), x[:, :, y0:y0 + strides[0] * (oh - 1) + 1:strides[0],
                                    x0:x0 + strides[1] * (ow - 1) + 1:strides[1]]))
    return out


def channel(v, ndim):
    """A per-channel vector [C] shaped to broadcast over [N, C, ...]."""
    return v.reshape([1, -1] + [1] * (ndim - 2))


def numpy_node(op, a, ins):
    """One node in numpy (float64), written from the ONNX operator spec."""
    if op == "Gemm":
        assert a.get("transB") == 1 and a.get("transA", 0) == 0
        assert a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0
        return ins[0] @ ins[1].T + (ins[2] if len(ins) > 2 else 0)
    if op == "Flatten":
        axis = a.get("axis", 1)
        return ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
    if op == "Relu":
        return np.maximum(ins[0], 0)
    if op == "LeakyRelu":
        return np.where(ins[0] >= 0, ins[0], a.get("alpha", 0.01) * ins[0])
    if op == "Tanh":
        return np.tanh(ins[0])
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-ins[0]))
    if op == "Identity":
        return ins[0]
    if op in ("Div", "Add", "Mul"):
        return {"Div": np.divide, "Add": np.add, "Mul": np.multiply}[op](ins[0], ins[1])
    if op == "Erf":
        return np.vectorize(math.erf)(ins[0])
    if op == "Unsqueeze":
        y = ins[0]
        for axis in sorted(int(v) for v in ins[1].tolist()):
            y = np.expand_dims(y, axis)
        return y
    if op == "Conv":
        assert a.get("group", 1) == 1
        w = ins[1]
        y = 0
        for (ky, kx), v in windows(ins[0], w.shape[2:], a.get("strides", [1, 1]), a.get("dilations", [1, 1]),
                                   same_pads(a), 0.0):
            y = y + np.einsum("nchw,oc->nohw", v, w[:, :, ky, kx])
        return y + (channel(ins[2], 4) if len(ins) > 2 else 0)
    if op in ("MaxPool", "AveragePool"):
        assert a.get("dilations", [1, 1]) == [1, 1]
        if op == "AveragePool":
            assert a.get("count_include_pad") == 1
        k = a["kernel_shape"]
        views = [v for _, v in windows(ins[0], k, a.get("strides", [1, 1]), [1, 1], same_pads(a),
                                       -np.inf if op == "MaxPool" else 0.0)]
        return np.max(views, axis=0) if op == "MaxPool" else np.sum(views, axis=0) / (k[0] * k[1])
    if op == "GlobalAveragePool":
        return ins[0].mean(axis=(2, 3), keepdims=True)
    if op == "BatchNormalization":
        x, scale, bias, mean, var = ins
        n = x.ndim
        return (x - channel(mean, n)) / np.sqrt(channel(var, n) + a.get("epsilon", 1e-5)) * channel(scale, n) + \
            channel(bias, n)
    raise SystemExit("check_onnx: no numpy twin for operator %s" % op)


def torch_node(op, a, ins):
    """One node by its PyTorch twin (float32)."""
    if op == "Gemm":
        assert a.get("transB") == 1 and a.get("transA", 0) == 0
        return ins[0] @ ins[1].T + (ins[2] if len(ins) > 2 else 0)
    if op == "Flatten":
        return torch.flatten(ins[0], start_dim=a.get("axis", 1))
    if op == "Relu":
        return F.relu(ins[0])
    if op == "LeakyRelu":
        return F.leaky_relu(ins[0], a["alpha"])
    if op == "Tanh":
        return torch.tanh(ins[0])
    if op == "Sigmoid":
        return torch.sigmoid(ins[0])
    if op == "Identity":
        return ins[0]
    if op in ("Div", "Add", "Mul"):
        return {"Div": torch.div, "Add": torch.add, "Mul": torch.mul}[op](ins[0], ins[1])
    if op == "Erf":
        return torch.erf(ins[0])
    if op == "Unsqueeze":
        y = ins[0]
        for axis in sorted(ins[1].tolist()):
            y = y.unsqueeze(axis)
        return y
    if op == "Conv":
        assert a.get("group", 1) == 1
        return F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, stride=a["strides"], padding=same_pads(a),
                        dilation=a["dilations"])
    if op == "MaxPool":
        return F.max_pool2d(ins[0], a["kernel_shape"], a["strides"], same_pads(a))
    if op == "AveragePool":
        assert a.get("count_include_pad") == 1
        return F.avg_pool2d(ins[0], a["kernel_shape"], a["strides"], same_pads(a), count_include_pad=True)
    if op == "GlobalAveragePool":
        return ins[0].mean(dim=(2, 3), keepdim=True)
    if op == "BatchNormalization":
        return F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], training=False, eps=a["epsilon"])
    raise SystemExit("check_onnx: no PyTorch twin for operator %s" % op)


def run(model, x, node_fn, to_tensor, to_numpy):
    """The graph's output for input x, each node computed by node_fn."""
    env = {i.name: to_tensor(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    env[model.graph.input[0].name] = to_tensor(x)
    for node in model.graph.node:
        env[node.output[0]] = node_fn(node.op_type, attrs(node), [env[n] for n in node.input])
    return to_numpy(env[model.graph.output[0].name])


def compare(name, how, got, want):
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    assert got.shape == want.shape, (how, got.shape, want.shape)
    err = float(np.max(np.abs(got - want)))
    print("check_onnx: %s: %s: max |onnx - loom| = %.3g" % (name, how, err))
    assert err <= 1e-5 and math.isfinite(err), "%s (%s): outputs differ by %g" % (name, how, err)


def check(directory, name):
    model = onnx.load("%s/%s.onnx" % (directory, name))
    onnx.checker.check_model(model, full_check=True)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert opset and opset[0] >= 13, opset
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.fromfile("%s/%s.in" % (directory, name), dtype=np.float32).reshape([-1] + dims)
    want = np.fromfile("%s/%s.out" % (directory, name), dtype=np.float32).astype(np.float64)
    print("check_onnx: %s: %d nodes, %d initializers, %d outputs" %
          (name, len(model.graph.node), len(model.graph.initializer), want.size))
    compare(name, "numpy", run(model, x.astype(np.float64), numpy_node,
                               lambda v: v.astype(np.float64) if v.dtype.kind == "f" else v, lambda v: v), want)
    if torch is not None:
        compare(name, "pytorch", run(model, x, torch_node, torch.from_numpy, lambda v: v.numpy()), want)


def main():
    fixture, directory = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", directory], check=True)
    rc = subprocess.run([fixture, directory]).returncode
    if rc == 77:
        print("check_onnx: skipped: loom was built without ONNX export")
        sys.exit(77)
    if rc != 0:
        sys.exit("check_onnx: the fixture failed (%d)" % rc)
    if torch is None:
        print("check_onnx: python3-torch is absent or left out: numpy only")
    for name in ("mlp", "cnn"):
        check(directory, name)


if __name__ == "__main__":
    main()
