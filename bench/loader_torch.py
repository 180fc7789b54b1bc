"""PyTorch twin of bench/loader.c: a DataLoader (2 workers, batch 128,
shuffled) over Fashion-MNIST's training images, each sample costing a
~0.2 ms busy transform. Prints: TORCH_LOADER sps=<samples/s>
Usage: loader_torch.py [SAMPLES] [DATA_DIR] [ROUNDS]  (ROUNDS > 0: the affine
transform of bench/loader.c instead of the 0.2 ms spin)"""
import gzip
import sys
import time

import numpy as np
import torch


def idx(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Transformed(torch.utils.data.Dataset):
    """rounds == 0: spin 0.2 ms per sample; else `rounds` affine updates."""

    def __init__(self, images, labels, rounds):
        self.images, self.labels, self.rounds = images, labels, rounds

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)
        if self.rounds == 0:
            until = time.perf_counter() + 0.0002
            while time.perf_counter() < until:
                pass
        else:
            for _ in range(self.rounds):
                x.mul_(0.9999).add_(0.0001)
        return x, int(self.labels[i])


def main():
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    root = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.set_num_threads(1)
    ds = Transformed(idx(f"{root}/train-images-idx3-ubyte.gz"), idx(f"{root}/train-labels-idx1-ubyte.gz"), rounds)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=2)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    seen, start = 0, time.perf_counter()
    for x, _ in it:
        seen += len(x)
        if seen >= samples:
            break
    print(f"TORCH_LOADER sps={seen / (time.perf_counter() - start):.0f}")


if __name__ == "__main__":
    main()
