"""PyTorch twin of bench/model.c: the same data, model, optimizer, schedule
and batch size as the loom side's config, on tensors held in memory (the
fastest way to feed PyTorch here).

Prints: TORCH epoch_s=<median train seconds> rss_mb=<peak RSS> valid_acc=<last>
and, on CUDA, dev_mem_mb=<torch.cuda.max_memory_reserved: the most device
memory PyTorch's caching allocator held, in use plus cached>, which is what
bench/model.c's dev_mem_mb reports for loom.
Thread counts come from the caller: TORCH_THREADS, and OPENBLAS_NUM_THREADS
in the environment (read by OpenBLAS when torch loads it). TORCH_DEVICE
(default cpu; e.g. cuda) holds the model and the whole dataset on that
device, PyTorch's fastest feeding; epochs are timed after a synchronize.
TORCH_AMP=bf16 (or fp16, with torch's GradScaler) runs forward and loss
under torch.autocast, as loom's experiment.precision does.
Usage: model_torch.py MODEL [EPOCHS] [DATA_DIR]   (MODEL: mlp, linear32, cnn, resnet18)

resnet18 (bench/configs/resnet18.json's model) trains on the synthetic
images bench/model.c's "synthetic" dataset makes, made here alike bit for
bit (synthetic() below), with SGD as the config says; BENCH_RESNET_SAMPLES,
BENCH_RESNET_VALID and BENCH_RESNET_BATCH override the config's 10240
train samples, 1024 valid ones and batch 256 (bench/run passes the same to
both sides). It drops the last partial batch, as the config's loader does.
"""
import contextlib
import ctypes
import gzip
import math
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn


def idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def cnn():
    """examples/configs/fashion_mnist_cnn.json's model."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: loom's "residual" layer of the config."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))


def resnet18():
    """ResNet-18 for 32x32 inputs: a 3x3 stem of 64, no max pool, 4 stages
    of 2 BasicBlocks (64, 128, 256, 512; stride 2 and a 1x1 projection at
    stages 2-4), global average pooling, Linear to 10."""
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def mix(z):
    """SplitMix64's finaliser over uint64 arrays (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def draw(key, k):
    return mix(np.uint64(key) + (k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))


def synthetic(n, offset, classes=10, shape=(3, 32, 32), seed=0):
    """bench/model.c's "synthetic" dataset, the same floats."""
    size = int(np.prod(shape))
    j = np.arange(size, dtype=np.uint64)
    labels = (np.arange(offset, offset + n, dtype=np.uint64) % np.uint64(classes))
    templates = np.stack([draw(seed + 0x5DEECE66D, np.uint64(c * size) + j) >> np.uint64(63)
                          for c in range(classes)]).astype(np.uint8)
    x = np.empty((n, size), dtype=np.float32)
    with np.errstate(over="ignore"):
        for start in range(0, n, 512):
            i = np.arange(offset + start, offset + min(n, start + 512), dtype=np.uint64)
            noise = draw(seed, i[:, None] * np.uint64(size) + j[None, :]) >> np.uint64(58)
            b = noise.astype(np.uint8) + np.uint8(96) * templates[labels[start:start + len(i)]]
            x[start:start + len(i)] = b.astype(np.float32) * np.float32(1.0 / 255.0)
    return torch.from_numpy(x.reshape((n,) + tuple(shape))), torch.from_numpy(labels.astype(np.int64))


# name: (model, batch size, image shape, normalize (mean, std) or None, cosine (warmup, total) or None)
MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                  nn.Linear(128, 10)), 128, (784,), None, None),
    "linear32": (lambda: nn.Linear(784, 10), 32, (784,), None, None),
    "cnn": (cnn, 128, (1, 28, 28), (0.286, 0.353), (200, 7035)),
    "resnet18": (resnet18, int(os.environ.get("BENCH_RESNET_BATCH", "256")), (3, 32, 32), None, None),
}


def load(root, split, shape, norm):
    prefix = "train" if split == "train" else "t10k"
    x = idx(f"{root}/{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    if norm:
        x = (x - norm[0]) / norm[1]
    y = idx(f"{root}/{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(x.reshape((-1,) + shape)), torch.from_numpy(y)


def cosine(warmup, total):
    """loom's cosine schedule: linear warmup from 0, then cosine to 0."""
    return lambda t: t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup))))


def blas_core():
    """The kernel of the OpenBLAS that torch loaded (its Linear products)."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return "unknown"


def main():
    name = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    root = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
    make, batch, shape, norm, sched = MODELS[name]
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    # loom flushes denormals (FTZ/DAZ) while training; so does PyTorch here,
    # which makes it faster (about 15% on the MLP).
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    device = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))
    # Like for like with loom's fp32 (TF32 off unless asked): PyTorch lets
    # cuDNN's convolutions use TF32 by default; TORCH_TF32=1 allows it on
    # both its convolutions and its products, as loom's "tf32" option does.
    tf32 = os.environ.get("TORCH_TF32") == "1"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    synth = name == "resnet18"
    if synth:  # bench/configs/resnet18.json's data and optimizer
        x, y = (t.to(device) for t in synthetic(int(os.environ.get("BENCH_RESNET_SAMPLES", "10240")), 0))
        vx, vy = (t.to(device) for t in synthetic(int(os.environ.get("BENCH_RESNET_VALID", "1024")), 1000000))
    else:
        x, y = (t.to(device) for t in load(root, "train", shape, norm))
        vx, vy = (t.to(device) for t in load(root, "test", shape, norm))
    model = make().to(device)
    if synth:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine(*sched)) if sched else None
    loss_fn = nn.CrossEntropyLoss()
    amp = os.environ.get("TORCH_AMP", "")
    if amp not in ("", "bf16", "fp16"):
        sys.exit(f"model_torch.py: TORCH_AMP={amp}: bf16 or fp16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if amp else contextlib.nullcontext
    scaler = torch.cuda.amp.GradScaler() if amp == "fp16" else None
    times, acc, losses = [], 0.0, []
    last = len(x) - batch + 1 if synth else len(x)  # the config's drop_last
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x), device=device)
        for i in range(0, last, batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            with autocast():
                loss = loss_fn(model(x[b]), y[b])
            if scaler:  # fp16's loss scaling; else PyTorch's plain step, nothing added
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if synth and os.environ.get("BENCH_LOSSES"):
                losses.append(loss.item())
            if scheduler:
                scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if losses:
            print("TORCH_LOSSES " + " ".join(f"{v:.4f}" for v in losses), file=sys.stderr)
            losses = []
        model.eval()
        with torch.no_grad(), autocast():
            correct = sum((model(vx[i:i + 128]).argmax(1) == vy[i:i + 128]).sum().item()
                          for i in range(0, len(vx), 128))
        acc = correct / len(vx)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    steps = len(range(0, last, batch))
    dev_mem = f" dev_mem_mb={torch.cuda.max_memory_reserved(device) / 2**20:.1f}" if device.type == "cuda" else ""
    print(f"TORCH epoch_s={statistics.median(times):.4f} rss_mb={rss:.1f} valid_acc={acc:.4f} blas_core={blas_core()}"
          f" steps={steps}{dev_mem}" + (f" amp={amp}" if amp else ""))


if __name__ == "__main__":
    main()
