#!/usr/bin/env python3
"""The C samples of the docs compile against loom and do what the docs say
they do. Extracts each ```c block of README.md, docs/howto.md,
docs/predict-export.md and docs/callbacks.md into DIR, compiles
tests/docs/doc_samples.c (which includes them where they belong) against the
build's headers and libloom, and runs it in DIR.

usage: check_doc_samples.py SOURCE_DIR CC INCLUDE_DIR LIB_DIR DIR [CFLAG...]"""
import os
import re
import shutil
import subprocess
import sys


def blocks(path):
    """The ```c blocks of a Markdown file, their indentation removed."""
    text = open(path, encoding="utf-8").read()
    out = []
    for m in re.finditer(r"^([ \t]*)```c\n(.*?)^[ \t]*```", text, re.S | re.M):
        indent = m.group(1)
        out.append("".join(line[len(indent):] if line.startswith(indent) else line
                           for line in m.group(2).splitlines(True)))
    return out


def main():
    src, cc, include, lib, work = sys.argv[1:6]
    lib, flags = os.path.abspath(lib), sys.argv[6:]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    wanted = {"README.md": 1, "docs/howto.md": 3, "docs/predict-export.md": 1, "docs/callbacks.md": 1}
    for doc, count in wanted.items():
        found = blocks(os.path.join(src, doc))
        if len(found) != count:
            sys.exit("check_doc_samples: %s has %d C samples, doc_samples.c includes %d: update it" %
                     (doc, len(found), count))
        stem = os.path.splitext(os.path.basename(doc))[0].replace("-", "_")
        for i, b in enumerate(found):
            with open(os.path.join(work, "%s_%d.c" % (stem, i)), "w") as f:
                f.write(b)
    exe = os.path.join(work, "doc_samples")
    cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror"] + flags + ["-I", work, "-I", include,
           os.path.join(src, "tests/docs/doc_samples.c"), "-o", exe, "-L", lib, "-Wl,-rpath," + lib, "-lloom"]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    sys.exit(subprocess.run([exe], cwd=work).returncode)


if __name__ == "__main__":
    main()
