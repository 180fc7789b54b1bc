#!/usr/bin/env python3
"""libloom exports exactly the functions its public headers declare (each
marked LOOM_API): an internal function that leaks out, or a public one that
is missing (unmarked, so hidden, or not defined), fails; so does a CUDA
library among what it links (its CUDA module loads them, on first use).
usage: check_exports.py INCLUDE_DIR LIBLOOM_SO

The CUDA module exports its one entry point and nothing else, and does not
link libloom (it gets libloom's functions in a table, backends/cuda/module.h).
usage: check_exports.py --module ENTRY MODULE_SO"""
import glob
import os
import re
import subprocess
import sys



def needed_names(lib):
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.*)\]", out)


def exported_names(lib):
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    # f.resolver and f.avx2 are gcc's target_clones of a declared f: not names of their own.
    return {parts[2].split(".")[0] for parts in (l.split() for l in nm.splitlines())
            if len(parts) == 3 and parts[1] in "TDBRVWi" and not parts[2].startswith("_")}


if sys.argv[1] == "--module":
    entry, lib = sys.argv[2:4]
    exported = exported_names(lib)
    needed = needed_names(lib)
    bad = ["exported besides %s: %s" % (entry, n) for n in sorted(exported - {entry})]
    bad += ["does not export %s" % entry] if entry not in exported else []
    bad += ["links libloom: %s" % n for n in needed if n.startswith("libloom")]
    for b in bad:
        print("%s: %s" % (os.path.basename(lib), b))
    print("module exports: %s; needs %s; %d problem(s)" % (" ".join(sorted(exported)), " ".join(needed), len(bad)))
    sys.exit(1 if bad else 0)

DECL = re.compile(r"^(?:LOOM_API\s+)?(?!typedef|static|#|struct\b|enum\b|union\b)[A-Za-z_][^;{}()]*?\b(loom_[a-z0-9_]+)\(",
                  re.M)
include, lib = sys.argv[1:3]
declared = set()
for path in glob.glob(os.path.join(include, "loom", "*.h")):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    # every function declared at file scope, marked or not: an unmarked one is hidden, so missing
    declared |= set(m.group(1) for m in DECL.finditer(text))
exported = exported_names(lib)
leaked = sorted(exported - declared)
missing = sorted(declared - exported)
cuda = [n for n in needed_names(lib) if re.match(r"lib(cuda|cublas|cudnn|nccl)", n)]
for n in cuda:
    print("links a CUDA library (the CUDA module's job): %s" % n)
for n in leaked:
    print("exported but not declared LOOM_API in a public header: %s" % n)
for n in missing:
    print("declared LOOM_API but not exported: %s" % n)
print("exports: %d declared, %d exported, %d leaked, %d missing" % (len(declared), len(exported), len(leaked), len(missing)))
checks = (leaked, missing, cuda)
print("%d passed, %d failed" % (sum(not c for c in checks), sum(bool(c) for c in checks)))
sys.exit(1 if leaked or missing or cuda or not declared else 0)
