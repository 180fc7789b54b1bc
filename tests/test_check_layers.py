#!/usr/bin/env python3
"""scripts/check-layers.py catches what it must: a planted wrong-way include
and a planted wrong-way call each fail it, a right-way pair passes.
usage: test_check_layers.py CHECKER CC"""
import os
import subprocess
import sys
import tempfile

checker, cc = sys.argv[1:3]
failures = 0
checks = 0


def run(*args):
    p = subprocess.run([sys.executable, checker] + list(args), capture_output=True, text=True)
    return p.returncode, p.stdout


def expect(what, ok, detail=""):
    global failures, checks
    checks += 1
    print("%s: %s%s" % ("ok" if ok else "FAILED", what, "" if ok else "\n" + detail))
    failures += 0 if ok else 1


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "src")
    write(os.path.join(src, "runners/runner_impl.h"), "#include \"core/error_internal.h\"\n")
    write(os.path.join(src, "core/error_internal.h"), "#include \"loom/error.h\"\n")
    write(os.path.join(src, "include/loom/error.h"), "\n")
    rc, out = run(src)
    expect("a right-way include passes", rc == 0, out)

    write(os.path.join(src, "core/tensor.c"), "#include \"runners/runner_impl.h\"\n")
    rc, out = run(src)
    expect("core including runners/ fails", rc == 1 and "core/tensor.c includes runners/runner_impl.h" in out, out)
    os.remove(os.path.join(src, "core/tensor.c"))

    write(os.path.join(src, "models/relu.c"), "#include \"loom/callbacks.h\"\n")
    write(os.path.join(src, "include/loom/callbacks.h"), "\n")
    rc, out = run(src)
    expect("models including a callbacks public header fails", rc == 1 and "models/relu.c includes loom/callbacks.h" in out, out)
    os.remove(os.path.join(src, "models/relu.c"))

    write(os.path.join(src, "include/loom/unlisted.h"), "\n")
    rc, out = run(src)
    expect("a public header with no owner fails", rc == 1 and "unlisted.h" in out, out)
    os.remove(os.path.join(src, "include/loom/unlisted.h"))

    # Calls, read from objects laid out as CMake lays them out.
    build = os.path.join(tmp, "build")
    def obj(folder, name, code):
        d = os.path.join(build, folder, "CMakeFiles", "x.dir")
        os.makedirs(d, exist_ok=True)
        c = os.path.join(tmp, name + ".c")
        write(c, code)
        subprocess.run([cc, "-c", c, "-o", os.path.join(d, name + ".c.o")], check=True)
    obj("runners", "runner", "int loom_run(void) { return 1; }\n")
    obj("callbacks", "cb", "int loom_run(void); int loom_cb(void) { return loom_run(); }\n")
    rc, out = run(src, build)
    expect("callbacks calling runners passes", rc == 0, out)
    obj("core", "state", "int loom_cb(void); int loom_state(void) { return loom_cb(); }\n")
    rc, out = run(src, build)
    expect("core calling callbacks fails", rc == 1 and "calls loom_cb" in out, out)

print("%d passed, %d failed" % (checks - failures, failures))
sys.exit(1 if failures else 0)
