#!/usr/bin/env python3
"""libloom exports exactly the functions its public headers declare (each
marked LOOM_API): an internal function that leaks out, or a public one that
is missing (unmarked, so hidden, or not defined), fails. usage: check_exports.py INCLUDE_DIR LIBLOOM_SO"""
import glob
import os
import re
import subprocess
import sys

DECL = re.compile(r"^(?:LOOM_API\s+)?(?!typedef|static|#|struct\b|enum\b|union\b)[A-Za-z_][^;{}()]*?\b(loom_[a-z0-9_]+)\(",
                  re.M)
include, lib = sys.argv[1:3]
declared = set()
for path in glob.glob(os.path.join(include, "loom", "*.h")):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    # every function declared at file scope, marked or not: an unmarked one is hidden, so missing
    declared |= set(m.group(1) for m in DECL.finditer(text))
nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
# f.resolver and f.avx2 are gcc's target_clones of a declared f: not names of their own.
exported = {parts[2].split(".")[0] for parts in (l.split() for l in nm.splitlines())
            if len(parts) == 3 and parts[1] in "TDBRVWi" and not parts[2].startswith("_")}
leaked = sorted(exported - declared)
missing = sorted(declared - exported)
for n in leaked:
    print("exported but not declared LOOM_API in a public header: %s" % n)
for n in missing:
    print("declared LOOM_API but not exported: %s" % n)
print("exports: %d declared, %d exported, %d leaked, %d missing" % (len(declared), len(exported), len(leaked), len(missing)))
print("%d passed, %d failed" % (int(not leaked) + int(not missing), int(bool(leaked)) + int(bool(missing))))
sys.exit(1 if leaked or missing or not declared else 0)
