#!/usr/bin/env python3
"""Turn the work directory of bench/run.sh into BENCHMARKS.md.

Usage: report.py WORK_DIR OUT.md   (standard library only)
"""

import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

W, OUT = sys.argv[1], sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))


def facts():
    out = {}
    with open(os.path.join(W, "facts.tsv")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            out[k] = v
    return out


F = facts()


def num(key, default=None):
    try:
        return float(F[key])
    except (KeyError, ValueError):
        return default


def load_json(name):
    try:
        with open(os.path.join(W, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def ms(value):
    """wrk's '441.00us' / '1.20ms' / '1.01s' in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_wrk(path):
    text = open(path).read()
    r = {"rps": None, "p50": None, "p99": None, "errors": 0, "non2xx": 0, "requests": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, text, re.M)
        if m:
            r[key] = ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    return r


def runs(part, target):
    def round_of(path):
        tail = path.rsplit("-", 1)[-1].removesuffix(".txt")
        return int(tail) if tail.isdigit() else 0

    paths = glob.glob(os.path.join(W, f"wrk-{part}-{target}-*.txt"))
    return [parse_wrk(p) for p in sorted(paths, key=round_of)]


def paired(a, b):
    """Median of the per-round ratios a_i / b_i. Two targets measured back
    to back in each round share that moment's machine state, so the paired
    ratio drifts less than the ratio of the two medians on a shared host."""
    qs = [x / y for x, y in zip(a["all_rps"], b["all_rps"]) if x and y]
    return (statistics.median(qs) if qs else None), qs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(rs):
    return {
        "rps": median(r["rps"] for r in rs),
        "p50": median(r["p50"] for r in rs),
        "p99": median(r["p99"] for r in rs),
        "all_rps": [r["rps"] for r in rs],
        "errors": sum(r["errors"] + r["non2xx"] for r in rs),
        "n": len(rs),
    }


def f(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - a description line is never worth failing the report
        return ""


def machine():
    model = sh("awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo") or platform.processor()
    mhz = sh("awk -F': ' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo")
    mem = sh("awk '/^MemTotal/ {printf \"%.1f GiB\", $2 / 1048576}' /proc/meminfo")
    return [
        f"- CPU: {model}" + (f" ({float(mhz):.0f} MHz)" if mhz else ""),
        f"- cores (nproc): {sh('nproc')}; memory: {mem}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- load average (1/5/15 min) at start: {F.get('load_start', '?')}, at end: {F.get('load_end', '?')}",
        f"- nginx {F.get('p1.nginx_version', sh('nginx -v 2>&1 | sed s/.*://'))}, "
        f"HAProxy {F.get('p1.haproxy_version', '?')}, {sh('wrk -v 2>&1 | head -1').split(' Copyright')[0]}",
        f"- roster: commit {F.get('run.commit') or sh('git rev-parse --short HEAD')}"
        + (" (uncommitted changes)" if F.get("run.dirty", "") else "")
        + ", `cargo build --release` (thin LTO)",
    ]


def command():
    knobs = []
    defaults = {"BENCH_DURATION": "10", "BENCH_ROUNDS": "5", "BENCH_CONNECTIONS": "64",
                "BENCH_THREADS": "1", "BENCH_BACKENDS": "10000", "BENCH_CPU_SECONDS": "30",
                "BENCH_AGENT_SECONDS": "60", "BENCH_ABUSE_SECONDS": "30", "BENCH_ABUSE_IDLE": "2000",
                "BENCH_ABUSE_SLOW": "300", "BENCH_PARTS": "1 2 3 4 5 6 7 8 9"}
    for k, d in defaults.items():
        v = os.environ.get(k)
        if v is not None and v != d:
            knobs.append(f"{k}='{v}'" if " " in v else f"{k}={v}")
    return " ".join(knobs + ["make bench"])


lines = []
add = lines.append
# The run's own end when it recorded one (a report rebuilt later keeps it).
now = F.get("run.finished") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
add("# Benchmarks")
add("")
add("Written by `make bench` (`bench/run.sh`, report by `bench/report.py`); re-run it to refresh this page.")
add("Everything runs on loopback on one machine; absolute numbers only mean something next to each other.")
add("")
add(f"- date: {now}; wall time of the run: {F.get('total_s', '?')} s")
add(f"- command: `{command()}`")
lines += machine()
threads = F.get("threads", "1")
add(
    f"- placement: the proxy under test (roster `--threads {threads}`, nginx `worker_processes {threads}`, "
    f"HAProxy `nbthread {threads}`) pinned to cpu {F.get('proxy_cpus')}; wrk, the backend farm "
    f"(`examples/benchfarm.rs`) and the bench clients pinned to cpu {F.get('load_cpus')}"
)
add(
    f"- load: `wrk --latency`, {F.get('connections')} connections, {F.get('duration')} s per run, "
    f"{F.get('rounds')} alternating rounds (A B C D A B C D …) after a 2 s warm-up each; tables show medians"
)
load = (F.get("load_start") or "0").split()[0]
try:
    if float(load) >= 1.0:
        add(
            f"- **noise warning**: the 1-minute load average was {load} at the start (other work on the machine); "
            "treat the ratios as indicative and compare runs taken under similar load"
        )
except ValueError:
    pass
add("")

targets = []  # (what, target, measured, ok)


def error_note(summaries):
    bad = [name for name, s in summaries if s["errors"]]
    if bad:
        add(f"**Invalid rounds**: {', '.join(bad)} had socket errors or non-2xx answers (see the errors column); "
            "their req/s do not measure proxying.")
        add("")

# ---------------------------------------------------------------- part 1
P1 = ("roster", "bare", "nginx", "haproxy", "direct")
p1 = {t: summary(runs("p1", t)) for t in P1}
if p1["roster"]["n"]:
    add("## 1. Proxy throughput and latency vs peers")
    add("")
    add("Four backends (hyper, `200 ok`, 3-byte body) on 127.0.0.1, round robin, keep-alive to the backends. "
        "Peer configs: [`bench/nginx.conf.in`](bench/nginx.conf.in), [`bench/haproxy.cfg.in`](bench/haproxy.cfg.in); "
        "roster: `roster lb --threads N` with the 4 backends registered through the control API. "
        "`bare` is [`examples/bare_pingora.rs`](examples/bare_pingora.rs): the smallest pingora proxy "
        "(round robin by an atomic counter), same pingora, allocator, `ServerConf` and peer timeouts as roster. "
        "`direct` is wrk against one backend: the ceiling of the load core.")
    add("")
    add("| target | req/s (median) | p50 ms | p99 ms | req/s per round | errors |")
    add("| --- | ---: | ---: | ---: | --- | ---: |")
    for t in P1:
        s = p1[t]
        if not s["n"]:
            continue
        add(f"| {t} | {f(s['rps'])} | {f(s['p50'], 3)} | {f(s['p99'], 3)} | "
            f"{', '.join(f(x) for x in s['all_rps'])} | {s['errors']} |")
    add("")
    error_note(list(p1.items()))
    r = p1["roster"]
    add("| ratio | req/s | p50 | p99 |")
    add("| --- | ---: | ---: | ---: |")
    for a, t in (("roster", "bare"), ("bare", "nginx"), ("roster", "nginx"), ("roster", "haproxy"),
                 ("roster", "direct")):
        r, o = p1[a], p1[t]
        if not (r["n"] and o["n"]):
            continue
        add(f"| {a} / {t} | {f(ratio(r['rps'], o['rps']), 2)}× | {f(ratio(r['p50'], o['p50']), 2)}× | "
            f"{f(ratio(r['p99'], o['p99']), 2)}× |")
    add("")
    r = p1["roster"]
    co = {t: summary(runs("p1co", t)) for t in ("roster", "bare")}
    if p1["bare"]["n"]:
        # roster and bare run back to back in every round: the paired ratio.
        q, qs = paired(r, p1["bare"])
        add(f"roster / bare per round (measured back to back): {', '.join(f(x, 3) for x in qs)}; "
            f"median {f(q, 3)}×.")
        add("")
    if co["roster"]["n"] and co["bare"]["n"]:
        cq, cqs = paired(co["roster"], co["bare"])
        add(f"**Co-run** (roster and bare loaded at the same moment, sharing the proxy core, so the scheduler "
            f"splits its time and the req/s ratio is the inverse ratio of CPU per request): roster "
            f"{', '.join(f(x) for x in co['roster']['all_rps'])}, bare {', '.join(f(x) for x in co['bare']['all_rps'])} "
            f"req/s; roster / bare per round {', '.join(f(x, 3) for x in cqs)}, median **{f(cq, 3)}×**. "
            "The target row uses this: other load on the machine slows both alike.")
        add("")
        targets.append(("roster / bare pingora, req/s (co-run, median of rounds)", "≥ 0.98×", f"{f(cq, 3)}×",
                        None if cq is None else cq >= 0.98))
    elif p1["bare"]["n"]:
        targets.append(("roster / bare pingora, req/s (median of per-round ratios)", "≥ 0.98×", f"{f(q, 3)}×",
                        None if q is None else q >= 0.98))
    for t in ("nginx", "haproxy"):
        q = ratio(r["rps"], p1[t]["rps"])
        p99 = ratio(r["p99"], p1[t]["p99"])
        ok = None if q is None or p99 is None else (q >= 1.0 and p99 <= 1.0)
        targets.append((f"roster vs {t}", "≥ 1.0× req/s, p99 not worse",
                        f"{f(q, 2)}× req/s, p99 {f(p99, 2)}×", ok))

# ---------------------------------------------------------------- part 2
p2 = {t: summary(runs("p2", t)) for t in ("10", "10k", "bare10", "bare10k")}
if p2["10"]["n"]:
    def conns_per_req(t):
        vals = []
        for path in sorted(glob.glob(os.path.join(W, f"stats-p2-{t}-*-before.json"))):
            try:
                a = json.load(open(path))
                b = json.load(open(path.replace("-before", "-after")))
                dr = b["app_requests"] - a["app_requests"]
                dc = b["app_connections"] - a["app_connections"]
                vals.append(dc / dr if dr else None)
            except (OSError, ValueError, KeyError):
                pass
        return median(vals)

    n = F.get("backends", "10000")
    add(f"## 2. Selection cost vs pool size: 10 vs {int(n):,} healthy backends")
    add("")
    add(f"Traffic through the LB of part 3 ({int(n):,} registered backends, all real listeners: distinct "
        "127.10.x.y addresses on one farm listener bound to 0.0.0.0) and through an LB with the first 10 of them, "
        "same flags (`--threads 1 --health-interval 5s`), round robin, rounds alternating between the two. "
        "Both keep checking every 5 s, so the big one also spends on its checks what part 3 measures. "
        "The last column comes from the farm: connections it accepted on its app port / requests it served.")
    add("")
    add("| backends | req/s (median) | p50 ms | p99 ms | req/s per round | new upstream connections per request | errors |")
    add("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for t, label in (("10", "10"), ("10k", f"{int(n):,}")):
        s = p2[t]
        add(f"| {label} | {f(s['rps'])} | {f(s['p50'], 3)} | {f(s['p99'], 3)} | "
            f"{', '.join(f(x) for x in s['all_rps'])} | {f(conns_per_req(t), 3)} | {s['errors']} |")
    for t, label in (("bare10", "10, bare pingora"), ("bare10k", f"{int(n):,}, bare pingora")):
        s = p2[t]
        if s["n"]:
            add(f"| {label} | {f(s['rps'])} | {f(s['p50'], 3)} | {f(s['p99'], 3)} | "
                f"{', '.join(f(x) for x in s['all_rps'])} | n/a | {s['errors']} |")
    q, qs = paired(p2["10k"], p2["10"])
    add("")
    error_note(list(p2.items()))
    add(f"Ratio {int(n):,} / 10, median of the per-round ratios ({', '.join(f(x, 3) for x in qs)}): "
        f"**{f(q, 3)}×** req/s; p99 {f(ratio(p2['10k']['p99'], p2['10']['p99']), 2)}×. "
        f"RSS: {f(num('p2.rss_10_kb', 0) / 1024, 1)} MB with 10, {f(num('p2.rss_10k_kb', 0) / 1024, 1)} MB "
        f"with {int(n):,} (after the rounds).")
    add("")
    targets.append((f"selection {int(n):,} / 10", "≥ 0.95×", f"{f(q, 3)}×", None if q is None else q >= 0.95))
    if p2["bare10"]["n"] and p2["bare10k"]["n"]:
        # The same pool sizes through bare pingora: what the pool costs
        # pingora itself, so the part that is roster's shows apart.
        bq, bqs = paired(p2["bare10k"], p2["bare10"])
        rel = ratio(q, bq)
        add(f"Bare pingora over the same backends (`examples/bare_pingora.rs` with 10 and {int(n):,} "
            f"`--upstream`s, round robin, run after the roster LBs stopped): {int(n):,} / 10 = **{f(bq, 3)}×** "
            f"(per round {', '.join(f(x, 3) for x in bqs)}). roster's ratio relative to pingora's own: "
            f"**{f(rel, 3)}×**.")
        add("")
        targets.append((f"selection {int(n):,} / 10, relative to bare pingora's {int(n):,} / 10", "≥ 0.95×",
                        f"{f(rel, 3)}×", None if rel is None else rel >= 0.95))

# ---------------------------------------------------------------- part 3
reg = load_json("p3-register.json")
if reg:
    flip = load_json("p3-flip.json") or {}
    hb = load_json("p3-heartbeat.json") or {}
    farm = load_json("p3-farm-stats.json") or {}
    n = int(F.get("backends", "10000"))
    add(f"## 3. Registry at scale: {n:,} backends checked every 5 s")
    add("")
    add(f"`roster lb --threads {threads} --health-interval 5s --max-backends {n} --lease-ttl 1h`, pinned like the proxies. "
        "Window A holds the checks alone (the long lease means nobody needs to heartbeat); window B adds the "
        "heartbeats a fleet sends with the default 90 s lease. The farm answers every vitals check.")
    add("")
    add("| measure | value |")
    add("| --- | ---: |")
    add(f"| registering {n:,} (`POST /register`, 64 concurrent) | {f(reg.get('seconds'), 2)} s "
        f"({f(reg.get('per_second'))}/s, {reg.get('ok')} ok) |")
    routable = load_json("p3-routable.json")
    if routable and routable.get("routable") == n:
        add(f"| from the first POST until all {n:,} routable (first check round) | {F.get('p3.all_routable_s', 'n/a')} s |")
    else:
        add(f"| from the first POST until all {n:,} routable (first check round) | **not reached**: gave up after "
            f"{F.get('p3.all_routable_s', 'n/a')} s |")
    add(f"| LB CPU while filling | {F.get('p3.fill_cpu_percent', 'n/a')} % of a core |")
    add(f"| **A. LB CPU, checks only** ({F.get('p3.checks.seconds')} s window) | "
        f"**{F.get('p3.checks.cpu_percent', 'n/a')} % of a core** |")
    add(f"| checks per second / mean check time in window A | {F.get('p3.checks_per_s', 'n/a')} /s, {F.get('p3.check_mean_ms', 'n/a')} ms |")
    add(f"| failed checks while filling / in window A | {F.get('p3.fill_failed_checks', 'n/a').split('.')[0]} / "
        f"{F.get('p3.failed_checks', 'n/a')} |")
    add(f"| B. LB CPU, checks + heartbeats ({f(hb.get('per_second'))} POST/s = every backend every 30 s) | "
        f"{F.get('p3.heartbeats.cpu_percent', 'n/a')} % of a core |")
    add(f"| **LB RSS** empty / after A / after B / peak (VmHWM) | {f(num('p3.rss_empty_kb', 0) / 1024, 1)} / "
        f"**{f(num('p3.checks.rss_kb', 0) / 1024, 1)}** / {f(num('p3.heartbeats.rss_kb', 0) / 1024, 1)} / "
        f"{f(num('p3.final_hwm_kb', 0) / 1024, 1)} MB |")
    add(f"| LB threads / open fds | {F.get('p3.threads', 'n/a')} / {F.get('p3.fds', 'n/a')} |")
    add(f"| vitals connections the farm accepted in all / vitals requests | "
        f"{f(farm.get('vitals_connections'))} / {f(farm.get('vitals_requests'))} |")
    add(f"| 100 go `ready:false` at once (every {max(n // 100, 1)}th backend, so spread over the check phases): "
        "detection = first not-ready check after the flip, p50 / p90 / max | "
        f"{f(flip.get('detect_p50_ms'))} / {f(flip.get('detect_p90_ms'))} / {f(flip.get('detect_max_ms'))} ms "
        f"({flip.get('detected')} of {flip.get('flipped')} seen) |")
    add(f"| … until all 100 are out of the routable set | {f(flip.get('all_out_of_pool_s'), 2)} s |")
    add("")
    cpu = num("p3.checks.cpu_percent")
    rss = num("p3.checks.rss_kb")
    targets.append((f"{n:,} backends at 5 s: CPU", "≤ 50 % of a core", f"{f(cpu, 1)} %",
                    None if cpu is None else cpu <= 50))
    targets.append((f"{n:,} backends at 5 s: RSS", "≤ 50 MB", f"{f(rss and rss / 1024, 1)} MB",
                    None if rss is None else rss / 1024 <= 50))

# ---------------------------------------------------------------- part 4
status = F.get("p4.status")
if status:
    add("## 4. Agent footprint")
    add("")
    if status == "ran":
        add(f"One `roster-agent` (the sidecar binary the injector runs: the agent alone, "
            f"{f(num('p4.size_kb', 0) / 1024, 1)} MB on disk) announcing to a local LB, its vitals port open, "
            f"nobody scraping it but the LB (checks every 5 s), measured over {F.get('p4.seconds')} s after "
            f"a 5 s settle. Beside it, for reference, the same agent run as `roster agent` from the full "
            f"{f(num('p4.full_size_kb', 0) / 1024, 1)} MB binary.")
        add("")
        add("| measure | value |")
        add("| --- | ---: |")
        add(f"| RSS at start / after the window / peak | {f(num('p4.rss_start_kb', 0) / 1024, 1)} / "
            f"**{f(num('p4.rss_kb', 0) / 1024, 1)}** / {f(num('p4.hwm_kb', 0) / 1024, 1)} MB |")
        add(f"| of which anonymous / file-backed (the binary's pages) | {f(num('p4.anon_kb', 0) / 1024, 1)} / "
            f"{f(num('p4.file_kb', 0) / 1024, 1)} MB |")
        add(f"| `roster agent` (full binary) RSS, same window | {f(num('p4.full_rss_kb', 0) / 1024, 1)} MB |")
        add(f"| CPU | {F.get('p4.cpu_percent')} % of a core |")
        add(f"| threads | {F.get('p4.threads')} |")
        add(f"| registered and routable at the LB | {F.get('p4.routable')} |")
        rss = num("p4.rss_kb")
        targets.append(("agent idle RSS", "≤ 10 MB", f"{f(rss / 1024, 1)} MB", rss / 1024 <= 10))
    else:
        add(f"Not measured: {status}.")
        targets.append(("agent idle RSS", "≤ 10 MB", status, None))
    add("")

# ---------------------------------------------------------------- part 5
P5 = (("proxy", "LB proxy (`--listen`)"), ("control", "LB control API (`--control-listen`)"),
      ("vitals", "agent vitals (`--metrics-port`)"), ("injector", "injector (`roster inject`, HTTPS)"))
if any(F.get(f"p5.{name}.status") for name, _ in P5):
    secs = F.get("p5.seconds", "30")
    add("## 5. Hostile clients: idle and slowloris connections per listener")
    add("")
    add(f"Each listener in turn, for {secs} s, at once: {f(num('p5.idle'))} idle connections (connect, send "
        f"nothing), {f(num('p5.slow'))} slowloris connections (`GET / HTTP/1.1`, `Host: x`, then one byte of a "
        "never-ending header every second) and a normal client opening a fresh connection every 100 ms "
        "(`GET /healthz`; on the proxy `GET /` to one registered farm app; 5 s timeout per request). "
        "The bad connections come from other loopback addresses (127.0.0.2 and up) and are re-opened when the server closes them, so the "
        "pressure is constant; a lifetime is TCP connect → server close. On the injector slowloris runs inside "
        "TLS, the idle connections are plain TCP that never start the handshake. "
        f"Each server is a fresh process with its default limits (`roster lb --threads {threads}`, "
        f"`{F.get('p5.agent', 'roster-agent')}`, `roster inject` with a generated certificate), pinned like the "
        "proxies; the clients (`bench/abuse.py`) run on the load cores and sample the server's open fds and "
        "VmRSS every second.")
    add("")
    add("| listener | normal requests | failures | p50 ms | worst ms | idle conn lifetime median / max s "
        "| slowloris lifetime median / max s | open the whole window | refused / reset | max fds (limit) "
        "| max RSS MB |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def lifetimes(k):
        if not k.get("closed_by_server"):
            return "none closed"
        return (f"{f(k.get('lifetime_median_s'), 1)} / {f(k.get('lifetime_max_s'), 1)} "
                f"({f(k.get('closed_by_server'))} closed)")

    notes5 = []
    for name, label in P5:
        status = F.get(f"p5.{name}.status")
        r = load_json(f"p5-{name}.json") if status else None
        if not status:
            continue
        if not r or "poll" not in r:
            why = status if status != "ran" else "no result" + (f" ({r['error']})" if r and r.get("error") else "")
            add(f"| {label} | {why} | | | | | | | | | |")
            continue
        poll, bad, srv = r["poll"], r["bad"], r["server"]
        limit = srv.get("nofile_soft")
        add(f"| {label} | {f(poll.get('requests'))} | {f(poll.get('failures'))} | {f(poll.get('p50_ms'), 1)} | "
            f"{f(poll.get('max_ms'), 1)} | {lifetimes(r['idle'])} | {lifetimes(r['slowloris'])} | "
            f"{f(bad.get('never_closed'))} of {f(bad.get('slots'))} | {f(bad.get('refused_or_reset'))} | "
            f"{f(srv.get('fds_max'))} ({f(limit) if isinstance(limit, int) else limit or 'n/a'}) | "
            f"{f(srv.get('rss_max_kb') and srv['rss_max_kb'] / 1024, 1)} |")
        if poll.get("failure_kinds"):
            kinds = ", ".join(f"{v} {k}" for k, v in sorted(poll["failure_kinds"].items(), key=lambda kv: -kv[1]))
            notes5.append(f"{label}: normal client failures: {kinds}.")
        if status != "ran":
            notes5.append(f"{label}: {status}.")
        elif srv.get("alive_at_end") is False:
            notes5.append(f"{label}: **the server exited during the window**.")
        timeouts = bad.get("connect_timeouts") or 0
        local = (r["idle"].get("local_errors") or 0) + (r["slowloris"].get("local_errors") or 0)
        if timeouts or local:
            notes5.append(f"{label}: {f(timeouts)} bad connects timed out (5 s)"
                          + (f", {f(local)} failed on the client's side (fds/ports)" if local else "") + ".")
        lag = poll.get("loop_lag_max_ms")
        if lag and lag >= 50:
            notes5.append(f"{label}: the normal client's own event loop ran up to {f(lag)} ms late (a busy load "
                          "core); its latencies include that.")
        if poll.get("error"):
            notes5.append(f"{label}: {poll['error']}.")
        if r.get("connect_budget_exhausted"):
            notes5.append(f"{label}: the client's connect budget ran out before the window ended.")
    add("")
    add(f"\"open the whole window\": bad connections the server never closed: they held their slot for all "
        f"{secs} s. Lifetimes are over the connections "
        "the server closed. \"refused / reset\": bad connects refused or reset before they were usable. "
        "Every number, the failure kinds and the per-second fd/RSS samples are in `p5-NAME.json` "
        "(`BENCH_KEEP=1`).")
    add("")
    for n5 in notes5:
        add(f"- {n5}")
    if notes5:
        add("")

# ---------------------------------------------------------------- parts 6, 7
import report_parts  # noqa: E402 - beside this file

report_parts.part6(F, add, targets, f)
report_parts.part7(W, F, add, targets, f)
report_parts.part8(W, F, add, f, targets)
report_parts.part9(W, F, add, f)

# ---------------------------------------------------------------- targets
add("## Targets")
add("")
add("| what | target | measured | |")
add("| --- | --- | --- | --- |")
for what, target, measured, ok in targets:
    add(f"| {what} | {target} | {measured} | {verdict(ok)} |")
add("")

notes = os.path.join(HERE, "reading.md")
if os.path.exists(notes):
    add(open(notes).read().rstrip())
    add("")

# Sections that other targets write into this page (`make soak`'s "## Soak",
# `make fuzz`'s "## Fuzz…") are not ours to drop: carried over as they are.
OTHER_TARGETS = ("## Soak", "## Fuzz")
if os.path.exists(OUT):
    keep = False
    kept = []
    for line in open(OUT).read().split("\n"):
        if line.startswith("## "):
            keep = line.startswith(OTHER_TARGETS)
        if keep:
            kept.append(line)
    if kept:
        lines += [""] if lines and lines[-1] else []
        lines += kept

with open(OUT, "w") as out:
    out.write("\n".join(lines))
print(OUT)
