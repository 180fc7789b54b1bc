"""PyTorch twin of bench/model.c: the same data, model, optimizer, schedule
and batch size as the loom side's config, on tensors held in memory (the
fastest way to feed PyTorch here).

Prints: TORCH epoch_s=<median train seconds> rss_mb=<peak RSS> valid_acc=<last>
Thread counts come from the caller: TORCH_THREADS, and OPENBLAS_NUM_THREADS
in the environment (read by OpenBLAS when torch loads it). TORCH_DEVICE
(default cpu; e.g. cuda) holds the model and the whole dataset on that
device, PyTorch's fastest feeding; epochs are timed after a synchronize.
Usage: model_torch.py MODEL [EPOCHS] [DATA_DIR]   (MODEL: mlp, linear32, cnn)
"""
import gzip
import ctypes
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


# name: (model, batch size, image shape, normalize (mean, std) or None, cosine (warmup, total) or None)
MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                  nn.Linear(128, 10)), 128, (784,), None, None),
    "linear32": (lambda: nn.Linear(784, 10), 32, (784,), None, None),
    "cnn": (cnn, 128, (1, 28, 28), (0.286, 0.353), (200, 7035)),
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
    x, y = (t.to(device) for t in load(root, "train", shape, norm))
    vx, vy = (t.to(device) for t in load(root, "test", shape, norm))
    model = make().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine(*sched)) if sched else None
    loss_fn = nn.CrossEntropyLoss()
    times, acc = [], 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
            opt.step()
            if scheduler:
                scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            correct = sum((model(vx[i:i + 128]).argmax(1) == vy[i:i + 128]).sum().item()
                          for i in range(0, len(vx), 128))
        acc = correct / len(vx)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"TORCH epoch_s={statistics.median(times):.4f} rss_mb={rss:.1f} valid_acc={acc:.4f} blas_core={blas_core()}")


if __name__ == "__main__":
    main()
