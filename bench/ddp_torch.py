"""PyTorch DistributedDataParallel twin of a 2-rank loom run (bench/run dist):
model_torch.py's models, data, optimizer and schedule, on WORLD processes
(torch.multiprocessing, gloo backend, MASTER_ADDR=127.0.0.1, no torchrun).

As in loom (docs/distributed.md), each rank trains on every WORLD-th sample
of the epoch's shared permutation with a per-rank batch of the model's batch
size / WORLD, so the global batch and the steps per epoch equal the
one-process run's; DDP averages the gradients (its own buckets, overlapped
with backward) before every Adam step.

Prints: TORCH_DDP epoch_s=<median over epochs of the slowest rank's train
seconds> rss_mb=<rank 0's peak RSS> valid_acc=<rank 0's, last epoch>
Threads: TORCH_THREADS per process (default 1), OPENBLAS_NUM_THREADS from
the environment.
Usage: ddp_torch.py MODEL [EPOCHS] [DATA_DIR] [WORLD]
"""
import os
import resource
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_torch import MODELS, cosine, load  # noqa: E402  (the one-process twin's definitions)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, name, epochs, root, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=5))
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    torch.set_flush_denormal(True)
    torch.manual_seed(0)  # DDP broadcasts rank 0's parameters anyway
    make, batch, shape, norm, sched = MODELS[name]
    per_rank = batch // world
    x, y = load(root, "train", shape, norm)
    vx, vy = load(root, "test", shape, norm)
    model = DistributedDataParallel(make())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine(*sched)) if sched else None
    loss_fn = nn.CrossEntropyLoss()
    times, acc = [], 0.0
    for epoch in range(epochs):
        model.train()
        # Every rank draws the same permutation and takes its stride of it.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))[rank::world]
        dist.barrier()
        start = time.perf_counter()
        for i in range(0, len(perm), per_rank):
            b = perm[i:i + per_rank]
            opt.zero_grad()
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
            opt.step()
            if scheduler:
                scheduler.step()
        seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the epoch ends with its slowest rank
        times.append(seconds.item())
        if rank == 0:
            model.eval()
            with torch.no_grad():
                correct = sum((model.module(vx[i:i + 128]).argmax(1) == vy[i:i + 128]).sum().item()
                              for i in range(0, len(vx), 128))
            acc = correct / len(vx)
        dist.barrier()
    if rank == 0:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        out.put(f"TORCH_DDP epoch_s={statistics.median(times):.4f} rss_mb={rss:.1f} valid_acc={acc:.4f} "
                f"world={world} per_rank_batch={per_rank}")


def main():
    name = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    root = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
    world = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    procs = mp.spawn(worker, args=(world, name, epochs, root, free_port(), out), nprocs=world, join=False)
    # Rank 0 reports after the last epoch's barrier, when every rank is done.
    # Gloo's teardown has been seen to leave a rank spinning once rank 0 has
    # gone (1 run in ~10 here), so the ranks get a minute to leave, then end.
    while out.empty():
        failed = [p.exitcode for p in procs.processes if p.exitcode not in (None, 0)]
        if failed:
            for p in procs.processes:
                p.terminate()
            sys.exit(f"ddp_torch: a rank failed (exit code {failed[0]})")
        time.sleep(0.1)
    print(out.get(), flush=True)
    for p in procs.processes:
        p.join(60)
        if p.is_alive():
            p.terminate()
            p.join()


if __name__ == "__main__":
    main()
