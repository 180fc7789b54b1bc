#!/usr/bin/env python3
"""loom's ONNX export, checked from the file alone: runs export_onnx_fixture
(an MLP and a small CNN with BatchNorm and pooling), loads each model with
python3-onnx, runs onnx.checker.check_model, rebuilds the graph in PyTorch
from the file's nodes and initializers, and compares its outputs on the
fixed inputs with loom's within 1e-5.

usage: check_onnx.py FIXTURE DIR   (exit 77: skipped, onnx or torch missing)"""
import math
import subprocess
import sys

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print("check_onnx: skipped: %s (install python3-onnx and python3-torch)" % e)
    sys.exit(77)


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run(model, x):
    """The graph's output for input x, each node by its PyTorch twin."""
    env = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    env[model.graph.input[0].name] = torch.from_numpy(x)
    for node in model.graph.node:
        a, ins = attrs(node), [env[n] for n in node.input]
        op = node.op_type
        if op == "Gemm":
            assert a.get("transB") == 1 and a.get("transA", 0) == 0
            y = ins[0] @ ins[1].T + (ins[2] if len(ins) > 2 else 0)
        elif op == "Flatten":
            y = torch.flatten(ins[0], start_dim=a.get("axis", 1))
        elif op == "Relu":
            y = F.relu(ins[0])
        elif op == "LeakyRelu":
            y = F.leaky_relu(ins[0], a["alpha"])
        elif op == "Tanh":
            y = torch.tanh(ins[0])
        elif op == "Sigmoid":
            y = torch.sigmoid(ins[0])
        elif op == "Identity":
            y = ins[0]
        elif op in ("Div", "Add", "Mul"):
            y = {"Div": torch.div, "Add": torch.add, "Mul": torch.mul}[op](ins[0], ins[1])
        elif op == "Erf":
            y = torch.erf(ins[0])
        elif op == "Unsqueeze":
            y = ins[0]
            for axis in sorted(ins[1].tolist()):
                y = y.unsqueeze(axis)
        elif op == "Conv":
            p = a["pads"]
            assert p[0] == p[2] and p[1] == p[3] and a.get("group", 1) == 1
            y = F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, stride=a["strides"], padding=(p[0], p[1]),
                         dilation=a["dilations"])
        elif op in ("MaxPool", "AveragePool"):
            p = a["pads"]
            assert p[0] == p[2] and p[1] == p[3]
            if op == "MaxPool":
                y = F.max_pool2d(ins[0], a["kernel_shape"], a["strides"], (p[0], p[1]))
            else:
                assert a.get("count_include_pad") == 1
                y = F.avg_pool2d(ins[0], a["kernel_shape"], a["strides"], (p[0], p[1]), count_include_pad=True)
        elif op == "GlobalAveragePool":
            y = ins[0].mean(dim=(2, 3), keepdim=True)
        elif op == "BatchNormalization":
            y = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], training=False, eps=a["epsilon"])
        else:
            raise SystemExit("check_onnx: no PyTorch twin for operator %s" % op)
        env[node.output[0]] = y
    return env[model.graph.output[0].name].numpy()


def check(directory, name):
    model = onnx.load("%s/%s.onnx" % (directory, name))
    onnx.checker.check_model(model, full_check=True)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert opset and opset[0] >= 13, opset
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.fromfile("%s/%s.in" % (directory, name), dtype=np.float32).reshape([-1] + dims)
    want = np.fromfile("%s/%s.out" % (directory, name), dtype=np.float32)
    got = run(model, x).reshape(-1)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float(np.max(np.abs(got - want)))
    print("check_onnx: %s: %d nodes, %d initializers, %d outputs, max |onnx - loom| = %.3g" %
          (name, len(model.graph.node), len(model.graph.initializer), want.size, err))
    assert err <= 1e-5 and math.isfinite(err), "%s: outputs differ by %g" % (name, err)


def main():
    fixture, directory = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", directory], check=True)
    rc = subprocess.run([fixture, directory]).returncode
    if rc == 77:
        print("check_onnx: skipped: loom was built without ONNX export")
        sys.exit(77)
    if rc != 0:
        sys.exit("check_onnx: the fixture failed (%d)" % rc)
    for name in ("mlp", "cnn"):
        check(directory, name)


if __name__ == "__main__":
    main()
