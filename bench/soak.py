#!/usr/bin/env python3
"""The driver of `make soak` (bench/soak.sh starts the LB and the farm, then this).

For --minutes, against ONE `roster lb` on loopback, all at once:

- steady traffic: --h1-rate req/s of HTTP/1.1 GETs over --h1-conns keep-alive
  connections (every 25th request closes its connection), and --h2-rate req/s
  of h2c GETs (prior knowledge, python-h2) over --h2-conns connections (each
  replaced every 3,000 streams); each paced (request i is due at
  start + i/rate), hosts mixed: the default service, `web.soak` (a route), and
  the hosts of the routes the reloads add and remove;
- registration churn: the core backends heartbeat every 10 s; every 20 s one
  of core-3..5 is deleted and comes back 2 s later under a new id, every
  other time on another address; every 1.5 s an ephemeral backend registers
  in service churn-0..2 (one in five in a service of its own) and is deleted
  5-25 s later, or (one in three) left to expire; one in ten has no listener
  at all (its checks fail until it leaves);
- faults on core-0..2, one at a time, 8 s every 15 s, in turn: the app answers
  500 (`x-soak-fault: 5xx`), the app resets connections, the vitals never
  answer, the vitals say `ready: false`;
- config reloads every 15 s: the --config file is rewritten atomically
  (write + rename) with one route added and one removed, and /routes must
  show the change within 5 s; every fourth time a bad file (a duplicate
  route) comes first, and /routes must report it refused within 5 s;
- a hang-up storm 30 s into every minute: --storm clients that hang up mid
  request (HTTP/1.1 GET of a 500 ms answer, a POST cut mid-body, a head cut
  mid-header, a request followed by an RST, and h2c streams of a slow answer).

Once a minute (and at the start) it samples the LB's VmRSS, open fds, threads
(roster exports no tokio task count) and the number of series in /telemetry,
to --out/samples.csv. At the end it writes --out/summary.json and
--out/report.md and exits 0 on PASS, 1 on FAIL.

PASS = every sampled quantity is flat AND no request failed outside the
injected faults:

- flat: warm-up is the first ceil(minutes/6) minutes (at least 1); B is the
  sample at its end; every sample of the last third of the run (at least the
  last one) must be <= B*(1+r) + a, with (r, a) = RSS (10 %, 8 MiB),
  fds (10 %, 32), threads (0, 4), series (10 %, 24); and with 6 or more
  samples after warm-up, the least-squares line through them may not climb by
  more than r*B + a over that span.
- failed requests: every steady request (h1 and h2c; the storm's are not
  counted) must get a 2xx, except an answer carrying `x-soak-fault` (a
  backend's own 500 passed through, as the LB must: it ejects such a backend
  after 3 in a row but does not replay an answer). A reset or a dead backend
  must never reach a client: the LB retries idempotent requests elsewhere.
  Any other status, a timeout (5 s), a reset or a close counts as a failure,
  by protocol and cause, with the faults active at that moment noted. So does
  a control call answered otherwise than expected (register 200/201,
  delete 204), a reload not visible in /routes within 5 s, a bad file not
  refused, and the LB exiting or panicking (its log is read at the end).

Standard library plus python-h2; loopback only; bounded: every network call
has a timeout and every loop ends at the deadline (a watchdog stops the rest).
"""

import argparse
import asyncio
import collections
import csv
import json
import math
import os
import random
import re
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

now = time.monotonic
TIMEOUT = 5.0
CORE, WEB, CHURN_POOL = 6, 3, 30  # backends: core-0..5, web-0..2, ephemeral addresses 9-38
SPARE = CORE + WEB + CHURN_POOL  # 39-41: where core-3..5 come back every other time
FLAT = {"rss_kb": (0.10, 8192), "fds": (0.10, 32), "threads": (0.0, 4), "series": (0.10, 24)}


def backend_ip(i):
    """benchfarm's generated address i."""
    return f"127.{10 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


class Soak:
    def __init__(self, a):
        self.a = a
        self.t0 = now()
        self.deadline = self.t0 + a.minutes * 60
        self.ok = collections.Counter()  # proto -> 2xx
        self.injected = collections.Counter()  # proto -> x-soak-fault answers
        self.failed = collections.Counter()  # (proto, cause) -> n
        self.failed_during = collections.Counter()  # (proto, cause, faults) -> n
        self.control = collections.Counter()  # what -> n
        self.control_failed = collections.Counter()
        self.storm = collections.Counter()
        self.events = collections.Counter()
        self.faults = {}  # core index -> mode, active now
        self.hosts = ["soak", "web.soak"]  # routed hosts to pick from
        self.first_errors = []
        self.samples = []
        self.stopping = False

    def alive(self):
        return not self.stopping and now() < self.deadline

    def fail(self, proto, cause, detail=""):
        self.failed[(proto, cause)] += 1
        during = ",".join(f"{m}@core-{i}" for i, m in sorted(self.faults.items())) or "none"
        self.failed_during[(proto, cause, during)] += 1
        if len(self.first_errors) < 20:
            self.first_errors.append(
                {"t": round(now() - self.t0, 2), "proto": proto, "cause": cause, "detail": detail[:200], "faults": during}
            )

    def outcome(self, proto, status, headers):
        if 200 <= status < 300:
            self.ok[proto] += 1
        elif "x-soak-fault" in headers:
            self.injected[proto] += 1
        else:
            self.fail(proto, f"status {status}", headers.get("x-soak-body", ""))


# ---------------------------------------------------------------- HTTP/1.1


async def read_response(reader, head_only=False):
    """One response: (status, lower-cased headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        body = await reader.read(1 << 20)
    return status, headers, body


async def call(port, method, path, body=None, host="127.0.0.1", timeout=TIMEOUT):
    """One request on a fresh connection to 127.0.0.1:port."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            data = b"" if body is None else body.encode()
            req = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            if body is not None:
                req += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            writer.write(req.encode() + b"\r\n" + data)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


async def h1_worker(s, n, rate, start):
    """One keep-alive connection, paced at `rate` req/s."""
    a = s.a
    reader = writer = None
    i = 0
    while s.alive():
        due = start + i / rate
        i += 1
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1:  # far behind (machine busy): skip, do not burst
            s.events["h1 skipped (client behind)"] += 1
            continue
        host = random.choice(s.hosts)
        close = i % 25 == 0
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.proxy), TIMEOUT)
                s.events["h1 connections"] += 1
            req = f"GET /h1/{n}/{i} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: soak\r\n"
            req += "Connection: close\r\n\r\n" if close else "\r\n"
            writer.write(req.encode())
            status, headers, body = await asyncio.wait_for(read_response(reader), TIMEOUT)
            if status >= 400:
                headers["x-soak-body"] = body[:120].decode("latin-1")
            s.outcome("h1", status, headers)
            close = close or headers.get("connection", "").lower() == "close"
        except asyncio.TimeoutError:
            s.fail("h1", "timeout")
            close = True
        except asyncio.IncompleteReadError as e:
            s.fail("h1", "closed before the whole answer", repr(e)[:120])
            close = True
        except (ConnectionError, OSError) as e:
            s.fail("h1", type(e).__name__, str(e))
            close = True
        except ValueError as e:
            s.fail("h1", "unparsable answer", str(e))
            close = True
        if close and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


# ---------------------------------------------------------------- h2c


class H2Conn:
    """A client HTTP/2 connection (prior knowledge) with streams as futures."""

    def __init__(self):
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.streams = {}  # id -> [future, status, headers]
        self.reader = self.writer = self.task = None
        self.dead = None

    async def open(self, port):
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        self.conn.initiate_connection()
        self.flush()
        self.task = asyncio.create_task(self.read_loop())

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def kill(self, why):
        self.dead = self.dead or why
        for fut, *_ in self.streams.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))
        self.streams.clear()

    async def read_loop(self):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return self.kill("closed by the LB")
                for ev in self.conn.receive_data(data):
                    self.event(ev)
                self.flush()
        except (ConnectionError, OSError, h2.exceptions.ProtocolError) as e:
            self.kill(f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            self.kill("cancelled")

    def event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived) and st:
            hdrs = dict(ev.headers)
            st[1], st[2] = int(hdrs.get(":status", 0)), hdrs
        elif isinstance(ev, h2.events.DataReceived):
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded) and st:
            del self.streams[ev.stream_id]
            if not st[0].done():
                st[0].set_result((st[1], st[2]))
        elif isinstance(ev, h2.events.StreamReset) and st:
            del self.streams[ev.stream_id]
            if not st[0].done():
                st[0].set_exception(ConnectionError(f"stream reset {ev.error_code!r}"))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.kill(f"GOAWAY {ev.error_code!r} last_stream={ev.last_stream_id}")

    def start(self, host, path):
        sid = self.conn.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.streams[sid] = [fut, 0, {}]
        hdrs = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host), ("user-agent", "soak")]
        self.conn.send_headers(sid, hdrs, end_stream=True)
        self.flush()
        return sid, fut

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


async def h2_request(s, c, host, path):
    try:
        sid, fut = c.start(host, path)
    except (h2.exceptions.ProtocolError, ConnectionError, OSError) as e:
        s.fail("h2c", "could not start a stream", repr(e))
        return
    try:
        status, headers = await asyncio.wait_for(fut, TIMEOUT)
        s.outcome("h2c", status, headers)
    except asyncio.TimeoutError:
        s.fail("h2c", "timeout")
        c.streams.pop(sid, None)
    except ConnectionError as e:
        s.fail("h2c", "stream reset" if "stream reset" in str(e) else "connection lost", str(e))


async def h2_worker(s, n, rate, start):
    """One h2c connection, open loop at `rate` streams/s; reopened if lost."""
    c, i, inflight = None, 0, set()
    while s.alive():
        due = start + i / rate
        i += 1
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1:
            s.events["h2c skipped (client behind)"] += 1
            continue
        if c is not None and i % 3000 == 0:  # a fresh connection now and then
            asyncio.get_running_loop().call_later(TIMEOUT + 1, c.close)
            c = None
        if c is None or c.dead:
            if c is not None:
                c.close()
            c = H2Conn()
            try:
                await c.open(s.a.proxy)
                s.events["h2c connections"] += 1
            except (OSError, asyncio.TimeoutError) as e:
                s.fail("h2c", "connect", repr(e))
                c = None
                continue
        t = asyncio.create_task(h2_request(s, c, random.choice(s.hosts), f"/h2/{n}/{i}"))
        inflight.add(t)
        t.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.wait(inflight, timeout=TIMEOUT + 1)
    if c is not None:
        c.close()


# ---------------------------------------------------------------- hang-ups


async def hang_up(s, kind, port):
    """One client that disconnects mid-request."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        if kind == "slow-get":
            writer.write(b"GET /slow HTTP/1.1\r\nHost: soak\r\n\r\n")
            await asyncio.sleep(0.1)
        elif kind == "cut-body":
            writer.write(b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30000)
            await writer.drain()
            await asyncio.sleep(0.05)
        elif kind == "cut-head":
            writer.write(b"GET / HTTP/1.1\r\nHost: soak\r\nX-Half: ")
            await asyncio.sleep(0.05)
        elif kind == "rst":
            writer.write(b"GET / HTTP/1.1\r\nHost: web.soak\r\n\r\n")
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif kind == "h2-slow":
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            for _ in range(3):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(
                    sid, [(":method", "GET"), (":path", "/slow"), (":scheme", "http"), (":authority", "soak")], end_stream=True
                )
            writer.write(conn.data_to_send())
            await writer.drain()
            await asyncio.sleep(0.1)
        await writer.drain()
    finally:
        writer.close()


async def storm(s):
    kinds = ["slow-get", "cut-body", "cut-head", "rst", "h2-slow"]
    sem = asyncio.Semaphore(50)

    async def one(k):
        async with sem:
            try:
                await hang_up(s, k, s.a.proxy)
                s.storm[k] += 1
            except (OSError, asyncio.TimeoutError, ConnectionError) as e:
                s.storm[f"{k} could not start: {type(e).__name__}"] += 1

    await asyncio.gather(*(one(kinds[i % len(kinds)]) for i in range(s.a.storm)))


async def storms(s):
    minute = 0
    while s.alive():
        at = s.t0 + minute * 60 + 30
        minute += 1
        if at > s.deadline - 10:
            break
        await asyncio.sleep(max(0, at - now()))
        await storm(s)
        s.events["storms"] += 1


# ---------------------------------------------------------------- control


async def control(s, what, method, path, body=None, want=(200, 201)):
    try:
        status, _, text = await call(s.a.control, method, path, body)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        s.control_failed[f"{what}: {type(e).__name__}"] += 1
        return None
    s.control[what] += 1
    if status not in want:
        s.control_failed[f"{what}: {status}"] += 1
        if len(s.first_errors) < 20:
            s.first_errors.append({"t": round(now() - s.t0, 2), "control": what, "status": status, "body": text[:200].decode("latin-1")})
    return status


def registration(id_, i, service=None, port=None):
    body = {"id": id_, "address": f"{backend_ip(i)}:{port}", "metrics_port": port + 1}
    if service:
        body["service"] = service
    return json.dumps(body)


def stable_fleet(a):
    fleet = {f"core-{i}": registration(f"core-{i}", i, port=a.app) for i in range(CORE)}
    fleet.update({f"web-{j}": registration(f"web-{j}", CORE + j, "web", a.app) for j in range(WEB)})
    return fleet


async def fill(s, stable):
    """Register the stable fleet and wait (30 s at most) until all of it routes."""
    for body in stable.values():
        await control(s, "register", "POST", "/register", body, want=(201,))
    t = now()
    while now() - t < 30:
        try:
            _, _, core = await call(s.a.control, "GET", "/backends")
            _, _, web = await call(s.a.control, "GET", "/backends?service=web")
            if len(json.loads(core)) == CORE and len(json.loads(web)) == WEB:
                return True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        await asyncio.sleep(0.2)
    return False


async def churn(s, stable):
    """Heartbeats, core churn and ephemeral backends."""
    a = s.a
    ephemeral = {}  # id -> (end time, fate, service)
    gen = collections.Counter()
    next_hb, next_core = now() + 10, now() + 20
    core_turn = n = 0
    while s.alive():
        t = now()
        if t >= next_hb:
            next_hb = t + 10
            for body in list(stable.values()):
                await control(s, "heartbeat", "POST", "/register", body)
        if t >= next_core:  # one of core-3..5 leaves and comes back under a new id
            next_core = t + 20
            i = 3 + core_turn % 3
            core_turn += 1
            old = next(k for k in stable if k == f"core-{i}" or k.startswith(f"core-{i}-"))
            await control(s, "core delete", "DELETE", f"/register/{old}", want=(204,))
            del stable[old]
            await asyncio.sleep(2)
            gen[i] += 1
            new = f"core-{i}-{gen[i]}"
            # Every other comeback is on a spare address (39-41): the old
            # address's upstream connections and series must go.
            stable[new] = registration(new, i if gen[i] % 2 == 0 else SPARE + i - 3, port=a.app)
            await control(s, "core register", "POST", "/register", stable[new], want=(201,))
        n += 1
        ghost = n % 10 == 0  # an address with no listener: checks fail until it leaves
        idx = CORE + WEB + (n % CHURN_POOL) if not ghost else 1000 + n % 100
        eid = f"eph-{n}"
        fate = "delete" if n % 3 else "expire"
        # One in five in a service of its own, gone with it: per-service
        # series must not pile up.
        svc = f"tmp-{n}" if n % 5 == 0 else f"churn-{n % 3}"
        if await control(s, "ephemeral register", "POST", "/register", registration(eid, idx, svc, a.app), want=(201,)) == 201:
            ephemeral[eid] = (now() + random.uniform(5, 25), fate, svc)
        for eid, (end, fate, svc) in list(ephemeral.items()):
            if fate == "delete" and now() >= end:
                await control(s, "ephemeral delete", "DELETE", f"/register/{eid}?service={svc}", want=(204,))
                del ephemeral[eid]
            elif fate == "expire":
                del ephemeral[eid]  # never renewed: the lease ends it
                s.events["ephemeral left to expire"] += 1
        await asyncio.sleep(1.5)


# ---------------------------------------------------------------- faults


async def faults(s):
    modes = ["5xx", "reset", "dead", "notready"]
    k = 0
    while s.alive() and now() + 10 < s.deadline:
        mode, i = modes[k % len(modes)], k % 3
        k += 1
        path = f"/flip?first={i}&count=1" if mode == "notready" else f"/fault?first={i}&count=1&mode={mode}"
        try:
            await call(s.a.farm, "POST", path)
            s.faults[i] = mode
            s.events[f"fault {mode}"] += 1
            await asyncio.sleep(8)
        finally:
            s.faults.pop(i, None)
            await call(s.a.farm, "POST", "/reset" if mode == "notready" else f"/fault?first={i}&count=1&mode=ok")
        await asyncio.sleep(7)


# ---------------------------------------------------------------- reloads


def write_config(path, window, bad=False):
    lines = ["# written by bench/soak.py; reloaded by the LB", "routes:", "  - {name: web, host: web.soak, service: web}"]
    lines += [f"  - {{name: r{j}, host: r{j}.soak, service: web}}" for j in window]
    if bad:  # the same host twice: the LB must refuse the file and keep its routes
        lines.append(f"  - {{name: dup, host: r{window[0]}.soak, service: web}}")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)  # atomic: the LB never reads a half-written file


async def refused(s, window):
    """Write a bad file; the LB must say so in /routes within 5 s."""
    write_config(s.a.config, window, bad=True)
    t = now()
    while now() - t < 5:
        await asyncio.sleep(0.2)
        try:
            _, _, body = await call(s.a.control, "GET", "/routes")
            if json.loads(body).get("last_reload_error"):
                s.events["bad files refused"] += 1
                return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
    s.control_failed["bad file not refused in /routes within 5 s"] += 1


async def reloads(s):
    v = 0
    while s.alive():
        await asyncio.sleep(15)
        if not s.alive():
            break
        v += 1
        if v % 4 == 0:
            await refused(s, [(v - 1 + d) % 10 for d in range(3)])
        window = [(v + d) % 10 for d in range(3)]
        gone = (v - 1) % 10
        write_config(s.a.config, window)
        t = now()
        seen = False
        while now() - t < 5:
            try:
                _, _, body = await call(s.a.control, "GET", "/routes")
                text = body.decode()
                if all(f'"r{j}.soak"' in text for j in window) and f'"r{gone}.soak"' not in text:
                    seen = True
                    break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.2)
        if seen:
            s.events["reloads applied"] += 1
            s.hosts = ["soak", "web.soak"] + [f"r{j}.soak" for j in window]
        else:
            s.control_failed["reload not seen in /routes within 5 s"] += 1


# ---------------------------------------------------------------- sampling


def fd_kinds(pid, a):
    """The LB's fds by what they are: client connections (proxy and control
    ports), upstream connections (to the app port), checks (to the vitals
    port), and the rest (listeners, epoll, pipes, files, other sockets)."""
    sockets = {}
    kinds = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            sockets[link[8:-1]] = "rest"
        else:
            kinds["rest"] += 1
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            col = row.split()
            inode = col[9]
            if inode not in sockets or col[3] == "0A":  # 0A: a listener
                continue
            lport, rport = int(col[1].rsplit(":", 1)[1], 16), int(col[2].rsplit(":", 1)[1], 16)
            if lport in (a.proxy, a.control):
                sockets[inode] = "clients"
            elif rport == a.app:
                sockets[inode] = "upstream"
            elif rport == a.app + 1:
                sockets[inode] = "checks"
    kinds.update(sockets.values())
    return {f"fd_{k}": kinds[k] for k in ("clients", "upstream", "checks", "rest")}


async def sample(s, minute):
    pid = s.a.lb_pid
    row = {"minute": minute, "t": round(now() - s.t0, 1)}
    try:
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
        row["rss_kb"] = int(st["VmRSS"].split()[0])
        row["threads"] = int(st["Threads"])
        row["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        row.update(fd_kinds(pid, s.a))
    except OSError:
        s.control_failed["the LB process is gone"] += 1
        s.stopping = True
        return
    try:
        _, _, body = await call(s.a.control, "GET", "/telemetry", timeout=10)
        lines = [x for x in body.decode().splitlines() if x and not x.startswith("#")]
        row["series"] = len(lines)
        row["open_conns"] = int(sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("roster_lb_open_connections")))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        s.control_failed[f"telemetry: {type(e).__name__}"] += 1
        row["series"] = row["open_conns"] = -1
    row["ok"] = sum(s.ok.values())
    row["injected"] = sum(s.injected.values())
    row["failed"] = sum(s.failed.values())
    s.samples.append(row)
    print(f"[soak {row['t']:6.0f}s] " + " ".join(f"{k}={v}" for k, v in row.items() if k != "t"), file=sys.stderr, flush=True)


async def sampler(s):
    for minute in range(s.a.minutes + 1):
        await asyncio.sleep(max(0, s.t0 + minute * 60 - now()))
        if s.stopping:
            return
        await sample(s, minute)


# ---------------------------------------------------------------- verdict


def slope(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def flatness(samples, minutes):
    warm = max(1, math.ceil(minutes / 6))
    last = max(1, len(samples) // 3)
    out = {}
    base_row = next((r for r in samples if r["minute"] == warm), samples[-1] if samples else None)
    for q, (r, add) in FLAT.items():
        if base_row is None or base_row.get(q, -1) < 0:
            out[q] = {"flat": False, "why": "no sample"}
            continue
        b = base_row[q]
        limit = b * (1 + r) + add
        tail = [row[q] for row in samples[-last:]]
        post = [row for row in samples if row["minute"] >= warm]
        climb = None
        if len(post) >= 6:
            xs = [row["minute"] for row in post]
            climb = slope(xs, [row[q] for row in post]) * (xs[-1] - xs[0])
        ok = max(tail) <= limit and (climb is None or climb <= limit - b)
        out[q] = {"flat": ok, "warmup_end": b, "limit": round(limit, 1), "last_third_max": max(tail),
                  "fitted_climb": None if climb is None else round(climb, 1), "start": samples[0][q], "end": samples[-1][q]}
    return warm, out


COUNTERS = {  # metric -> label to group by (None: one sum)
    "roster_lb_retries_total": None,
    "roster_lb_ejections_total": None,
    "roster_lb_upstream_connect_failures_total": None,
    "roster_lb_no_backend_total": None,
    "roster_lb_config_reloads_total": "result",
    "roster_lb_requests_total": "code_class",
    "roster_lb_connections_shed_total": "reason",
    "roster_lb_registrations_total": None,
    "roster_lb_deregistrations_total": None,
}


def counters(text):
    """Selected LB counters from a /telemetry scrape, summed per label value."""
    out = collections.Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        if name not in COUNTERS:
            continue
        key = name.removeprefix("roster_lb_")
        if COUNTERS[name]:
            m = [kv.split("=", 1)[1].strip('"') for kv in labels.rstrip("}").split(",") if kv.startswith(COUNTERS[name] + "=")]
            key += f"{{{m[0] if m else ''}}}"
        out[key] += float(value)
    return {k: int(v) for k, v in sorted(out.items())}


def log_summary(path):
    """ERROR/WARN lines of the LB's log by kind (addresses and numbers folded)."""
    kinds = collections.Counter()
    panicked = 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                panicked += "panicked" in line
                m = re.search(r"\s(ERROR|WARN)\s+(\S+?):\s(.*)", line)
                if m:
                    what = re.sub(r"\b\d+(\.\d+)*(:\d+)?\b", "N", m.group(3))[:70]
                    kinds[f"{m.group(1)} {m.group(2)}: {what}"] += 1
    except OSError:
        pass
    return panicked, dict(kinds.most_common(12))


async def finish(s):
    """The LB's counters, the farm's fault counts and the LB's log, at the end."""
    out = {}
    try:
        _, _, body = await call(s.a.control, "GET", "/telemetry", timeout=10)
        with open(os.path.join(s.a.out, "telemetry-end.txt"), "wb") as f:
            f.write(body)
        out["lb"] = counters(body.decode())
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        s.control_failed[f"final telemetry: {type(e).__name__}"] += 1
    try:
        _, _, body = await call(s.a.farm, "GET", "/faults")
        out["farm_faulted"] = json.loads(body)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        pass
    if s.a.lb_log:
        panicked, out["lb_log"] = log_summary(s.a.lb_log)
        if panicked:
            s.control_failed["the LB panicked (see its log)"] += 1
    return out


def report(s, flat, warm, seconds, end):
    ok, inj = sum(s.ok.values()), sum(s.injected.values())
    failed = sum(s.failed.values())
    passed = failed == 0 and not s.control_failed and all(v["flat"] for v in flat.values())
    md = [f"**{'PASS' if passed else 'FAIL'}**: {seconds / 60:.1f} min, warm-up {warm} min; "
          f"{ok} steady requests answered 2xx ({ok / seconds:.0f}/s: h1 {s.ok['h1']}, h2c {s.ok['h2c']}), "
          f"{inj} injected 500s passed through (h1 {s.injected['h1']}, h2c {s.injected['h2c']}), "
          f"{failed} failed; control calls {sum(s.control.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(s.control.items()))}), "
          f"{sum(s.control_failed.values())} failed.", ""]
    md += ["| minute | RSS MiB | fds | fds: clients / upstream / checks / rest | threads | series | open conns | 2xx | injected 500 | failed |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in s.samples:
        kinds = " / ".join(str(r.get(f"fd_{k}")) for k in ("clients", "upstream", "checks", "rest"))
        md.append(f"| {r['minute']} | {r.get('rss_kb', 0) / 1024:.1f} | {r.get('fds')} | {kinds} | {r.get('threads')} | "
                  f"{r.get('series')} | {r.get('open_conns')} | {r['ok']} | {r['injected']} | {r['failed']} |")
    md += ["", "| quantity | start | warm-up end | limit | last third max | fitted climb | end | flat |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for q, v in flat.items():
        md.append(f"| {q} | {v.get('start')} | {v.get('warmup_end')} | {v.get('limit')} | {v.get('last_third_max')} | "
                  f"{v.get('fitted_climb')} | {v.get('end')} | {'yes' if v['flat'] else '**no**'} |")
    md += ["", "Failures by cause: " + (", ".join(f"{p} {c}: {n}" for (p, c), n in sorted(s.failed.items())) or "none") + ".",
           "Control failures: " + (", ".join(f"{k}: {n}" for k, n in sorted(s.control_failed.items())) or "none") + ".",
           "Events: " + ", ".join(f"{k} {n}" for k, n in sorted(s.events.items())) + ".",
           "Hang-up storm clients: " + ", ".join(f"{k} {n}" for k, n in sorted(s.storm.items())) + ".",
           "LB counters at the end (per-backend series leave with their backend): "
           + ", ".join(f"{k} {v}" for k, v in end.get("lb", {}).items()) + ".",
           "Faulted at the farm: " + ", ".join(f"{k} {v}" for k, v in end.get("farm_faulted", {}).items()) + ".",
           "LB log, ERROR/WARN lines by kind: " + ("; ".join(f"{k} x{n}" for k, n in end.get("lb_log", {}).items()) or "none") + "."]
    return passed, "\n".join(md) + "\n"


async def main_async(a):
    s = Soak(a)
    os.makedirs(a.out, exist_ok=True)
    write_config(a.config, [0, 1, 2])
    stable = stable_fleet(a)
    if not await fill(s, stable):
        print("soak: the fleet did not become routable in 30 s", file=sys.stderr)
        return False
    s.hosts = ["soak", "web.soak", "r0.soak", "r1.soak", "r2.soak"]
    s.t0 = now()
    s.deadline = s.t0 + a.minutes * 60
    start = now() + 0.05
    tasks = [asyncio.create_task(h1_worker(s, n, a.h1_rate / a.h1_conns, start + n * 0.01)) for n in range(a.h1_conns)]
    tasks += [asyncio.create_task(h2_worker(s, n, a.h2_rate / a.h2_conns, start + n * 0.013)) for n in range(a.h2_conns)]
    tasks += [asyncio.create_task(f(s)) for f in (faults, reloads, storms)]
    tasks.append(asyncio.create_task(churn(s, stable)))
    await sampler(s)
    s.stopping = True
    done, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
        s.events["task cancelled at the end"] += 1
    for t in done:
        if t.exception() is not None:
            s.control_failed[f"driver task died: {t.exception()!r}"[:200]] += 1
    seconds = now() - s.t0
    end = await finish(s)
    warm, flat = flatness(s.samples, a.minutes)
    passed, md = report(s, flat, warm, seconds, end)
    with open(os.path.join(a.out, "samples.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(s.samples[0].keys()) if s.samples else ["minute"])
        w.writeheader()
        w.writerows(s.samples)
    summary = {
        "pass": passed, "minutes": a.minutes, "seconds": round(seconds, 1), "warmup_minutes": warm,
        "ok": dict(s.ok), "injected": dict(s.injected),
        "failed": {f"{p} {c}": n for (p, c), n in s.failed.items()},
        "failed_during": {f"{p} {c} during {d}": n for (p, c, d), n in s.failed_during.items()},
        "control": dict(s.control), "control_failed": dict(s.control_failed),
        "events": dict(s.events), "storm": dict(s.storm), "flat": flat, "samples": s.samples,
        "first_errors": s.first_errors, "end": end,
    }
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md)
    print(md)
    return passed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", type=int, required=True, help="LB proxy port on 127.0.0.1")
    ap.add_argument("--control", type=int, required=True, help="LB control port on 127.0.0.1")
    ap.add_argument("--farm", type=int, required=True, help="benchfarm control port on 127.0.0.1")
    ap.add_argument("--app", type=int, required=True, help="the farm's app port (vitals: app + 1)")
    ap.add_argument("--lb-pid", type=int, required=True)
    ap.add_argument("--config", required=True, help="the LB's --config file (rewritten)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lb-log", help="the LB's log: ERROR/WARN lines summarised, a panic fails the run")
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--h1-rate", type=float, default=150)
    ap.add_argument("--h1-conns", type=int, default=6)
    ap.add_argument("--h2-rate", type=float, default=100)
    ap.add_argument("--h2-conns", type=int, default=2)
    ap.add_argument("--storm", type=int, default=150, help="hang-up clients per storm")
    a = ap.parse_args()
    limit = a.minutes * 60 + 120
    try:
        passed = asyncio.run(asyncio.wait_for(main_async(a), limit))
    except asyncio.TimeoutError:
        print(f"soak: watchdog: not done after {limit} s", file=sys.stderr)
        passed = False
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
