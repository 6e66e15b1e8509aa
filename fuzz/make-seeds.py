#!/usr/bin/env python3
"""Makes the seed corpus of each fuzz target under fuzz/corpus/<target>/
from real files: LTX files of a litefs run (passed as arguments: a
directory holding *.ltx files), SQLite's own journal and WAL, a database,
request heads and the repository's configs. Run by hand to make the
seeds again; the corpus is kept in the repository and grown by the
fuzzers (scripts/fuzz.sh)."""

import os
import shutil
import sqlite3
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sqlite_files(tmp):
    """A database, a hot journal and a WAL, as SQLite writes them."""
    db = os.path.join(tmp, "seed.db")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA page_size=512")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(5):
        con.execute("INSERT INTO t(v) VALUES (randomblob(300))")
    put("import", "seed.db", open(db, "rb").read())
    # A journal in the middle of a transaction (a small cache spills).
    con.execute("PRAGMA cache_size=1")
    con.execute("BEGIN")
    con.execute("UPDATE t SET v = randomblob(310)")
    put("journal", "hot", open(db + "-journal", "rb").read())
    con.execute("ROLLBACK")
    con.execute("PRAGMA journal_mode=WAL")
    for i in range(3):
        con.execute("INSERT INTO t(v) VALUES (randomblob(200))")
    put("wal", "three-commits", open(db + "-wal", "rb").read())
    con.close()


def stream(ltx_files):
    """Frames as a primary sends them: LTX frames in order, a heartbeat,
    a deletion."""
    frames = b""
    for i, path in enumerate(ltx_files):
        data = open(path, "rb").read()
        put("ltx", os.path.basename(path), data)
        name = b"seed.db"
        frames += b"L" + struct.pack(">H", len(name)) + name
        frames += struct.pack(">Q", len(data)) + data
        put("stream", "frames-%d" % (i + 1), frames)
    put("stream", "heartbeat-delete", b"H" + b"D" + struct.pack(">H", 7) + b"seed.db")


def heads():
    put("http_head", "stream", b"POST /stream HTTP/1.1\r\nHost: n\r\nContent-Length: 12\r\n"
        b"Authorization: Bearer x\r\n\r\n")
    put("http_head", "info", b"GET /info HTTP/1.1\r\nHost: n\r\n\r\n")
    put("http_head", "import", b"POST /import?name=a%20b.db HTTP/1.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 4096\r\n\r\n")


def configs():
    for path in [os.path.join(ROOT, "litefs.yml")]:
        put("config", os.path.basename(path), open(path, "rb").read())
    put("config", "consul.yml", b"""fuse:
  dir: /litefs
data:
  dir: /var/lib/litefs
  retention: 10m
lease:
  type: consul
  candidate: ${FLY_REGION == "ord"}
  advertise-url: "http://${HOSTNAME}:20202"
  consul:
    url: "${FLY_CONSUL_URL}"
    key: "litefs/app"
    ttl: 10s
http:
  addr: ":20202"
exec:
  - cmd: "app -port 8080"
""")


def main():
    ltx_dir = sys.argv[1] if len(sys.argv) > 1 else None
    ltx_files = sorted(
        os.path.join(ltx_dir, f) for f in os.listdir(ltx_dir) if f.endswith(".ltx")
    ) if ltx_dir else []
    tmp = tempfile.mkdtemp()
    try:
        sqlite_files(tmp)
    finally:
        shutil.rmtree(tmp)
    stream(ltx_files[:4])
    heads()
    configs()


if __name__ == "__main__":
    main()
