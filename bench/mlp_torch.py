"""PyTorch twin of bench/mlp.c: same data, model, optimizer, batch size.

Prints: TORCH epoch_s=<median train seconds> rss_mb=<peak RSS> valid_acc=<last>
Thread counts come from the caller: TORCH_THREADS, and OPENBLAS_NUM_THREADS
in the environment (read by OpenBLAS when torch loads it).
Usage: mlp_torch.py [EPOCHS] [DATA_DIR]
"""
import gzip
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch


def idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    torch.manual_seed(0)
    x = torch.from_numpy(idx(f"{root}/train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0)
    y = torch.from_numpy(idx(f"{root}/train-labels-idx1-ubyte.gz").astype(np.int64))
    vx = torch.from_numpy(idx(f"{root}/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0)
    vy = torch.from_numpy(idx(f"{root}/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, acc = [], 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            correct = sum((model(vx[i:i + 128]).argmax(1) == vy[i:i + 128]).sum().item()
                          for i in range(0, len(vx), 128))
        acc = correct / len(vx)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"TORCH epoch_s={statistics.median(times):.4f} rss_mb={rss:.1f} valid_acc={acc:.4f}")


if __name__ == "__main__":
    main()
