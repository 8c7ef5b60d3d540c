// roster operator page: polls GET /registry and GET /telemetry (same origin,
// read-only) and renders a virtualised list of every backend. See
// src/lb/ui.rs for why a virtualised list and how it scales.
'use strict';
(() => {
  const ROW_H = 44;              // must match --row-h in app.css
  const OVERSCAN = 8;            // rows rendered above and below the view
  const BASE_POLL_MS = 1500;
  const HIDDEN_POLL_MS = 10000;
  const MAX_POLL_MS = 15000;
  const WINDOW_MS = 5 * 60 * 1000;  // history kept for the charts
  const SAMPLE_MS = 3000;        // one history sample per backend at most this often
  const HIST = Math.ceil(WINDOW_MS / SAMPLE_MS) + 2;
  const RATE_LOOKBACK_MS = 15000; // failed/s is a rate over this span
  const RPS_LOOKBACK_MS = 10000;  // requests/s likewise
  const M_CPU = 0, M_MEM = 1, M_RIP = 2, M_FAIL = 3;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const STATUS = {
    unhealthy: { label: 'unhealthy', rank: 0 },
    ejected: { label: 'ejected', rank: 1 },
    not_ready: { label: 'not ready', rank: 2 },
    draining: { label: 'draining', rank: 3 },
    healthy: { label: 'healthy', rank: 4 },
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    host: $('lb-host'), total: $('s-total'), routable: $('s-routable'), rps: $('s-rps'),
    rpsSpark: $('s-rps-spark'), err: $('s-err'), digest: $('s-digest'), updated: $('s-updated'),
    panic: $('panic'), problem: $('problem'), filters: $('filters'), search: $('search'),
    sort: $('sort'), viewport: $('viewport'), spacer: $('spacer'), empty: $('empty'),
    detail: $('detail'), dState: $('d-state'), dId: $('d-id'), dWhy: $('d-why'),
    dFields: $('d-fields'), dCharts: $('d-charts'), dClose: $('d-close'),
    shown: $('f-shown'), poll: $('f-poll'), service: $('service'),
  };

  // ---- state --------------------------------------------------------------
  const recs = new Map();                 // service/id -> record
  const times = new Float64Array(HIST).fill(NaN);
  let head = -1;                          // newest history slot
  let lastSampleAt = -Infinity;
  let firstSampleAt = 0;
  let view = [];                          // filtered + sorted records
  let data = null;                        // last /registry answer
  let lastOk = 0;                         // Date.now() of the last good poll
  let scrapes = [];                       // recent /telemetry totals
  const rpsHist = [];                     // [t, requests/s] for the header chart
  let pollDelay = BASE_POLL_MS;
  let pollTimer = 0;
  let lastCost = 0;
  let lastRenderMs = 0;
  const ui = { filter: 'all', q: '', sort: 'trouble', sel: '', svc: '' };
  const stats = { polls: 0, lastPollMs: 0, lastParseMs: 0, lastApplyMs: 0, lastRenderMs: 0, entries: 0 };
  window.__roster = stats;                // read by the browser test

  const statusOf = (e) => (e.state === 'draining' ? 'draining' : e.ejected ? 'ejected' : e.state);

  // ---- formatting ---------------------------------------------------------
  function fmtDur(s) {
    if (!Number.isFinite(s)) return '–';
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm' + (s % 60 ? ' ' + (s % 60) + 's' : '');
    if (s < 86400) return Math.floor(s / 3600) + 'h' + (Math.floor(s / 60) % 60 ? ' ' + (Math.floor(s / 60) % 60) + 'm' : '');
    return Math.floor(s / 86400) + 'd ' + (Math.floor(s / 3600) % 24) + 'h';
  }
  function fmtNum(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(v)) return '–';
    if (v === 0) return '0';
    if (Math.abs(v) >= 10000) return (v / 1000).toFixed(0) + 'k';
    if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + 'k';
    return v.toFixed(digits === undefined ? (Math.abs(v) < 9.95 && v % 1 ? 1 : 0) : digits);
  }
  function ago(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? fmtDur((Date.now() - t) / 1000) + ' ago' : '–';
  }
  function whyText(r) {
    const e = r.e;
    if (e.ejected) return 'ejected: ' + e.ejected;
    if (e.state === 'draining') return 'draining: deregistering, finishing in-flight requests';
    if (e.last_error) return e.last_error;
    if (!e.last_check) return 'not checked yet';
    if (!e.routable) return 'passing checks, not routed yet';
    const v = e.vitals;
    return v ? [v.version && 'v' + v.version, 'up ' + fmtDur(v.uptime_seconds)].filter(Boolean).join(' · ') : '';
  }

  // ---- history rings --------------------------------------------------------
  function newRec(e) {
    const hist = new Float32Array(4 * HIST).fill(NaN);
    return { id: e.id, key: keyOf(e), e, st: statusOf(e), hist, ord: 0, idLower: e.id.toLowerCase(), addrLower: e.address.toLowerCase(), failRate: NaN, rps: NaN };
  }
  // The slot at least `ms` older than slot `s` (or the oldest one kept).
  function slotBack(s, ms) {
    const t = times[s];
    let best = -1;
    for (let k = 1; k < HIST; k++) {
      const b = (s - k + HIST) % HIST;
      const tb = times[b];
      if (!(tb < t)) break; // unused, or wrapped round to newer samples
      best = b;
      if (t - tb >= ms) break;
    }
    return best;
  }
  function failRateAt(r, s, back) {
    if (back < 0) return NaN;
    const c = r.hist[M_FAIL * HIST + s], cb = r.hist[M_FAIL * HIST + back];
    const dt = (times[s] - times[back]) / 1000;
    if (!Number.isFinite(c) || !Number.isFinite(cb) || dt <= 0 || c < cb) return NaN;
    return (c - cb) / dt;
  }

  // ---- applying one poll --------------------------------------------------
  // An id is unique within its service only.
  const keyOf = (e) => (e.service || '') + '/' + e.id;

  function apply(reg, now) {
    const seen = new Set();
    let changed = false;
    for (const e of reg.backends) {
      const key = keyOf(e);
      seen.add(key);
      let r = recs.get(key);
      if (!r || r.e.address !== e.address) {
        r = newRec(e);
        recs.set(key, r);
        changed = true;
      }
      r.e = e;
      r.st = statusOf(e);
    }
    for (const id of recs.keys()) {
      if (!seen.has(id)) { recs.delete(id); changed = true; }
    }
    if (changed) {
      // Natural order (backend-2 before backend-10), ranked only when the id
      // set changes so every sort can break ties on an integer.
      const ids = Array.from(recs.keys()).sort(new Intl.Collator('en', { numeric: true }).compare);
      ids.forEach((id, i) => { recs.get(id).ord = i; });
    }
    if (now - lastSampleAt >= SAMPLE_MS) {
      lastSampleAt = now;
      if (!firstSampleAt) firstSampleAt = now;
      head = (head + 1) % HIST;
      times[head] = now;
      const back = slotBack(head, RATE_LOOKBACK_MS);
      for (const r of recs.values()) {
        const v = r.e.vitals, h = r.hist;
        h[M_CPU * HIST + head] = v ? v.cpu_usage : NaN;
        h[M_MEM * HIST + head] = v ? v.memory_usage : NaN;
        h[M_RIP * HIST + head] = v ? v.requests_in_progress : NaN;
        h[M_FAIL * HIST + head] = v ? v.failed_responses : NaN;
        r.failRate = failRateAt(r, head, back);
      }
    }
  }

  function parseTelemetry(text) {
    let total = 0, bad = 0;
    const per = new Map();
    for (const line of text.split('\n')) {
      if (line.startsWith('roster_lb_request_duration_seconds_count')) {
        const v = Number(line.slice(line.lastIndexOf(' ') + 1));
        if (!Number.isFinite(v)) continue;
        total += v;
        if (line.includes('code_class="5xx"') || line.includes('code_class="error"')) bad += v;
      } else if (line.startsWith('roster_lb_requests_total{')) {
        const i = line.indexOf('backend="');
        if (i < 0) continue;
        const j = line.indexOf('"', i + 9);
        const b = line.slice(i + 9, j);
        const v = Number(line.slice(line.lastIndexOf(' ') + 1));
        if (Number.isFinite(v)) per.set(b, (per.get(b) || 0) + v);
      }
    }
    return { total, bad, per };
  }

  function applyTelemetry(sc, now) {
    if (!sc) {
      for (const r of recs.values()) r.rps = NaN;
      el.rps.textContent = '–';
      el.err.textContent = '–';
      return;
    }
    sc.t = now;
    const prev = scrapes[scrapes.length - 1];
    if (prev && sc.total < prev.total) scrapes = []; // LB restarted
    scrapes.push(sc);
    while (scrapes.length > 2 && now - scrapes[1].t >= RPS_LOOKBACK_MS) scrapes.shift();
    const ref = scrapes[0];
    const dt = (sc.t - ref.t) / 1000;
    if (ref === sc || dt <= 0) {
      el.rps.textContent = '–';
      el.err.textContent = '–';
      for (const r of recs.values()) r.rps = NaN;
      return;
    }
    const rps = (sc.total - ref.total) / dt;
    const reqs = sc.total - ref.total, bads = sc.bad - ref.bad;
    el.rps.textContent = fmtNum(rps);
    el.err.textContent = reqs > 0 ? (100 * bads / reqs).toFixed(bads ? 1 : 0) + '%' : '–';
    rpsHist.push([now, rps]);
    while (rpsHist.length && rpsHist[0][0] < now - WINDOW_MS) rpsHist.shift();
    drawPath(el.rpsSpark.firstElementChild, 80, 22, now, rpsHist.length, (i) => rpsHist[i][0], (i) => rpsHist[i][1], 0);
    for (const r of recs.values()) {
      const a = sc.per.get(r.e.address), b = ref.per.get(r.e.address) || 0;
      r.rps = a === undefined ? 0 : Math.max(0, (a - b) / dt);
    }
  }

  // ---- filtering and sorting ----------------------------------------------
  const byOrd = (a, b) => a.ord - b.ord;
  const desc = (f) => (a, b) => {
    const x = f(a), y = f(b);
    const fx = Number.isFinite(x), fy = Number.isFinite(y);
    if (fx !== fy) return fx ? -1 : 1;
    return (fx && y !== x ? y - x : 0) || a.ord - b.ord;
  };
  const vit = (k) => (r) => (r.e.vitals ? r.e.vitals[k] : NaN);
  const SORTS = {
    trouble: (a, b) => STATUS[a.st].rank - STATUS[b.st].rank || (a.e.routable - b.e.routable) || a.ord - b.ord,
    id: byOrd,
    cpu: desc(vit('cpu_usage')),
    mem: desc(vit('memory_usage')),
    rip: desc(vit('requests_in_progress')),
    fail: desc((r) => r.failRate),
    rps: desc((r) => r.rps),
    lease: (a, b) => a.e.lease_expires_in_seconds - b.e.lease_expires_in_seconds || a.ord - b.ord,
  };

  function refilter() {
    const counts = { all: 0, healthy: 0, unhealthy: 0, not_ready: 0, draining: 0, ejected: 0, out: 0 };
    const q = ui.q.trim().toLowerCase();
    const f = ui.filter;
    const out = [];
    for (const r of recs.values()) {
      counts.all++;
      counts[r.st]++;
      if (!r.e.routable) counts.out++;
      if (f !== 'all' && (f === 'out' ? r.e.routable : r.st !== f)) continue;
      if (q && !r.idLower.includes(q) && !r.addrLower.includes(q)) continue;
      out.push(r);
    }
    // Grouped by service, then the chosen order within each.
    const within = SORTS[ui.sort] || SORTS.trouble;
    out.sort((a, b) => (a.e.service || '').localeCompare(b.e.service || '') || within(a, b));
    view = out;
    for (const b of el.filters.querySelectorAll('b[data-count]')) b.textContent = counts[b.dataset.count];
    return counts;
  }

  // ---- sparklines ---------------------------------------------------------
  // The charts span what this tab has seen, 20 s to 5 min, so a freshly
  // opened page uses the full width too.
  const MIN_SPAN_MS = 20000;
  function span(now) {
    return firstSampleAt ? Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - firstSampleAt)) : MIN_SPAN_MS;
  }
  // `x(i)` time, `y(i)` value for i in [0, n); gaps (NaN) break the line.
  function drawPath(path, w, h, now, n, x, y, floorMax) {
    let max = floorMax;
    for (let i = 0; i < n; i++) { const v = y(i); if (v > max) max = v; }
    if (!(max > 0)) max = 1;
    const sp = span(now), t0 = now - sp;
    let d = '', pen = false;
    for (let i = 0; i < n; i++) {
      const t = x(i), v = y(i);
      if (!(t >= t0) || !Number.isFinite(v)) { pen = false; continue; }
      const px = ((t - t0) / sp) * w;
      const py = h - 1 - (Math.min(v, max) / max) * (h - 2);
      d += (pen ? 'L' : 'M') + px.toFixed(1) + ' ' + py.toFixed(1);
      pen = true;
    }
    path.setAttribute('d', d);
    return max;
  }
  function drawMetric(path, r, m, w, h, now) {
    if (head < 0) { path.setAttribute('d', ''); return 0; }
    const start = (head + 1) % HIST;
    const slot = (i) => (start + i) % HIST;
    const base = m * HIST;
    const y = m === M_FAIL
      ? (i) => failRateAt(r, slot(i), slotBack(slot(i), RATE_LOOKBACK_MS))
      : (i) => r.hist[base + slot(i)];
    return drawPath(path, w, h, now, HIST, (i) => times[slot(i)], y, m === M_CPU || m === M_MEM ? 100 : 1);
  }
  function spark(cls, w, h) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('aria-hidden', 'true');
    svg.appendChild(document.createElementNS(SVG_NS, 'path'));
    const wrap = document.createElement('span');
    wrap.className = 'metric ' + cls;
    wrap.setAttribute('role', 'cell');
    wrap.appendChild(svg);
    const v = document.createElement('span');
    v.className = 'v';
    wrap.appendChild(v);
    return wrap;
  }

  // ---- the virtualised rows -----------------------------------------------
  const pool = [];
  function makeRow() {
    const row = document.createElement('div');
    row.className = 'row';
    row.setAttribute('role', 'row');
    const cell = (cls) => {
      const s = document.createElement('span');
      s.setAttribute('role', 'cell');
      if (cls) s.className = cls;
      row.appendChild(s);
      return s;
    };
    const c0 = cell('');
    row._chip = document.createElement('span');
    c0.appendChild(row._chip);
    row._tag = document.createElement('span');
    row._tag.className = 'tag';
    c0.appendChild(row._tag);
    const who = cell('who');
    row._id = document.createElement('span');
    row._id.className = 'id';
    row._addr = document.createElement('span');
    row._addr.className = 'addr';
    row._svc = document.createElement('span');
    row._svc.className = 'svc';
    who.append(row._svc, row._id, row._addr);
    row._why = cell('why');
    row._lease = cell('num lease');
    row._rps = cell('num');
    row._m = ['m-cpu', 'm-mem', 'm-rip', 'm-fail'].map((c) => {
      const s = spark(c, 72, 22);
      row.appendChild(s);
      return { path: s.firstChild.firstChild, v: s.lastChild };
    });
    row.addEventListener('click', () => select(row.dataset.key === ui.sel ? '' : row.dataset.key));
    el.spacer.appendChild(row);
    return row;
  }

  function fillRow(row, r, i, now) {
    const e = r.e, st = r.st;
    row.style.transform = `translateY(${i * ROW_H}px)`;
    if (row.dataset.id !== e.id) row.dataset.id = e.id;
    row.dataset.key = r.key;
    row.dataset.service = e.service || '';
    row._svc.textContent = e.service || '';
    row.dataset.state = st;
    row.classList.toggle('sel', r.key === ui.sel);
    row._chip.className = 'chip st-' + st;
    row._chip.textContent = STATUS[st].label;
    // Panic mode routes to backends whose state says otherwise: say so.
    const tag = e.routable && st !== 'healthy' ? 'routed' : (!e.routable && st === 'healthy' ? 'out' : '');
    row._tag.textContent = tag;
    row._tag.hidden = !tag;
    row._id.textContent = e.id;
    row._id.title = e.id;
    row._addr.textContent = e.address + (e.weight !== 1 ? '  ×' + e.weight : '');
    const why = whyText(r);
    // The row already shows the address: lead with what went wrong (the
    // tooltip and the detail keep the whole message).
    row._why.textContent = why.replace(/^GET \S+: /, '');
    row._why.title = why;
    row._why.className = e.routable ? 'why' : 'why bad-' + st;
    row._lease.textContent = fmtDur(e.lease_expires_in_seconds);
    row._lease.classList.toggle('low', e.lease_expires_in_seconds < 10);
    row._rps.textContent = fmtNum(r.rps);
    const v = e.vitals;
    const cur = [v && v.cpu_usage, v && v.memory_usage, v && v.requests_in_progress, r.failRate];
    for (let m = 0; m < 4; m++) {
      drawMetric(row._m[m].path, r, m, 72, 22, now);
      row._m[m].v.textContent = fmtNum(cur[m]);
    }
  }

  function renderRows() {
    const t0 = performance.now();
    const now = Date.now();
    el.spacer.style.height = view.length * ROW_H + 'px';
    const top = el.viewport.scrollTop, hgt = el.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((top + hgt) / ROW_H) + OVERSCAN);
    const need = last - first;
    while (pool.length < need) pool.push(makeRow());
    for (let k = 0; k < pool.length; k++) {
      const row = pool[k];
      if (k < need) {
        row.hidden = false;
        fillRow(row, view[first + k], first + k, now);
      } else if (!row.hidden) {
        row.hidden = true;
        row.dataset.id = '';
      }
    }
    const total = recs.size;
    el.empty.hidden = view.length > 0 || !data;
    el.empty.textContent = total === 0
      ? 'No backend registered yet. Agents announce themselves with POST /register to this port.'
      : 'No backend matches this filter.';
    el.shown.textContent = `showing ${view.length} of ${total} backends`;
    lastRenderMs = performance.now() - t0;
    stats.lastRenderMs = lastRenderMs;
  }

  let rafPending = false;
  function scheduleRows() {
    if (rafPending) return;
    rafPending = true;
    requestAnimationFrame(() => { rafPending = false; renderRows(); });
  }

  // ---- header and detail ----------------------------------------------------
  function renderHeader(counts) {
    if (!data) return;
    el.total.textContent = counts.all;
    el.routable.textContent = counts.all - counts.out;
    el.digest.textContent = data.digest;
    el.panic.hidden = !data.panic;
    document.title = (data.panic ? 'PANIC · ' : '') + `roster · ${counts.all - counts.out}/${counts.all} routable`;
  }

  function renderUpdated() {
    if (!lastOk) return;
    const age = (Date.now() - lastOk) / 1000;
    el.updated.textContent = age < 3 ? 'live' : fmtDur(age) + ' ago';
    el.updated.classList.toggle('stale', age > Math.max(10, 3 * pollDelay / 1000));
  }

  function select(id) {
    ui.sel = id;
    writeHash();
    renderDetail();
    scheduleRows();
  }

  const CHARTS = [
    ['cpu %', M_CPU, 'm-cpu'], ['memory %', M_MEM, 'm-mem'],
    ['requests in progress', M_RIP, 'm-rip'], ['failed responses/s', M_FAIL, 'm-fail'],
  ];
  let chartPaths = null;
  function renderDetail() {
    const r = ui.sel && recs.get(ui.sel);
    el.detail.hidden = !r;
    if (!r) return;
    const e = r.e, v = e.vitals || {};
    el.dState.className = 'chip st-' + r.st;
    el.dState.textContent = STATUS[r.st].label;
    el.dId.textContent = e.id;
    el.dWhy.textContent = whyText(r);
    const rows = [
      ['service', e.service], ['address', e.address], ['metrics port', e.metrics_port],
      ['weight', e.weight], ['in pool', e.routable ? (r.st === 'healthy' ? 'yes' : 'yes (panic mode)') : 'no'],
      ['last check', e.last_check ? ago(e.last_check) : 'never'], ['lease left', fmtDur(e.lease_expires_in_seconds)],
      ['in flight (LB)', e.in_flight], ['requests/s', fmtNum(r.rps)],
      ['ready', e.vitals ? String(v.ready) : '–'], ['in progress', fmtNum(v.requests_in_progress)],
      ['cpu', fmtNum(v.cpu_usage) + ' %'], ['memory', fmtNum(v.memory_usage) + ' %'],
      ['gpu', fmtNum(v.gpu_usage) + ' %'], ['failed total', fmtNum(v.failed_responses)],
      ['peers', fmtNum(v.connected_peers)], ['backoff', fmtNum(v.backoff_requests)],
      ['uptime', fmtDur(v.uptime_seconds)], ['version', v.version || '–'],
    ];
    el.dFields.replaceChildren(...rows.flatMap(([k, val]) => {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = String(val);
      return [dt, dd];
    }));
    if (!chartPaths) {
      chartPaths = CHARTS.map(([label, , cls]) => {
        const fig = document.createElement('figure');
        fig.className = cls;
        const cap = document.createElement('figcaption');
        const s = spark(cls, 240, 54);
        s.lastChild.remove();
        fig.append(cap, s.firstChild);
        el.dCharts.appendChild(fig);
        return { cap, path: fig.lastChild.firstChild, label };
      });
    }
    const now = Date.now();
    CHARTS.forEach(([, m], k) => {
      const max = drawMetric(chartPaths[k].path, r, m, 240, 54, now);
      chartPaths[k].cap.textContent = `${chartPaths[k].label} · last ${fmtDur(span(now) / 1000)} · 0–${fmtNum(max)}`;
    });
  }

  // ---- polling ------------------------------------------------------------
  function showProblem(msg) {
    el.problem.hidden = !msg;
    el.problem.textContent = msg || '';
  }

  async function getText(path) {
    const res = await fetch(path, { cache: 'no-store', credentials: 'same-origin', headers: { accept: '*/*' } });
    if (!res.ok) {
      const err = new Error(`${path}: HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return res.text();
  }

  let polling = false;
  async function poll() {
    // One poll at a time, one timer chain (visibilitychange may call in).
    if (polling) return;
    polling = true;
    clearTimeout(pollTimer);
    const t0 = performance.now();
    try {
      const [regText, telText] = await Promise.all([
        getText(ui.svc ? '/registry?service=' + encodeURIComponent(ui.svc) : '/registry'),
        getText('/telemetry').catch(() => null),
        getText('/services').then(fillServices).catch(() => null),
      ]);
      const t1 = performance.now();
      const reg = JSON.parse(regText);
      const tel = telText === null ? null : parseTelemetry(telText);
      const t2 = performance.now();
      const now = Date.now();
      data = reg;
      apply(reg, now);
      applyTelemetry(tel, now);
      const counts = refilter();
      const t3 = performance.now();
      renderHeader(counts);
      renderRows();
      renderDetail();
      lastOk = now;
      showProblem('');
      Object.assign(stats, {
        polls: stats.polls + 1, entries: reg.backends.length, lastPollMs: t1 - t0,
        lastParseMs: t2 - t1, lastApplyMs: t3 - t2, bytes: regText.length,
      });
      lastCost = performance.now() - t0;
    } catch (err) {
      lastCost = performance.now() - t0;
      if (err.status === 401) {
        showProblem('401: this LB protects reads (registration.protect_reads); open the page through something that sends its bearer token.');
      } else {
        const since = lastOk ? ` Showing what it said ${fmtDur((Date.now() - lastOk) / 1000)} ago.` : '';
        showProblem(`Cannot read the registry (${err.message || err}); retrying.${since}`);
      }
    }
    // Back off when a poll is expensive (10,000 entries is a few MB of JSON).
    pollDelay = Math.min(MAX_POLL_MS, Math.max(BASE_POLL_MS, 4 * lastCost));
    if (document.hidden) pollDelay = Math.max(pollDelay, HIDDEN_POLL_MS);
    el.poll.textContent = `refresh every ${(pollDelay / 1000).toFixed(1)} s · last poll ${Math.round(lastCost)} ms · rows drawn in ${lastRenderMs.toFixed(1)} ms`;
    renderUpdated();
    polling = false;
    pollTimer = setTimeout(poll, pollDelay);
  }

  // The service filter's choices, from GET /services.
  function fillServices(text) {
    const names = JSON.parse(text).map((s) => s.name);
    const want = ['', ...names];
    const have = Array.from(el.service.options).map((o) => o.value);
    if (want.join('\n') !== have.join('\n')) {
      el.service.replaceChildren(...want.map((n) => new Option(n || 'all services', n)));
    }
    el.service.value = ui.svc;
  }

  // ---- controls and URL state ---------------------------------------------
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    ui.filter = p.get('state') || 'all';
    ui.q = p.get('q') || '';
    ui.sort = SORTS[p.get('sort')] ? p.get('sort') : 'trouble';
    ui.sel = p.get('id') || '';
    ui.svc = p.get('service') || '';
    el.search.value = ui.q;
    el.sort.value = ui.sort;
    for (const b of el.filters.querySelectorAll('button')) b.classList.toggle('on', b.dataset.filter === ui.filter);
  }
  function writeHash() {
    const p = new URLSearchParams();
    if (ui.filter !== 'all') p.set('state', ui.filter);
    if (ui.q) p.set('q', ui.q);
    if (ui.sort !== 'trouble') p.set('sort', ui.sort);
    if (ui.sel) p.set('id', ui.sel);
    if (ui.svc) p.set('service', ui.svc);
    const h = p.toString();
    history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
  }
  function changed() {
    writeHash();
    refilter();
    renderRows();
  }

  el.filters.addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    ui.filter = b.dataset.filter;
    for (const o of el.filters.querySelectorAll('button')) o.classList.toggle('on', o === b);
    el.viewport.scrollTop = 0;
    changed();
  });
  let searchTimer = 0;
  el.search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { ui.q = el.search.value; el.viewport.scrollTop = 0; changed(); }, 80);
  });
  el.sort.addEventListener('change', () => { ui.sort = el.sort.value; changed(); });
  el.service.addEventListener('change', () => {
    ui.svc = el.service.value;
    recs.clear();
    writeHash();
    poll();
  });
  el.viewport.addEventListener('scroll', scheduleRows, { passive: true });
  window.addEventListener('resize', scheduleRows);
  el.dClose.addEventListener('click', () => select(''));
  document.addEventListener('keydown', (ev) => {
    if (ev.key === '/' && document.activeElement !== el.search) { ev.preventDefault(); el.search.focus(); }
    if (ev.key === 'Escape') {
      if (ui.sel) select('');
      else if (document.activeElement === el.search && el.search.value) { el.search.value = ''; ui.q = ''; changed(); }
    }
  });
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
  window.addEventListener('hashchange', () => { readHash(); changed(); renderDetail(); });
  setInterval(renderUpdated, 1000);

  el.host.textContent = location.host;
  readHash();
  poll();
})();
