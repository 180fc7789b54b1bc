#!/usr/bin/env python3
"""The layering rule of docs/architecture.md, checked on includes and on calls:

    core <- backends/* <- models, loaders <- runners <- callbacks <- config <- grid, deploy, cli

A folder may include the headers of, and call, only itself and the folders to
its left. Public headers (include/loom/*.h) belong to the folder named in
PUBLIC below; a new public header must be added there.

usage: check-layers.py SOURCE_DIR [BUILD_DIR]
Includes are read from every .c/.h under SOURCE_DIR's library folders; with
BUILD_DIR, the undefined symbols of each folder's objects (nm) are matched
with the folder that defines them. Prints each wrong-way reference and exits 1
if there is any."""
import os
import re
import subprocess
import sys

RANK = {"core": 0, "backends": 1, "models": 2, "loaders": 2, "runners": 3,
        "callbacks": 4, "config": 5, "grid": 6, "deploy": 6, "cli": 6}
PUBLIC = {
    "api.h": "core", "error.h": "core", "backend.h": "core", "backend_cpu.h": "backends", "backend_cuda.h": "backends", "comm_mpi.h": "backends", "comm_nccl.h": "backends", "state.h": "core", "tensor.h": "core", "rng.h": "core",
    "metrics.h": "core", "comm.h": "core", "version.h": "core",
    "model.h": "models", "gradcheck.h": "models", "criterion.h": "models", "optimizer.h": "models",
    "scheduler.h": "models", "data.h": "loaders",
    "callback.h": "runners", "experiment.h": "runners", "runner.h": "runners", "runner_view.h": "runners",
    "callbacks.h": "callbacks", "config.h": "config", "registry.h": "config", "plugin.h": "config",
    "grid.h": "grid",
    "grid_results.h": "grid",
    "deploy.h": "deploy", "loom.h": "cli",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(rel):
    """The layer a path relative to the source dir belongs to, or None."""
    parts = rel.split(os.sep)
    if parts[0] == "include" and len(parts) == 3 and parts[1] == "loom":
        return PUBLIC.get(parts[2], "?")
    return parts[0] if parts[0] in RANK else None


def check_includes(src):
    bad = []
    for top in list(RANK) + ["include"]:
        for root, _, files in os.walk(os.path.join(src, top)):
            for f in files:
                if not f.endswith((".c", ".h", ".cu", ".cuh")):
                    continue
                path = os.path.join(root, f)
                rel = os.path.relpath(path, src)
                me = folder_of(rel)
                if me is None:
                    continue
                if me == "?":
                    bad.append("%s: public header missing from check-layers.py's PUBLIC" % rel)
                    continue
                for inc in INCLUDE.findall(open(path, errors="replace").read()):
                    target = "include/" + inc if inc.startswith("loom/") else inc
                    them = folder_of(target)
                    if them == "?":
                        bad.append("%s includes %s, a public header missing from PUBLIC" % (rel, inc))
                    elif them is not None and RANK[them] > RANK[me]:
                        bad.append("%s includes %s (%s is above %s)" % (rel, inc, them, me))
    return bad


def objects(build):
    """{object path: folder}, from CMake's layout build/<folder>/CMakeFiles/<target>.dir/*.o."""
    out = {}
    for root, _, files in os.walk(build):
        rel = os.path.relpath(root, build).split(os.sep)
        if "CMakeFiles" not in rel or rel[0] not in RANK:
            continue
        for f in files:
            if f.endswith(".o"):
                out[os.path.join(root, f)] = rel[0]
    return out


def check_symbols(build):
    objs = objects(build)
    defined, undefined = {}, {}
    for o, folder in objs.items():
        nm = subprocess.run(["nm", "-P", o], capture_output=True, text=True, check=True).stdout
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            if parts[1] in "TDBRVWC":
                defined.setdefault(parts[0], (folder, o))
            elif parts[1] == "U":
                undefined.setdefault(o, set()).add(parts[0])
    bad = []
    for o, names in sorted(undefined.items()):
        me = objs[o]
        for n in sorted(names):
            d = defined.get(n)
            if d and RANK[d[0]] > RANK[me]:
                bad.append("%s calls %s, defined in %s (%s is above %s)"
                           % (os.path.relpath(o, build), n, os.path.relpath(d[1], build), d[0], me))
    return bad, len(objs)


def main():
    if len(sys.argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    bad = check_includes(sys.argv[1])
    nobj = None
    if len(sys.argv) == 3:
        sym, nobj = check_symbols(sys.argv[2])
        bad += sym
    for b in bad:
        print(b)
    print("layers: %d wrong-way reference(s)%s" % (len(bad), "" if nobj is None else ", %d objects read" % nobj))
    if nobj == 0:
        print("layers: no objects found under %s: build first" % sys.argv[2])
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
