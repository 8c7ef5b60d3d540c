#!/usr/bin/env python3
"""Hostile clients against one listener, for `make bench` part 5.

For a bounded window, at once:

- N idle connections (connect, send nothing; plain TCP even with --tls),
- M slowloris connections (`GET / HTTP/1.1`, `Host: x`, then one byte of a
  never-ending header every second; inside TLS with --tls),
- one normal client: a fresh connection every 100 ms for `GET --poll-path`
  (5 s timeout per request), every latency and failure recorded. It runs in
  a child process (this script with --poll-only), so the bad connections'
  event loop does not add to its latencies.

A bad connection the server closes is re-opened (each slot at most once a
second), so the pressure stays constant; its lifetime (TCP connect → server
close) is recorded. Once a second the server's open fds (/proc/PID/fd) and
VmRSS are sampled. One JSON object (one line) goes to --out.

Loopback only; standard library only; bounded in time (the window, then at
most --seconds + 10 in all, enforced by a watchdog) and in connects
(--max-connects). Usage:

  abuse.py --target 127.0.0.1:8000 [--tls] --idle 2000 --slow 300 --seconds 30 \
      --poll-path /healthz [--poll-host HOST:PORT] --pid PID --out result.json
"""

import argparse
import asyncio
import errno
import ipaddress
import itertools
import json
import os
import resource
import socket
import ssl
import statistics
import sys
import threading
import time

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), per 4-tuple
CONNECT_TIMEOUT = 5.0  # TCP connect (+ TLS handshake for slowloris)
POLL_TIMEOUT = 5.0
POLL_EVERY = 0.1
SLOT_MIN_GAP = 1.0  # a slot starts at most one connect a second
LOCAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS, errno.ENOMEM}

now = time.monotonic


def hostport(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise argparse.ArgumentTypeError(f"{host} is not a loopback address (loopback only)")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} is not an IP address") from None
    return host, int(port)


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def rnd(x, digits=3):
    return None if x is None else round(x, digits)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_sample(pid):
    """(open fds, VmRSS kB) of pid, or None once it is gone."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return fds, rss
    except (OSError, ValueError):
        return None


def proc_nofile(pid):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return int(soft) if soft.isdigit() else soft
    except OSError:
        pass
    return None


class Kind:
    """Counters of one kind of bad connection (idle or slowloris)."""

    def __init__(self, name, slots):
        self.name = name
        self.slots = slots
        self.attempts = 0
        self.established = 0
        self.lifetimes = []  # seconds, of the connections the server closed
        self.closed_eof = 0
        self.closed_reset = 0
        self.closed_with_data = 0  # the server answered something (a 408, say) first
        self.refused = 0
        self.reset_on_connect = 0  # RST (or TLS failure) before the connection was usable
        self.connect_timeouts = 0
        self.local_errors = 0  # our side: out of fds or ports
        self.other_errors = {}
        self.open = {}  # slot -> (connected at, first connection of the slot?, transport)
        self.first_up = 0
        self.all_up_at = None

    def summary(self, t_start, t_end):
        lt = self.lifetimes
        return {
            "slots": self.slots,
            "connect_attempts": self.attempts,
            "established": self.established,
            "closed_by_server": len(lt),
            "closed_eof": self.closed_eof,
            "closed_reset": self.closed_reset,
            "closed_after_response": self.closed_with_data,
            "lifetime_median_s": rnd(statistics.median(lt)) if lt else None,
            "lifetime_p90_s": rnd(percentile(lt, 90)),
            "lifetime_min_s": rnd(min(lt)) if lt else None,
            "lifetime_max_s": rnd(max(lt)) if lt else None,
            "open_at_end": len(self.open),
            "open_at_end_oldest_s": rnd(t_end - min(v[0] for v in self.open.values())) if self.open else None,
            # Slots whose first connection was never closed: lived the whole window.
            "never_closed": sum(1 for v in self.open.values() if v[1]),
            "refused": self.refused,
            "reset_on_connect": self.reset_on_connect,
            "connect_timeouts": self.connect_timeouts,
            "local_errors": self.local_errors,
            "other_errors": dict(self.other_errors),
            "all_up_after_s": rnd(self.all_up_at - t_start) if self.all_up_at else None,
        }


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Poller:
    """The normal client. It runs in its own process (`--poll-only`, started by
    Abuse.run) so that the bad connections' event loop cannot delay it."""

    def __init__(self, a):
        self.a = a
        self.target = a.poll_target or a.target
        self.host_header = a.poll_host or f"{self.target[0]}:{self.target[1]}"
        self.ctx = tls_context() if a.tls else None
        self.lat = []  # ms, successful requests
        self.fail = {}
        self.requests = 0
        self.lag = 0.0

    async def once(self):
        host, port = self.target
        w = None
        try:
            r, w = await asyncio.open_connection(host, port, ssl=self.ctx,
                                                 server_hostname=host if self.ctx else None)
            w.write(f"GET {self.a.poll_path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                    "User-Agent: roster-bench-abuse\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            status = await r.readline()
            parts = status.split()
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                return "bad response" if status else "closed before answering"
            length = None
            while True:
                line = await r.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is not None:
                await r.readexactly(length)
            else:
                while await r.read(65536):
                    pass
            code = parts[1].decode(errors="replace")
            return None if code == "200" else f"status {code}"
        finally:
            if w is not None:
                w.transport.abort()

    async def run(self):
        t_start = now()
        deadline = t_start + self.a.seconds
        nxt = t_start
        while now() < deadline:
            self.lag = max(self.lag, now() - nxt)
            t0 = now()
            self.requests += 1
            try:
                fail = await asyncio.wait_for(self.once(), POLL_TIMEOUT)
            except asyncio.TimeoutError:
                fail = "timeout (5 s)"
            except ConnectionRefusedError:
                fail = "refused"
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                fail = "reset"
            except asyncio.IncompleteReadError:
                fail = "closed mid-answer"
            except (ssl.SSLError, OSError, ValueError) as e:
                fail = f"{type(e).__name__}: {e}"[:80]
            if fail is None:
                self.lat.append((now() - t0) * 1000)
            else:
                self.fail[fail] = self.fail.get(fail, 0) + 1
            nxt = max(nxt + POLL_EVERY, now())
            await asyncio.sleep(max(0.0, nxt - now()))
        return self.result()

    def result(self):
        lat = self.lat
        return {
            "path": self.a.poll_path,
            "target": f"{self.target[0]}:{self.target[1]}",
            "requests": self.requests,
            "ok": len(lat),
            "failures": sum(self.fail.values()),
            "failure_kinds": self.fail,
            "p50_ms": rnd(statistics.median(lat)) if lat else None,
            "p99_ms": rnd(percentile(lat, 99)),
            "max_ms": rnd(max(lat)) if lat else None,
            "loop_lag_max_ms": rnd(self.lag * 1000, 1),
        }


class Abuse:
    def __init__(self, a):
        self.a = a
        self.host, self.port = a.target
        self.sources = self.source_ips(a.sources)
        self.ctx = tls_context() if a.tls else None
        self.idle = Kind("idle", a.idle)
        self.slow = Kind("slowloris", a.slow)
        self.connects_left = a.max_connects
        self.budget_exhausted = False
        self.samples = []
        self.loop_lag = 0.0
        self.stopping = False
        self.t_start = None
        self.t_end = None
        self.sem = None

    def source_ips(self, n):
        """Distinct 127.0.0.x sources for the bad connections (the poller keeps the default)."""
        if n <= 0 or ipaddress.ip_address(self.host).version != 4:
            return [None]
        return [f"127.0.0.{2 + i}" for i in range(min(n, 250))]

    def error(self, bucket, e):
        key = type(e).__name__ + (f" {errno.errorcode.get(e.errno, e.errno)}" if getattr(e, "errno", None) else "")
        bucket[key] = bucket.get(key, 0) + 1

    # ------------------------------------------------------------ bad connections
    async def tcp(self, src, target):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if src:
                try:
                    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
                sock.bind((src, 0))
            await loop.sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        return sock

    async def open_bad(self, kind, src):
        """Connected (reader, writer, connected at), or raises."""
        sock = await self.tcp(src, (self.host, self.port))
        t = now()
        try:
            if kind is self.slow and self.ctx:
                r, w = await asyncio.open_connection(sock=sock, ssl=self.ctx, server_hostname=self.host,
                                                     ssl_handshake_timeout=CONNECT_TIMEOUT)
            else:
                r, w = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return r, w, t

    @staticmethod
    async def read_until_close(reader):
        """'eof' or 'reset' when the server closes; True in [1] if it sent bytes first."""
        got = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return "eof", got
                got = True
        except (ConnectionError, ssl.SSLError, OSError):
            return "reset", got

    @staticmethod
    async def drip(writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        for b in itertools.chain(b"X-Slowloris: ", itertools.repeat(ord("a"))):
            await asyncio.sleep(1.0)
            writer.write(bytes([b]))
            await writer.drain()

    async def hold(self, kind, reader, writer):
        if kind is not self.slow:
            return await self.read_until_close(reader)
        rd = asyncio.ensure_future(self.read_until_close(reader))
        wr = asyncio.ensure_future(self.drip(writer))
        try:
            done, _ = await asyncio.wait({rd, wr}, return_when=asyncio.FIRST_COMPLETED)
            if rd in done:
                return rd.result()
            # The write failed: the server is gone; the read sees it at once.
            done, _ = await asyncio.wait({rd}, timeout=1.0)
            return rd.result() if done else ("reset", False)
        finally:
            for t in (rd, wr):
                t.cancel()

    async def slot(self, kind, i):
        src = self.sources[i % len(self.sources)]
        first = True
        last = -SLOT_MIN_GAP
        # Besides cancellation, `stopping` ends the slot: asyncio.wait_for can
        # swallow a cancel that races a completing connect (CPython < 3.12).
        while not self.stopping:
            wait = last + SLOT_MIN_GAP - now()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.stopping:
                return
            if self.connects_left <= 0:
                self.budget_exhausted = True
                return
            self.connects_left -= 1
            last = now()
            kind.attempts += 1
            writer = None
            try:
                async with self.sem:
                    reader, writer, t0 = await asyncio.wait_for(self.open_bad(kind, src), CONNECT_TIMEOUT)
            except asyncio.TimeoutError:
                kind.connect_timeouts += 1
                first = False
                continue
            except ConnectionRefusedError:
                kind.refused += 1
                first = False
                continue
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLError,
                    asyncio.IncompleteReadError, EOFError) as e:
                kind.reset_on_connect += 1
                first = False
                continue
            except OSError as e:
                if e.errno in LOCAL_ERRNOS:
                    kind.local_errors += 1
                else:
                    self.error(kind.other_errors, e)
                first = False
                continue
            if self.stopping:
                writer.transport.abort()
                return
            kind.established += 1
            if first:
                kind.first_up += 1
                if kind.first_up == kind.slots:
                    kind.all_up_at = now()
            kind.open[i] = (t0, first, writer.transport)
            try:
                how, got = await self.hold(kind, reader, writer)
            finally:
                writer.transport.abort()
            del kind.open[i]
            kind.lifetimes.append(now() - t0)
            kind.closed_eof += how == "eof"
            kind.closed_reset += how == "reset"
            kind.closed_with_data += bool(got)
            first = False

    # ------------------------------------------------------------ the server
    async def sampler(self):
        due = now()
        while True:
            # How late this wake-up is: this event loop's lag (the poller has its own).
            self.loop_lag = max(self.loop_lag, now() - due)
            s = proc_sample(self.a.pid) if self.a.pid else None
            self.samples.append([round(now() - self.t_start, 1)] + (list(s) if s else [None, None]))
            due += 1.0
            await asyncio.sleep(max(0.0, due - now()))

    # ------------------------------------------------------------ run
    async def run(self):
        self.sem = asyncio.Semaphore(self.a.connect_concurrency)
        self.t_start = now()
        self.before = proc_sample(self.a.pid) if self.a.pid else None
        sampler = asyncio.ensure_future(self.sampler())
        # Slowloris first: they are the connections a header timeout is for.
        bad = [asyncio.ensure_future(self.slot(self.slow, i)) for i in range(self.a.slow)]
        bad += [asyncio.ensure_future(self.slot(self.idle, self.a.slow + i)) for i in range(self.a.idle)]
        poller = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--poll-only", *self.poll_argv(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        poll_out = asyncio.ensure_future(poller.communicate())
        await asyncio.sleep(max(0.0, self.t_start + self.a.seconds - now()))
        # The window ends: the bad connections as they are now, then tear down.
        self.stopping = True
        self.t_end = now()
        alive = proc_sample(self.a.pid) is not None if self.a.pid else None
        bad_now = {"idle": self.idle.summary(self.t_start, self.t_end),
                   "slowloris": self.slow.summary(self.t_start, self.t_end),
                   "lifetimes": self.idle.lifetimes + self.slow.lifetimes,
                   "budget_exhausted": self.budget_exhausted}
        for t in bad:
            t.cancel()
        for k in (self.idle, self.slow):
            for _, _, transport in list(k.open.values()):
                transport.abort()
        # The poller finishes its request in flight (≤ 5 s).
        poll = {"error": "the poller gave no result"}
        try:
            out, _ = await asyncio.wait_for(poll_out, POLL_TIMEOUT + 3)
            poll = json.loads(out.decode().strip().splitlines()[-1])
        except asyncio.TimeoutError:
            poller.kill()
            poll = {"error": "the poller did not finish"}
        except (ValueError, IndexError):
            pass
        sampler.cancel()
        pending = set(bad)
        give_up = now() + 3.0
        while pending and now() < give_up:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        return self.result(alive, bad_now, poll)

    def poll_argv(self):
        a = self.a
        t = a.poll_target or a.target
        argv = ["--target", f"{t[0]}:{t[1]}", "--seconds", str(a.seconds), "--poll-path", a.poll_path]
        if a.poll_host:
            argv += ["--poll-host", a.poll_host]
        if a.tls:
            argv.append("--tls")
        return argv

    def result(self, alive, bad_now, poll):
        t_end = self.t_end
        window = [s for s in self.samples if s[0] <= t_end - self.t_start + 0.05]
        fds = [s[1] for s in window if s[1] is not None]
        rss = [s[2] for s in window if s[2] is not None]
        idle, slow, lifetimes = bad_now["idle"], bad_now["slowloris"], bad_now["lifetimes"]
        return {
            "target": f"{self.host}:{self.port}",
            "tls": bool(self.a.tls),
            "seconds": self.a.seconds,
            "window_s": rnd(t_end - self.t_start, 2),
            "sources": [s for s in self.sources if s],
            "client_nofile": list(raise_nofile()),
            "max_connects": self.a.max_connects,
            "connect_budget_exhausted": bad_now["budget_exhausted"],
            "client_loop_lag_max_ms": rnd(self.loop_lag * 1000, 1),
            "poll": poll,
            "idle": idle,
            "slowloris": slow,
            "bad": {
                "slots": self.a.idle + self.a.slow,
                "closed_by_server": len(lifetimes),
                "lifetime_median_s": rnd(statistics.median(lifetimes)) if lifetimes else None,
                "lifetime_max_s": rnd(max(lifetimes)) if lifetimes else None,
                "open_at_end": idle["open_at_end"] + slow["open_at_end"],
                "never_closed": idle["never_closed"] + slow["never_closed"],
                "refused_or_reset": sum(k[x] for k in (idle, slow) for x in ("refused", "reset_on_connect")),
                "connect_timeouts": idle["connect_timeouts"] + slow["connect_timeouts"],
            },
            "server": {
                "pid": self.a.pid,
                "nofile_soft": proc_nofile(self.a.pid) if self.a.pid else None,
                "fds_before": self.before[0] if self.before else None,
                "rss_before_kb": self.before[1] if self.before else None,
                "fds_max": max(fds) if fds else None,
                "rss_max_kb": max(rss) if rss else None,
                "alive_at_end": alive,
                "samples": self.samples,  # [t s, fds, VmRSS kB]
            },
        }


def write(path, obj):
    data = json.dumps(obj, sort_keys=True) + "\n"
    if path == "-":
        sys.stdout.write(data)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=hostport, required=True, help="HOST:PORT of the listener (loopback)")
    p.add_argument("--tls", action="store_true", help="HTTPS: slowloris and the poller inside TLS (no verification)")
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--slow", type=int, default=300)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--poll-path", default="/healthz")
    p.add_argument("--poll-host", help="Host header of the poller (default: its target)")
    p.add_argument("--poll-target", type=hostport, help="listener the poller uses (default: --target)")
    p.add_argument("--pid", type=int, help="server process to sample (fds, VmRSS)")
    p.add_argument("--sources", type=int, default=8, help="bad connections come from 127.0.0.2..(2+N-1)")
    p.add_argument("--connect-concurrency", type=int, default=256, help="bad connects in flight at most")
    p.add_argument("--max-connects", type=int, help="bad connects in all (default: one per slot per second)")
    p.add_argument("--out", default="-")
    p.add_argument("--poll-only", action="store_true", help="be the normal client alone (what the run starts)")
    a = p.parse_args()
    if a.idle < 0 or a.slow < 0 or not 0 < a.seconds <= 3600:
        p.error("--idle/--slow ≥ 0 and 0 < --seconds ≤ 3600")
    if a.max_connects is None:
        a.max_connects = (a.idle + a.slow) * (int(a.seconds) + 1)
    if a.poll_only:
        stopper = threading.Timer(a.seconds + POLL_TIMEOUT + 3, os._exit, (3,))
        stopper.daemon = True
        stopper.start()
        print(json.dumps(asyncio.run(Poller(a).run()), sort_keys=True), flush=True)
        return
    soft, hard = raise_nofile()
    need = a.idle + a.slow + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        print(f"abuse.py: open-file limit {soft} < {need}: some bad connects will fail locally "
              "(counted as local_errors)", file=sys.stderr)

    ab = Abuse(a)
    done = threading.Event()

    def hard_stop():  # the event loop is stuck: leave a record and go
        if done.is_set():
            return
        try:
            write(a.out, {"target": f"{ab.host}:{ab.port}", "error": f"hard stop after {a.seconds + 10:g} s"})
        finally:
            os._exit(3)

    watchdog = threading.Timer(a.seconds + 10, hard_stop)
    watchdog.daemon = True
    watchdog.start()
    result = asyncio.run(ab.run())
    done.set()
    watchdog.cancel()
    write(a.out, result)
    poll, bad, srv = result["poll"], result["bad"], result["server"]
    print(f"abuse {result['target']}{' tls' if a.tls else ''}: poll {poll.get('ok')}/{poll.get('requests')} ok, "
          f"p50 {poll.get('p50_ms')} ms, max {poll.get('max_ms')} ms{' ' + poll['error'] if 'error' in poll else ''}; bad conns closed {bad['closed_by_server']} "
          f"(median {bad['lifetime_median_s']} s, max {bad['lifetime_max_s']} s), "
          f"never closed {bad['never_closed']}/{bad['slots']}, refused/reset {bad['refused_or_reset']}; "
          f"server fds max {srv['fds_max']}, RSS max {srv['rss_max_kb']} kB", file=sys.stderr)


if __name__ == "__main__":
    main()
