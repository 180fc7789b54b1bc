#!/usr/bin/env python3
"""The scaling model of docs/distributed.md: predicted step time and
efficiency of data-parallel training on p ranks, from measured numbers.

Inputs (the measured ones are read from the outputs of bench/run, or given
as options; the defaults are docs/distributed.md's measurement):
  the all-reduce's alpha and beta on this node   bench/run allreduce  (FIT line)
  each model's compute per step on one rank      bench/run dist       (STEP lines)
The networks' alpha and beta are assumptions (NETWORKS below).

Model, per optimizer step of one rank (weak scaling: the per-rank batch is
fixed, so a rank's compute T_c does not depend on p; the global batch is
p x per-rank batch):
  all-reduce of n bytes over p ranks, the faster of
    ring:               2(p-1)/p n beta + 2(p-1) alpha
    halving-doubling:   2(p-1)/p n beta + 2 log2(p) alpha   (Rabenseifner)
  as MPI libraries choose by size; loom's per-step stop/interrupt sync is one
  latency-bound collective (a 16-byte all-reduce, 2 log2(p) alpha on a
  tree: up and down).
  no overlap:  step = T_c + T_ar(n) + T_sync
  overlap:     the gradients in k equal buckets; backward (2/3 of T_c, as
               its FLOPs are twice the forward's) finishes bucket i at
               T_f + i T_b / k and bucket all-reduces run one after another
               from then on; step = the last one's end + T_sync.
  efficiency = T_c / step.
  buckets: the k (1..64) of the shortest overlapped step, the smallest k
  within 1% of it: more buckets hide more of the transfer behind backward,
  each costs the all-reduce's latency once more. The table gives k and the
  bucket size n / k; the latency-bound smallest useful bucket, whose
  latency term is 10% of its transfer term, is s = 10 L(p) / (2(p-1)/p beta).

Usage: scaling.py [--allreduce FILE] [--dist FILE] [--alpha-us A] [--beta-ns B]
                  [--step-ms MODEL=MS]...   (prints a Markdown table)
"""
import argparse
import math
import re

# Assumed networks: per-message latency (MPI over TCP on 10 GbE; RDMA on
# 100 Gb/s InfiniBand or RoCE) and the link's bytes per second.
NETWORKS = [("10 Gb/s", 20e-6, 10e9 / 8), ("100 Gb/s", 5e-6, 100e9 / 8)]
RANKS = [8, 64, 512]
# Measured here (docs/distributed.md, the medians of its runs): shared
# memory, 2 ranks; compute per step of one rank (per-rank batch 64, one
# core, time outside collectives).
DEFAULTS = {"alpha": 0.17e-6, "beta": 0.12e-9, "step_ms": {"mlp": 1.24, "cnn": 27.9}}
PARAMS = {"mlp": 235146, "cnn": 220330, "25M": 25_000_000}
BYTES_PER_PARAM = 4  # float32 gradients


def ring(n, p, alpha, beta):
    return 2 * (p - 1) / p * n * beta + 2 * (p - 1) * alpha


def halving_doubling(n, p, alpha, beta):
    return 2 * (p - 1) / p * n * beta + 2 * math.ceil(math.log2(p)) * alpha


def allreduce(n, p, alpha, beta):
    """Seconds of the faster all-reduce of n bytes on p ranks."""
    return min(ring(n, p, alpha, beta), halving_doubling(n, p, alpha, beta))


def min_bucket(p, alpha, beta):
    """The bucket whose latency term is 10% of its transfer term."""
    lat = min(2 * (p - 1), 2 * math.ceil(math.log2(p))) * alpha
    return 10 * lat / (2 * (p - 1) / p * beta)


def sync(p, alpha):
    """loom's per-step stop/interrupt decision: one tiny all-reduce (a tree up and down)."""
    return 2 * math.ceil(math.log2(p)) * alpha


def overlapped(t_c, n, k, p, alpha, beta):
    """The end of the last bucket's all-reduce, k buckets overlapping backward."""
    t_f, t_b = t_c / 3, 2 * t_c / 3
    t_bucket = allreduce(n / k, p, alpha, beta)
    end = 0.0
    for i in range(1, k + 1):
        end = max(end, t_f + i * t_b / k) + t_bucket
    return end


def best_buckets(t_c, n, p, alpha, beta):
    steps = {k: overlapped(t_c, n, k, p, alpha, beta) for k in range(1, 65)}
    best = min(steps.values())
    k = min(k for k, t in steps.items() if t <= best * 1.01)
    return k, steps[k]


def parse(path, pattern):
    with open(path) as f:
        return [m for m in (re.search(pattern, line) for line in f) if m]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--allreduce", help="output of bench/run allreduce (its FIT line)")
    ap.add_argument("--dist", help="output of bench/run dist (its STEP lines; the median per model)")
    ap.add_argument("--alpha-us", type=float)
    ap.add_argument("--beta-ns", type=float, help="ns per byte")
    ap.add_argument("--step-ms", action="append", default=[], help="MODEL=MS, compute per step of one rank")
    a = ap.parse_args()
    alpha, beta, step_ms = DEFAULTS["alpha"], DEFAULTS["beta"], dict(DEFAULTS["step_ms"])
    if a.allreduce:
        fit = parse(a.allreduce, r"^FIT alpha_us=(\S+) beta_ns_per_byte=(\S+)")[-1]
        alpha, beta = float(fit.group(1)) * 1e-6, float(fit.group(2)) * 1e-9
    if a.dist:
        found = {}
        for m in parse(a.dist, r"^STEP dist_(\S+) compute_ms=(\S+)"):
            found.setdefault(m.group(1), []).append(float(m.group(2)))
        step_ms.update({k: sorted(v)[len(v) // 2] for k, v in found.items()})
    alpha = a.alpha_us * 1e-6 if a.alpha_us is not None else alpha
    beta = a.beta_ns * 1e-9 if a.beta_ns is not None else beta
    for kv in a.step_ms:
        k, v = kv.split("=")
        step_ms[k] = float(v)
    # A dense 25M-parameter model: FLOPs per sample grow with the parameters
    # (6 per parameter, forward and backward), at the MLP's measured rate.
    step_ms["25M"] = step_ms["mlp"] * PARAMS["25M"] / PARAMS["mlp"]

    print(f"Measured on this node (shared memory, 2 ranks): alpha = {alpha * 1e6:.2f} us, "
          f"beta = {beta * 1e9:.3f} ns/B ({1 / beta / 1e9:.2f} GB/s).")
    n2 = PARAMS["mlp"] * BYTES_PER_PARAM
    print(f"Check: the MLP's gradient all-reduce on 2 local ranks, predicted "
          f"{allreduce(n2, 2, alpha, beta) * 1e6:.0f} us per step.")
    print("Compute per step of one rank (per-rank batch 64, one core): " +
          ", ".join(f"{k} {v:.2f} ms" for k, v in step_ms.items()) + " (25M: the MLP's rate, scaled by parameters).")
    print()
    print("| model | params | network | ranks | T_c ms | all-reduce ms, ring / halving-doubling | step ms, no overlap | "
          "eff | buckets: k x MB | step ms, overlap | eff |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in ("mlp", "cnn", "25M"):
        n = PARAMS[model] * BYTES_PER_PARAM
        t_c = step_ms[model] * 1e-3
        for net, n_alpha, bw in NETWORKS:
            n_beta = 1 / bw
            for p in RANKS:
                t_sync = sync(p, n_alpha)
                plain = t_c + allreduce(n, p, n_alpha, n_beta) + t_sync
                k, over = best_buckets(t_c, n, p, n_alpha, n_beta)
                over += t_sync
                print(f"| {model} | {PARAMS[model]:,} | {net}, alpha {n_alpha * 1e6:.0f} us | {p} | {t_c * 1e3:.2f} | "
                      f"{ring(n, p, n_alpha, n_beta) * 1e3:.2f} / {halving_doubling(n, p, n_alpha, n_beta) * 1e3:.2f} | "
                      f"{plain * 1e3:.2f} | {t_c / plain:.2f} | {k} x {n / k / 1e6:.2f} | {over * 1e3:.2f} | "
                      f"{t_c / over:.2f} |")
    print()
    print("Smallest useful bucket (latency 10% of transfer), MB: " + "; ".join(
        f"{net} p={p}: {min_bucket(p, n_alpha, 1 / bw) / 1e6:.2f}" for net, n_alpha, bw in NETWORKS for p in RANKS) + ".")

if __name__ == "__main__":
    main()
