#!/usr/bin/env python3
"""Scripted mutation testing: plant one small bug at a time in the library,
rebuild incrementally, run the fast test suite, and record which test (if
any) caught it (docs/reliability.md, "Mutation testing").

The mutants are in scripts/mutants.txt, one block each:

    [ID] path/to/file.c: what the mutant does
    - exact text of the original (must occur once in the file)
    + its replacement

Usage: scripts/mutate.py [--dir DIR] [--only ID,ID...] [--check] [--no-baseline]
  --check        only check that every mutant applies (its text occurs once)
  --only         run these mutants (default: all)
  --no-baseline  skip the run of the unmutated suite (it must pass)

The mutants are planted in a mirror of the working tree, DIR/src (default
DIR: build-mut/), brought up to date with the tree's files (tracked and
untracked, not ignored) at the start of each run, and built in DIR/build
(Release, tests on, LOOM_TEST_EXAMPLE_ACCURACY=OFF, no benchmarks): the
working tree is never touched, and edits made to it during a run do not
reach that run. After each mutant the file is restored from the original
(a copy is kept in DIR/original/ while a mutant is in place, and put back
first by the next run if one was killed).
Results: DIR/mutation-results.tsv (id, file, status, killing tests, seconds,
what) and a summary on stdout.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = TREE  # where mutants are planted: the mirror, once main() has made it

# Left out of every run, and why (docs/reliability.md lists them too):
# static checks of the sources and exports (a mutant changes neither
# includes nor exported names), packaging, the grid (grid/ is not mutated;
# its tests drive whole experiments through the CLI, 15 s), ONNX export
# (deploy/ is not mutated), the HDF5 conversion chain and the example
# config that needs its files (9 s; loaders/hdf5.c is not mutated), and the
# backend's thread/BLAS variants of the kernel tests (backends/ is not
# mutated; the single-configuration runs stay). test_crash_loop is left out
# because it fails now and then on the unmutated tree: a kill before the
# first checkpoint leaves metrics.jsonl, and the fresh restart (no
# --resume) is refused by the one-run-per-logdir rule; a kill it reports
# is not the mutant's. The MPI failure tests are left out for the same
# reason: test_mpi_failure_nan_stop failed on the unmutated tree (rank 1
# saw MPI_ERR_TRUNCATE instead of rank 0's error, under a loaded machine).
EXCLUDE = [
    "check_layers", "test_check_layers", "check_exports", "test_install",
    "test_grid$", "validate_grid_", "test_export_onnx",
    "test_hdf5_matches_idx", "convert_fashion_mnist", "check_config_fashion_mnist_hdf5",
    "_3_threads", "_1_thread", "_openblas", "test_notices_",
    "test_mpi_failure_", "test_crash_loop",
]
TEST_TIMEOUT = 90


def parse_mutants(path):
    mutants, cur = [], None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            m = re.match(r"^\[(\w+)\]\s+(\S+?):\s+(.*)$", line)
            if m:
                cur = {"id": m.group(1), "file": m.group(2), "what": m.group(3), "line": n}
                mutants.append(cur)
            elif line.startswith("- ") and cur is not None and "old" not in cur:
                cur["old"] = line[2:]
            elif line.startswith("+ ") and cur is not None and "new" not in cur:
                cur["new"] = line[2:]
            elif line == "+" and cur is not None and "new" not in cur:
                cur["new"] = ""
            else:
                sys.exit(f"{path}:{n}: cannot parse: {line}")
    ids = set()
    for m in mutants:
        if "old" not in m or "new" not in m:
            sys.exit(f"{path}:{m['line']}: mutant {m['id']} needs a '- old' and a '+ new' line")
        if m["id"] in ids:
            sys.exit(f"{path}:{m['line']}: duplicate mutant id {m['id']}")
        ids.add(m["id"])
    return mutants


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    # A plain write: the file's mtime moves forward, so make rebuilds its
    # object whether it now holds a mutant or the original again.
    with open(path, "w") as f:
        f.write(text)


def check_applies(mutants):
    bad = []
    for m in mutants:
        src = os.path.join(ROOT, m["file"])
        if not os.path.exists(src):
            bad.append(f"{m['id']}: no file {m['file']}")
            continue
        count = read(src).count(m["old"])
        if count != 1:
            bad.append(f"{m['id']}: '{m['old']}' occurs {count} times in {m['file']}")
    return bad


def run(cmd, cwd, timeout):
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")


def sync_mirror(mirror):
    """Copies the tree's files that differ into the mirror (a changed file
    gets a new mtime there, so only its objects rebuild) and removes files
    the tree no longer has."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=TREE,
                            stdout=subprocess.PIPE, check=True).stdout.decode().split("\0")
    want = {f for f in listed if f and os.path.isfile(os.path.join(TREE, f))}
    copied = 0
    for rel in sorted(want):
        src, dst = os.path.join(TREE, rel), os.path.join(mirror, rel)
        with open(src, "rb") as f:
            data = f.read()
        if os.path.exists(dst):
            with open(dst, "rb") as f:
                if f.read() == data:
                    continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
        copied += 1
    for dirpath, _, files in os.walk(mirror):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), mirror)
            if rel not in want:
                os.remove(os.path.join(dirpath, name))
    return copied


def configure(build):
    if os.path.exists(os.path.join(build, "CMakeCache.txt")):
        return
    rc, out = run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLOOM_BUILD_BENCH=OFF",
                   "-DLOOM_TEST_EXAMPLE_ACCURACY=OFF", "-DLOOM_BUILD_TESTS=ON"], ROOT, 600)
    if rc != 0:
        sys.exit("configure failed:\n" + out)


def build_tree(build):
    return run(["cmake", "--build", build, "-j2"], ROOT, 1200)


def run_tests(build):
    cmd = ["ctest", "-j2", "--timeout", str(TEST_TIMEOUT), "--stop-on-failure", "-E", "|".join(EXCLUDE)]
    rc, out = run(cmd, build, 1800)
    failed = re.findall(r"^\s*\d+ - (\S+) \(([^)]*)\)", out.split("The following tests FAILED:")[-1], re.M) \
        if "The following tests FAILED:" in out else []
    return rc, out, [f"{name} ({why})" if why != "Failed" else name for name, why in failed]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(TREE, "build-mut"))
    ap.add_argument("--mutants", default=os.path.join(TREE, "scripts", "mutants.txt"))
    ap.add_argument("--only", default="")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    a = ap.parse_args()

    mutants = parse_mutants(a.mutants)
    if a.only:
        wanted = set(a.only.split(","))
        mutants = [m for m in mutants if m["id"] in wanted]
    bad = check_applies(mutants)
    if bad:
        sys.exit("mutants that do not apply:\n  " + "\n  ".join(bad))
    if a.check:
        print(f"{len(mutants)} mutants apply")
        return

    global ROOT
    top = os.path.abspath(a.dir)
    ROOT, build, saved = os.path.join(top, "src"), os.path.join(top, "build"), os.path.join(top, "original")
    os.makedirs(ROOT, exist_ok=True)
    # A run killed mid-mutant left its copy: put the original back first.
    if os.path.isdir(saved):
        for dirpath, _, files in os.walk(saved):
            for name in files:
                keep = os.path.join(dirpath, name)
                rel = os.path.relpath(keep, saved)
                write(os.path.join(ROOT, rel), read(keep))
                print(f"restored {rel} from an interrupted run")
        shutil.rmtree(saved)
    print(f"mirror {ROOT}: {sync_mirror(ROOT)} files updated from {TREE}", flush=True)
    bad = check_applies(mutants)
    if bad:
        sys.exit("mutants that do not apply:\n  " + "\n  ".join(bad))

    current = {}

    def restore():
        for rel, text in list(current.items()):
            write(os.path.join(ROOT, rel), text)
            os.remove(os.path.join(saved, rel))
            del current[rel]

    def on_signal(sig, frame):
        restore()
        sys.exit(128 + sig)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    configure(build)
    rc, out = build_tree(build)
    if rc != 0:
        sys.exit("the unmutated tree does not build:\n" + out[-3000:])
    if not a.no_baseline:
        t0 = time.time()
        rc, out, failed = run_tests(build)
        if rc != 0:
            sys.exit("the unmutated suite fails (" + ", ".join(failed) + "):\n" + out[-3000:])
        print(f"baseline: the suite passes in {time.time() - t0:.0f} s", flush=True)

    results_path = os.path.join(top, "mutation-results.tsv")
    results = []
    with open(results_path, "w") as res:
        res.write("id\tfile\tstatus\tkilled_by\tseconds\twhat\n")
        for m in mutants:
            t0 = time.time()
            rel = m["file"]
            src = os.path.join(ROOT, rel)
            original = read(src)
            os.makedirs(os.path.dirname(os.path.join(saved, rel)), exist_ok=True)
            write(os.path.join(saved, rel), original)
            current[rel] = original
            try:
                write(src, original.replace(m["old"], m["new"], 1))
                rc, out = build_tree(build)
                if rc != 0:
                    status, killed = "compile-error", []
                else:
                    rc, out, killed = run_tests(build)
                    status = "killed" if rc != 0 else "survived"
                    if rc != 0 and not killed:
                        killed = ["ctest rc %d" % rc]
            finally:
                restore()
            secs = time.time() - t0
            results.append((m, status, killed))
            res.write(f"{m['id']}\t{rel}\t{status}\t{', '.join(killed)}\t{secs:.0f}\t{m['what']}\n")
            res.flush()
            print(f"{m['id']:6} {status:13} {secs:4.0f}s {rel}: {m['what']}"
                  + (f"  [{', '.join(killed)}]" if killed else ""), flush=True)
    # Leave the build dir holding the unmutated library, and no copies.
    build_tree(build)
    shutil.rmtree(saved, ignore_errors=True)

    counted = [r for r in results if r[1] != "compile-error"]
    killed = sum(1 for r in counted if r[1] == "killed")
    print(f"\n{killed} of {len(counted)} mutants killed ({100.0 * killed / max(1, len(counted)):.1f}%)"
          f"; {len(results) - len(counted)} did not compile; results in {results_path}")
    for m, status, _ in results:
        if status == "survived":
            print(f"  survived: {m['id']} {m['file']}: {m['what']}")


if __name__ == "__main__":
    main()
