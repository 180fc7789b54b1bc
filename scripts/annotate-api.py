#!/usr/bin/env python3
"""Marks every function declared in include/loom/*.h with LOOM_API (the
library exports exactly those; tests/check_exports.py compares). Idempotent:
run it after adding declarations. usage: annotate-api.py [SOURCE_DIR]"""
import glob
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "."
DECL = re.compile(r"^(?!typedef|static|extern|LOOM_API|#|struct\b|enum\b|union\b)[A-Za-z_][^;{}()]*\bloom_[a-z0-9_]+\(")
for path in sorted(glob.glob(os.path.join(src, "include/loom/*.h"))):
    if path.endswith("/api.h"):
        continue
    lines = open(path).read().split("\n")
    out = ["LOOM_API " + l if DECL.match(l) else l for l in lines]
    text = "\n".join(out)
    if "LOOM_API" in text and '#include "loom/api.h"' not in text:
        # after the include guard's #define
        text = re.sub(r"(#define LOOM_[A-Z_]+_H\n)", r'\1\n#include "loom/api.h"\n', text, count=1)
    if text != "\n".join(lines):
        open(path, "w").write(text)
        print("annotated", os.path.relpath(path, src))
