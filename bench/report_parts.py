"""Parts 6 (instructions per request) and 7 (load-aware selection) of
BENCHMARKS.md, for bench/report.py. Standard library only."""

import json
import os
import re

SIZES = ("3", "1024", "65536", "1048576")
SIZE_NAME = {"3": "3 B", "1024": "1 KB", "65536": "64 KB", "1048576": "1 MB"}
TARGETS6 = ("roster", "roster-base", "bare", "bare-nt", "roster-h2c", "bare-h2c", "nginx", "haproxy")


def part6(F, add, targets, f):
    def ir(t, size):
        try:
            v = float(F[f"p6.{t}.{size}.ir_per_request"])
        except (KeyError, ValueError):
            return None
        return v or None

    sizes = [s for s in SIZES if any(ir(t, s) for t in TARGETS6)]
    if not sizes:
        return
    add("## 6. Instructions per request (callgrind)")
    add("")
    add(f"Each proxy under `valgrind --tool=callgrind`, pinned like part 1 (`--threads 1`, one nginx worker "
        f"with `master_process off`, HAProxy `nbthread 1`), in front of four backends "
        f"(`examples/loadaware.rs backends`, answering at once with a body of the given size). Two runs per "
        f"cell: {F.get('p6.warm', '?')} requests, then {F.get('p6.warm', '?')} + N (N = "
        f"{F.get('p6.count', '?')} for small bodies, fewer for 64 KB and 1 MB), one keep-alive connection, one "
        "request at a time (`bench/fixedclient.py`). Counters are zeroed just before the client starts and "
        "dumped when it ends (`callgrind_control -z`, `-d`), so start-up, registration and shutdown are not "
        "counted; the cell is the difference of the two windows divided by N, so the client's connection "
        "cancels out too. Instruction counts do not depend on the "
        "machine's load: this is the table to compare builds with. roster runs with every feature on "
        "(X-Forwarded-For, retries, ejection, metrics, listener limits), `--health-interval 1h` so checks do "
        "not fall inside the window. `roster-base` is the build before this round's changes (when measured), "
        "`bare-nt` bare pingora without peer timeouts. `roster-h2c` and `bare-h2c` speak HTTP/2 to the "
        "backends (h2c by prior knowledge: `roster lb --upstream-protocol h2c`, bare pingora with ALPN h2; "
        "the backends serve HTTP/2), the client still HTTP/1.1.")
    add("")
    add("| target | " + " | ".join(SIZE_NAME[s] for s in sizes) + " |")
    add("| --- |" + " ---: |" * len(sizes))
    for t in TARGETS6:
        if any(ir(t, s) for s in sizes):
            add(f"| {t} | " + " | ".join(f(ir(t, s)) for s in sizes) + " |")
    add("")
    add("| ratio | " + " | ".join(SIZE_NAME[s] for s in sizes) + " |")
    add("| --- |" + " ---: |" * len(sizes))
    for a, b in (("roster", "bare"), ("roster-base", "bare"), ("bare-nt", "bare"),
                 ("roster-h2c", "bare-h2c"), ("roster-h2c", "roster"), ("bare-h2c", "bare"),
                 ("bare", "nginx"), ("roster", "nginx"), ("bare", "haproxy")):
        cells = []
        for s in sizes:
            x, y = ir(a, s), ir(b, s)
            cells.append(f"{x / y:.3f}×" if x and y else "n/a")
        if any(c != "n/a" for c in cells):
            add(f"| {a} / {b} | " + " | ".join(cells) + " |")
    add("")
    x, y = ir("roster", sizes[0]), ir("bare", sizes[0])
    if x and y:
        targets.append(("roster / bare pingora, instructions per request", "≤ 1.02×", f"{x / y:.3f}×",
                        x / y <= 1.02))


def _results(W, sc, t):
    rs, r = [], 1
    while os.path.exists(os.path.join(W, f"p7-{sc}-{t}-{r}.json")):
        try:
            with open(os.path.join(W, f"p7-{sc}-{t}-{r}.json")) as fh:
                rs.append(json.loads(fh.read().strip().splitlines()[-1]))
        except (OSError, ValueError, IndexError):
            pass
        r += 1
    return rs


def part7(W, F, add, targets, f):
    names = (("roster-ll", "roster `least_loaded`"), ("roster-rr", "roster `round_robin`"),
             ("nginx", "nginx `least_conn`"), ("haproxy", "HAProxy `leastconn`"))
    scenarios = (F.get("p7.scenarios") or "").split()
    if not any(_results(W, sc, t) for sc in scenarios for t, _ in names):
        return
    add("## 7. Load-aware selection: two LB replicas, one degraded backend")
    add("")
    add(f"Two replicas of each LB share four backends (`examples/loadaware.rs backends`: "
        f"{F.get('p7.workers')} requests served at once per backend, the rest queued; "
        f"{F.get('p7.service_ms')} ms of work per request). One backend is degraded: in `slow` each of its "
        f"requests takes {F.get('p7.slow_factor')}× as long; in `busy` it is as fast but clients that no LB "
        f"here routes keep {F.get('p7.external')} requests queued on it (another workload sharing the "
        f"backend). An open-loop client sends {F.get('p7.rate')} requests/s for {F.get('p7.seconds')} s "
        "(after a warm-up), alternating between the two replicas, and measures each latency from the moment "
        "the request was due, so queueing shows. The backends' vitals report `requests_in_progress` (being "
        "served) and `backoff_requests` (queued): every client's load. roster checks vitals every 1 s; "
        "nginx `least_conn` and HAProxy `leastconn` count only their own connections. Both replicas pinned "
        "to the proxy core, client and backends to the load core. Bench: `bench/loadaware.sh`.")
    add("")
    add("| scenario | LB pair | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | ok | errors | degraded share |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for sc in scenarios:
        med = {}
        for t, label in names:
            rs = _results(W, sc, t)
            if not rs:
                add(f"| {sc} | {label} | not run ({F.get(f'p7.{sc}.{t}.status', 'no result')}) | | | | | | | |")
                continue

            def m(k):
                vals = sorted(r.get(k, 0) for r in rs)
                return vals[len(vals) // 2]
            v = med[t] = {k: m(k) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "ok", "errors")}
            share = F.get(f"p7.{sc}.{t}.slow_share")
            share = f"{float(share) * 100:.2f}%" if share not in (None, "n/a") else "-"
            add(f"| {sc} | {label} | {f(v['p50_ms'], 2)} | {f(v['p90_ms'], 2)} | {f(v['p99_ms'], 2)} | "
                f"{f(v['p999_ms'], 2)} | {f(v['max_ms'], 1)} | {f(v['ok'])} | {f(v['errors'])} | {share} |")
        peers = [t for t in ("nginx", "haproxy") if t in med]
        if "roster-ll" in med and peers:
            best = min(med[t]["p99_ms"] for t in peers)
            q = med["roster-ll"]["p99_ms"] / best if best else None
            summary.append(f"`{sc}`: **{f(q, 2)}×**")
            targets.append((f"load-aware p99 ({sc}), roster least_loaded / best least-connections peer",
                            "< 1.0× (clearly)", f"{f(q, 2)}×", None if q is None else q < 0.9))
    add("")
    if summary:
        add("roster `least_loaded` p99 / the better peer's p99: " + ", ".join(summary) + ".")
        add("")


def _wrk_rps(path):
    try:
        for line in open(path):
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def part8(W, F, add, f, targets):
    """Part 8: one LB tier for many services."""
    if "p8.services" not in F:
        return
    rounds = int(F.get("rounds", "0") or 0)
    rps = {t: [v for r in range(1, rounds + 1) if (v := _wrk_rps(os.path.join(W, f"p8-{t}-{r}.txt")))]
           for t in ("one", "many")}
    med = {t: sorted(v)[len(v) // 2] if v else None for t, v in rps.items()}
    add("## 8. One LB tier, many services")
    add("")
    add(f"One LB with {F.get('backends')} backends across {F['p8.services']} services (10 each, one host "
        "route per service, checked every 5 s, its control plane on the load core as in part 2) against one with a "
        "single service of 10 backends and no "
        "routes; wrk sends `Host: svc-7.bench` to both (the big LB routes it to one 10-backend service), "
        f"{rounds} alternating rounds, medians. Target: at 1,000 services ≥ 0.95× the one-service req/s.")
    add("")
    add("| | one service | 1,000 services | ratio |")
    add("| --- | ---: | ---: | ---: |")
    ratio = (med["many"] / med["one"]) if med["one"] and med["many"] else None
    add(f"| req/s (median) | {med['one'] or '-'} | {med['many'] or '-'} | "
        f"{f'{ratio:.3f}×' if ratio else '-'} ({'met' if ratio and ratio >= 0.95 else 'missed'}) |")
    add(f"| RSS | {F.get('p8.rss_one_kb', '-')} kB | {F.get('p8.rss_many_kb', '-')} kB | |")
    add("")
    add(f"Per round (alternating): one {', '.join(f'{v:,.0f}' for v in rps['one'])}, "
        f"1,000 services {', '.join(f'{v:,.0f}' for v in rps['many'])} req/s.")
    add("")
    co = {t: [v for r in range(1, rounds + 1) if (v := _wrk_rps(os.path.join(W, f"p8co-{t}-{r}.txt")))]
          for t in ("one", "many")}
    what = "1,000 services vs one (part 8)"
    if co["one"] and len(co["one"]) == len(co["many"]):
        qs = sorted(m / o for m, o in zip(co["many"], co["one"]))
        cq = qs[len(qs) // 2]
        add(f"**Co-run** (both loaded at once, sharing the proxy core, as in part 1): one "
            f"{', '.join(f'{v:,.0f}' for v in co['one'])}, 1,000 services "
            f"{', '.join(f'{v:,.0f}' for v in co['many'])} req/s; ratio per round "
            f"{', '.join(f'{q:.3f}' for q in qs)} (sorted), median **{cq:.3f}×**. The target row uses this.")
        targets.append((what + ", co-run", "≥ 0.95× req/s", f"{cq:.3f}×", cq >= 0.95))
    else:
        targets.append((what, "≥ 0.95× req/s",
                        f"{ratio:.3f}×" if ratio else "not run", None if ratio is None else ratio >= 0.95))
    add("")
    add(f"All {F.get('backends')} routable {F.get('p8.all_routable_s', '?')} s after the first registration; "
        f"with every backend checked every 5 s the LB used {F.get('p8.checks.cpu_percent', '?')}% of a core "
        f"(RSS {F.get('p8.checks.rss_kb', '?')} kB).")
    add("")


def _h2load(path):
    """req/s, mean latency (ms) and failed requests of one h2load run."""
    r = {"rps": None, "mean": None, "bad": 0}
    try:
        text = open(path).read()
    except OSError:
        return r
    m = re.search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^requests: (\d+) total", text, re.M)
    ok = re.search(r"^status codes: (\d+) 2xx", text, re.M)
    if m:
        r["bad"] = int(m.group(1)) - (int(ok.group(1)) if ok else 0)
    m = re.search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", text, re.M)
    if m:
        v = re.fullmatch(r"([\d.]+)(us|ms|s)", m.group(1))
        if v:
            r["mean"] = float(v.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[v.group(2)]
    return r


def _wrk(path):
    r = {"rps": _wrk_rps(path), "mean": None, "bad": 0}
    try:
        text = open(path).read()
    except OSError:
        return r
    m = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s)", text, re.M)
    if m:
        r["mean"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        m = re.search(pat, text)
        if m:
            r["bad"] += sum(int(x) for x in m.groups())
    return r


def part9(W, F, add, f):
    """Part 9: h2c and TLS through roster, nginx and HAProxy."""
    if "p9.streams" not in F:
        return
    rounds = int(F.get("rounds", "0") or 0)
    targets = ("roster", "nginx", "haproxy")
    rows = (("h2c", f"h2c, prior knowledge, {F['p9.streams']} streams/conn (h2load)", _h2load),
            ("tls-h1", "TLS HTTP/1.1 (wrk)", _wrk),
            ("tls-h2", f"TLS HTTP/2, ALPN h2, {F['p9.streams']} streams/conn (h2load)", _h2load))
    add("## 9. Protocols: h2c and TLS")
    add("")
    add("roster, nginx and HAProxy with the same certificate (ECDSA P-256) and the same four backends "
        "(HTTP/1.1 keep-alive upstream for all three), placed as in part 1; "
        f"{F.get('connections')} client connections, {F.get('duration')} s per run, {rounds} alternating "
        f"rounds after a 2 s warm-up, medians. {F.get('p9.h2load_version', 'h2load')}. "
        "Mean latency is per request (h2load: `time for request` mean; wrk: `Latency` avg).")
    add("")
    add("| row | roster req/s | nginx req/s | HAProxy req/s | roster/nginx | roster/HAProxy "
        "| mean ms roster / nginx / HAProxy | failed |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for row, label, parse in rows:
        med, mean, bad = {}, {}, {}
        for t in targets:
            rs = [parse(os.path.join(W, f"p9-{row}-{t}-{r}.txt")) for r in range(1, rounds + 1)]
            rps = sorted(x["rps"] for x in rs if x["rps"] is not None)
            ms = sorted(x["mean"] for x in rs if x["mean"] is not None)
            med[t] = rps[len(rps) // 2] if rps else None
            mean[t] = ms[len(ms) // 2] if ms else None
            bad[t] = sum(x["bad"] for x in rs)

        def rel(a, b):
            return f"{med[a] / med[b]:.2f}×" if med[a] and med[b] else "-"
        add(f"| {label} | {f(med['roster'])} | {f(med['nginx'])} | {f(med['haproxy'])} | "
            f"{rel('roster', 'nginx')} | {rel('roster', 'haproxy')} | "
            f"{' / '.join(f(mean[t], 2) for t in targets)} | "
            f"{' / '.join(str(bad[t]) for t in targets)} |")
    add("")
    add(f"roster RSS after the part: {F.get('p9.roster_rss_kb', '-')} kB. Raw runs: `p9-ROW-TARGET-ROUND.txt` "
        "(`BENCH_KEEP=1`).")
    add("")
