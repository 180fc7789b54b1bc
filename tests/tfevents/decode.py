#!/usr/bin/env python3
"""Decodes TensorBoard event files with Google's protobuf runtime, independently
of loom's hand-written encoder, and prints them as JSON for the C tests.

usage: decode.py PROTOC PROTO_DIR FILE...
Compiles PROTO_DIR/hparams_test.proto with PROTOC into a temporary directory,
then prints {"FILE": [event, ...], ...} where an event is
  {"step": N, "file_version": "brain.Event:2"} or
  {"step": N, "values": [{"tag": T, "simple_value": V} |
                         {"tag": T, "plugin": "hparams", "data": {...}}]}
with "data" the HParamsPluginData as protobuf's JSON mapping (field names as
in the .proto, enums by name). Exits 1 on a bad CRC, a truncated record, or
a message holding fields the schema does not know."""
import json
import os
import struct
import subprocess
import sys
import tempfile


def crc32c(data):
    """Bit by bit: an implementation unlike loom's table."""
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


def masked(c):
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            sys.exit("%s: truncated record header at %d" % (path, at))
        (n,) = struct.unpack_from("<Q", data, at)
        (len_crc,) = struct.unpack_from("<I", data, at + 8)
        if masked(crc32c(data[at:at + 8])) != len_crc:
            sys.exit("%s: bad length CRC at %d" % (path, at))
        body = data[at + 12:at + 12 + n]
        if len(body) != n or at + 16 + n > len(data):
            sys.exit("%s: truncated record at %d" % (path, at))
        (crc,) = struct.unpack_from("<I", data, at + 12 + n)
        if masked(crc32c(body)) != crc:
            sys.exit("%s: bad data CRC at %d" % (path, at))
        yield body
        at += 16 + n


def parse_exact(cls, raw, what):
    """Parses raw as cls and refuses unknown fields: a field number the schema
    does not have would otherwise pass silently."""
    m = cls()
    m.ParseFromString(raw)
    kept = len(m.SerializeToString())  # unknown fields are kept and written back
    m.DiscardUnknownFields()
    if len(m.SerializeToString()) != kept:
        sys.exit("%s: fields the schema does not know" % what)
    return m


def main():
    protoc, proto_dir, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    out_dir = tempfile.mkdtemp(prefix="loom-pb-")
    subprocess.check_call([protoc, "-I", proto_dir, "-I", "/usr/include", "--python_out", out_dir,
                           os.path.join(proto_dir, "hparams_test.proto")])
    sys.path.insert(0, out_dir)
    import hparams_test_pb2 as pb
    from google.protobuf import json_format

    result = {}
    for path in files:
        events = []
        for raw in records(path):
            e = parse_exact(pb.Event, raw, path)
            ev = {"step": e.step, "wall_time": e.wall_time}
            if e.WhichOneof("what") == "file_version":
                ev["file_version"] = e.file_version
            elif e.WhichOneof("what") == "summary":
                ev["values"] = []
                for v in e.summary.value:
                    item = {"tag": v.tag}
                    if v.WhichOneof("value") == "simple_value":
                        item["simple_value"] = v.simple_value
                    if v.HasField("metadata"):
                        item["plugin"] = v.metadata.plugin_data.plugin_name
                        data = parse_exact(pb.HParamsPluginData, v.metadata.plugin_data.content, path + ": " + v.tag)
                        item["version"] = data.version
                        item["data"] = json_format.MessageToDict(data, preserving_proto_field_name=True)
                    ev["values"].append(item)
            events.append(ev)
        result[path] = events
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
