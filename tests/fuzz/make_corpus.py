#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (committed; run
again after changing an input format): small valid inputs made from the
test fixtures, and the inputs of the bugs fuzzing found before (issue 18),
named regress_*. Inputs libFuzzer finds later are added by hand (named
crash_<what>), never by this script."""
import gzip, json, os, re, struct, sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
configs = os.path.join(root, "tests", "configs")
out = os.path.join(root, "tests", "fuzz", "corpus")

def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def read(*p):
    with open(os.path.join(*p), "rb") as f:
        return f.read()

# --- config: the fixture, every golden bad config, the examples on the fixture's data
tiny = read(configs, "tiny.json")
put("config", "tiny", tiny)
inv = os.path.join(configs, "invalid")
for case in sorted(os.listdir(inv)):
    put("config", "invalid_" + case, read(inv, case, "config.json"))
ex = os.path.join(root, "examples", "configs")
for name in sorted(os.listdir(ex)):
    j = json.loads(read(ex, name))
    j["datasets"] = json.loads(tiny)["datasets"]
    j.pop("plugins", None)
    put("config", "example_" + name[:-5], json.dumps(j, indent=1))
# the fixture's model as a small ResNet: residual blocks, identity and projected
def conv(c, k, s=1, bias=False):
    return {"type": "conv2d", "out_channels": c, "kernel": k, "stride": s, "padding": k // 2, "bias": bias}
resnet = json.loads(tiny)
resnet["model"] = {"type": "sequential", "layers": [
    conv(4, 3), {"type": "batchnorm", "num_features": 4}, {"type": "relu"},
    {"type": "residual", "layers": [conv(4, 3), {"type": "batchnorm", "num_features": 4}, {"type": "relu"},
                                    conv(4, 3), {"type": "batchnorm", "num_features": 4}]},
    {"type": "residual", "name": "down", "layers": [conv(8, 3, 2), {"type": "batchnorm", "num_features": 8}],
     "shortcut": [conv(8, 1, 2), {"type": "batchnorm", "num_features": 8}], "activation": None},
    {"type": "global_avgpool"}, {"type": "linear", "out_features": 2}]}
resnet_text = json.dumps(resnet, indent=1).encode()
put("config", "residual_blocks", resnet_text)

# --- set: the golden --set cases, valid ones, and the use-after-free's keys
for case in sorted(os.listdir(inv)):
    if os.path.exists(os.path.join(inv, case, "set")):
        put("set", "invalid_" + case, read(inv, case, "set"))
for i, s in enumerate(["stages.train.num_epochs=1", "loaders.train.batch_size=3\nloaders.valid.batch_size=1",
                       "model.sizes[+]=2", "stages.train.optimizer.lr=0.5", "experiment.seed=\"7\"",
                       "stages.train.callbacks[+]={\"type\": \"early_stopping\"}", "model.sizes=[4, 2]",
                       "stages.train.num_epochs=2.5"]):
    put("set", "valid_%d" % i, s)
put("set", "regress_utf8_new_key", b"\xff.a=1")
put("set", "regress_utf8_second_key", b"experiment.\xfe\xff=1")

# --- idx: u16 split, images, labels
def idx_header(ndim, *dims):
    return bytes([0, 0, 8, ndim]) + b"".join(struct.pack(">I", d) for d in dims)

def idx_input(images, labels):
    return struct.pack("<H", len(images)) + images + labels

images, labels = read(configs, "data", "images.idx"), read(configs, "data", "labels.idx")
put("idx", "fixture", idx_input(images, labels))
put("idx", "fixture_gzip", idx_input(gzip.compress(images, mtime=0), gzip.compress(labels, mtime=0)))
put("idx", "regress_dims_overflow", idx_input(idx_header(3, 0xffffffff, 0xffffffff, 0xffffffff), labels))
put("idx", "regress_claims_8gib", idx_input(idx_header(3, 1 << 23, 32, 32), idx_header(1, 1 << 23)))
put("idx", "wrong_magic", idx_input(idx_header(2, 1, 2) + bytes(4), labels))
put("idx", "labels_as_images", idx_input(labels, labels))
put("idx", "length_mismatch", idx_input(idx_header(3, 3, 2, 2) + bytes(12), idx_header(1, 2) + bytes(2)))

# --- csv: flags byte (bit 0 header, the rest the target column, signed), text
def csv(header, target, text):
    return bytes([((target << 1) & 0xfe) | (1 if header else 0)]) + text.encode()
put("csv", "header_last", csv(True, -1, "a,b,label\n0.5,1,0\n1.5,-2,1\n3,4e-3,1\n"))
put("csv", "plain_first", csv(False, 0, "1,0.25,0.5\n0,1,2\n"))
put("csv", "nan_and_blank", csv(False, -1, "nan,1\n\n2,inf\n"))
put("csv", "ragged", csv(False, -1, "1,2,3\n4,5\n"))
put("csv", "empty", csv(True, -1, ""))
put("csv", "crlf_quoted", csv(True, 1, "\"x\",\"y\"\r\n1,2\r\n"))

# --- hdf5: options, count, per dataset (name, type, rank, dims, layout), bytes
U8, I16, F32, F64 = 0, 2, 8, 9
def ds(name, typ, dims, layout=0, extra=b""):
    return bytes([name, typ, len(dims)] + list(dims) + [layout]) + extra
pixels = bytes(range(0, 256, 8))
put("hdf5", "images_labels", bytes([0, 2]) + ds(0, U8, [4, 2, 2]) + ds(1, U8, [4]) + pixels)
put("hdf5", "floats_preload_two_files", bytes([3, 2]) + ds(0, F32, [3, 2]) + ds(1, F64, [3]) + pixels)
put("hdf5", "chunked_cache", bytes([0x14, 2]) + ds(0, I16, [8, 3], 1) + ds(1, U8, [8], 1) + pixels)
put("hdf5", "regress_declared_never_stored", bytes([0, 2]) + ds(0, F32, [4, 2], 2, bytes([10])) + ds(1, U8, [4]) + pixels)
put("hdf5", "labels_missing", bytes([0, 1]) + ds(0, U8, [4, 2]) + pixels)
put("hdf5", "scalar_images", bytes([0, 2]) + ds(0, U8, []) + ds(1, U8, [1]) + pixels)
put("hdf5", "attribute_not_dataset", bytes([0, 2]) + ds(0, U8, [2], 4) + ds(1, U8, [2]) + pixels)

# --- checkpoint: template, then edits (op, group, key, operands); the
# groups and keys of template 0 are listed by LOOM_FUZZ_LIST_KEYS=1 fuzz_replay_checkpoint
def u64(v):
    return struct.pack("<Q", v & 0xffffffffffffffff)
RUNNER, OPT, SCHED, ES, LOGGER = 1, 3, 4, 5, 6
put("checkpoint", "mid_train", bytes([0]))
put("checkpoint", "mid_valid", bytes([1]))
put("checkpoint", "epoch_end", bytes([2]))
# test_resume's test_tampered_values_are_refused, one file each
put("checkpoint", "regress_cursor_loader_5", bytes([0, 4, RUNNER, 12, 3]) + u64(5))
put("checkpoint", "regress_cursor_loader_minus_1", bytes([0, 4, RUNNER, 12, 3]) + u64(-1))
put("checkpoint", "regress_cursor_epoch_minus_1e9", bytes([0, 4, RUNNER, 12, 1]) + u64(-1000000000))
put("checkpoint", "regress_cursor_global_epoch", bytes([0, 4, RUNNER, 12, 5]) + u64(-3))
put("checkpoint", "regress_counter_negative", bytes([0, 4, RUNNER, 11, 0]) + u64(-5))
put("checkpoint", "regress_optimizer_steps_max", bytes([0, 0, OPT, 3]) + u64((1 << 63) - 1))
put("checkpoint", "regress_optimizer_nparams", bytes([0, 0, OPT, 2]) + u64(7))
put("checkpoint", "regress_optimizer_state_short", bytes([0, 3, OPT, 5, 3]) + bytes(12))
put("checkpoint", "regress_jsonl_bytes_negative", bytes([0, 0, LOGGER, 0]) + u64(-1))
put("checkpoint", "regress_jsonl_bytes_1tb", bytes([0, 0, LOGGER, 0]) + u64(1 << 40))
put("checkpoint", "regress_scheduler_seen_negative", bytes([0, 0, SCHED, 2]) + u64(-1))
put("checkpoint", "regress_scheduler_steps_negative", bytes([0, 0, SCHED, 3]) + u64(-(1 << 62)))
put("checkpoint", "regress_no_groups", bytes([0] + [6, 0] * 8))
put("checkpoint", "model_params_short", bytes([0, 3, 2, 3, 2]) + bytes(8))
put("checkpoint", "stage_name_other", bytes([0, 2, RUNNER, 8, 5]) + b"other")
put("checkpoint", "early_stopping_wait", bytes([2, 0, ES, 4]) + u64(1 << 40))

# --- dictionaries: every key the configs use, and the CSV reader's tokens
keys = set()
for text in [tiny] + [read(inv, c, "config.json") for c in os.listdir(inv) if c != "config_nested_10000_deep"] + \
            [read(ex, n) for n in os.listdir(ex)] + [resnet_text]:
    keys.update(re.findall(rb'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', text))
    keys.update(re.findall(rb'"type"\s*:\s*"([A-Za-z0-9_]+)"', text))
words = sorted(k.decode() for k in keys)
with open(os.path.join(root, "tests", "fuzz", "config.dict"), "w") as f:
    f.write("# Keys and type names of the test and example configs (make_corpus.py)\n")
    for w in words:
        f.write('"\\"%s\\""\n' % w)
    for t in ["{", "}", "[", "]", ":", ",", "true", "false", "null", "1e308", "-1", "0.5", "\\u0000", '"cuda:1"', '"cpu:0"']:
        f.write('"%s"\n' % t.replace("\\", "\\\\").replace('"', '\\"'))
with open(os.path.join(root, "tests", "fuzz", "set.dict"), "w") as f:
    f.write("# Keys of the test and example configs and --set's syntax (make_corpus.py)\n")
    for w in words:
        f.write('"%s"\n' % w)
    for t in ["=", "[+]=", ".", "[0]", "stages.train.", "loaders.train.", "model.", "\\\"", "{}", "[]", "1e999"]:
        f.write('"%s"\n' % t.replace('"', '\\"'))
with open(os.path.join(root, "tests", "fuzz", "csv.dict"), "w") as f:
    f.write("# Tokens of numeric CSV (make_corpus.py)\n")
    # libFuzzer's dictionaries escape with \\xNN (no \\n)
    for t in [",", "\\x0a", "\\x0d\\x0a", "nan", "inf", "-inf", "1e-45", "1e39", "0x1p3", "\\\"", "  ", "#"]:
        f.write('"%s"\n' % t)
