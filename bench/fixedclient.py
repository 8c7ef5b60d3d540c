#!/usr/bin/env python3
"""A fixed number of HTTP/1.1 GETs over keep-alive connections, one request
at a time per connection, for the instructions-per-request part of
`make bench` (bench/instructions.sh). Deterministic by design: the proxy
under callgrind sees the same sequence of reads and writes on every run.

    fixedclient.py --target 127.0.0.1:27200 --count 3000 [--connections 1]

Prints one JSON object: ok, errors, seconds. Exits 1 if any request failed.
Every socket operation has a timeout; the whole run is bounded by the caller.
"""

import argparse
import json
import socket
import sys
import threading
import time


def read_response(sock, buf):
    """Read one response; return (status, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked answers are not expected here")
    if length is None:
        raise ValueError("no content-length")
    while len(rest) < length:
        chunk = sock.recv(max(65536, length - len(rest)))
        if not chunk:
            raise ConnectionError("closed inside the body")
        rest += chunk
    return status, rest[length:]


def worker(target, count, path, timeout, out):
    host, port = target.rsplit(":", 1)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: fixedclient\r\n\r\n".encode()
    ok = errors = 0
    sock = None
    buf = b""
    for _ in range(count):
        try:
            if sock is None:
                sock = socket.create_connection((host, int(port)), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
            sock.sendall(req)
            status, buf = read_response(sock, buf)
            if status == 200:
                ok += 1
            else:
                errors += 1
        except (OSError, ValueError, IndexError):
            errors += 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    out.append((ok, errors))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    out = []
    per = [a.count // a.connections + (1 if i < a.count % a.connections else 0) for i in range(a.connections)]
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(a.target, n, a.path, a.timeout, out)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sum(o for o, _ in out)
    errors = sum(e for _, e in out)
    print(json.dumps({"ok": ok, "errors": errors, "seconds": round(time.monotonic() - t0, 3)}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
