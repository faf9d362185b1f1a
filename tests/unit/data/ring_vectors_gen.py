#!/usr/bin/python3
"""Writes the golden ring vectors (ring_vectors_*.tsv) next to this script.

An independent implementation of the placement in include/ring.h and
README.md "Ring algorithm", using python3-xxhash (Debian). test_ring.c checks
the C ring against these files, so the two implementations agree. Never
regenerate them to make a failing test pass: a changed line is a tenant that
moved to another cluster.
"""
import bisect
import os
import sys

import xxhash


def build(clusters, vnodes):
    """clusters: {name: weight}. Points sorted by (hash, name)."""
    pts = sorted((xxhash.xxh3_64_intdigest(f"{n}#{j}".encode()), n)
                 for n, w in clusters.items() for j in range(vnodes * w))
    return [h for h, _ in pts], [n for _, n in pts]


def place(ring, tenant):
    hashes, names = ring
    i = bisect.bisect_left(hashes, xxhash.xxh3_64_intdigest(tenant))
    return names[i % len(names)]  # past the last point: wrap to the first


TENANTS = [
    b"42", b"042", b"", b"0", b"1", b"7", b"10", b"99", b"100", b"1000", b"12345",
    b"99999", b"2147483647", b"4294967296", b"18446744073709551615", b"-1",
    b"acme", b"ACME", b"Acme Corp", b"globex", b"initech", b"umbrella",
    b"tenant-1", b"tenant-2", b"tenant_0000000001", b"org:17", b"alice@example.com",
    b"a", b"b", b"c", b"a#0", b"a#1", b"b#255", b"#", b"# not a comment", b" ",
    b" 42", b"42 ", b"3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    b"00000000-0000-0000-0000-000000000000", b"ffffffff-ffff-ffff-ffff-ffffffffffff",
    "café".encode(), "Zürich".encode(), "租户".encode(), "テナント".encode(), "🙂".encode(),
    b"\x00", b"\x00\x01\x02", b"\xff\xfe", b"tab\there", b"new\nline", b"cr\rlf",
    b"back\\slash", b"\x80abc", b"nul\x00inside", b"\x7f",
    b"x" * 255, b"x" * 256, b"tenant-" + b"0123456789" * 30, b"a" * 1000, b"0" * 64,
    b"z" * 4096,
]


def escape(t):
    """Bytes to one TSV field: \\\\ \\t \\n \\r \\xHH; valid printable UTF-8 stays literal."""
    try:
        s = t.decode()
        literal = all(c.isprintable() or c == " " for c in s)
    except UnicodeDecodeError:
        literal = False
    out = []
    for i, b in enumerate(t):
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == "\t":
            out.append("\\t")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif (i == 0 and c == "#") or b < 0x20 or b == 0x7f or (b >= 0x80 and not literal):
            out.append("\\x%02x" % b)
        else:
            out.append(None)  # literal byte
    res = bytearray()
    for b, e in zip(t, out):
        res += bytes([b]) if e is None else e.encode()
    return bytes(res)


TABLES = {
    "ring_vectors_ab.tsv": ({"a": 1, "b": 1}, 256),
    "ring_vectors_abc.tsv": ({"a": 1, "b": 1, "c": 2}, 256),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    assert len(set(TENANTS)) == len(TENANTS)
    for fname, (clusters, vnodes) in TABLES.items():
        ring = build(clusters, vnodes)
        desc = ", ".join(f"{n} (weight {w})" for n, w in clusters.items())
        with open(os.path.join(here, fname), "wb") as f:
            f.write(b"# Golden ring placements: TENANT<TAB>CLUSTER. A changed line is a tenant\n")
            f.write(b"# that moved to another cluster: do not regenerate to pass a test.\n")
            f.write(f"# vnodes = {vnodes}; clusters {desc}.\n".encode())
            f.write(b"# TENANT escapes: \\\\ \\t \\n \\r \\xHH; other bytes are literal.\n")
            f.write(b"# Written by ring_vectors_gen.py (python3-xxhash).\n")
            for t in TENANTS:
                f.write(escape(t) + b"\t" + place(ring, t).encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
