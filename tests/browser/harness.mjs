// Shared by ui.spec.mjs and scale.mjs: a real `roster lb` child process,
// in-process fake backends (app + vitals), and headless Chromium through
// playwright-core. Every child started here is killed on exit.
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.ROSTER_BIN || path.join(ROOT, 'target/debug/roster');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Test IPs for this suite: 127.0.70.0/24 (the spec), 127.0.71.0/24 (scale).
export const IP = process.env.UI_IP || '127.0.70.1';

const children = new Set();
const servers = new Set();
function killAll() {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch { /* already gone */ }
  }
  children.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { killAll(); process.exit(130); });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `f` every 100 ms until it returns a truthy value; throw after `ms`. */
export async function waitFor(what, ms, f) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}

/** A port free on `ip` now (bound, then released). */
export function freePort(ip) {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, ip, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function listen(server, ip) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, ip, () => resolve(server.address().port));
    servers.add(server);
  });
}

/**
 * A fake backend: an app that answers with its id (and answers every
 * `failEvery`-th request with a 503; 1 = always), and a vitals server whose `ready` and HTTP status the
 * test controls. cpu/memory wander so the sparklines have something to draw.
 */
export async function fakeBackend(id, ip, opts = {}) {
  const b = {
    id, ready: opts.ready ?? true, vitalsStatus: opts.vitalsStatus ?? 200,
    failEvery: opts.failEvery ?? 0, served: 0, failed: 0, inProgress: 0,
    cpuBase: opts.cpu ?? 20, memBase: opts.mem ?? 40, phase: Math.random() * 6,
    started: Date.now(),
  };
  const app = http.createServer((req, res) => {
    b.inProgress++;
    req.resume();
    setTimeout(() => {
      b.inProgress--;
      b.served++;
      if (b.failEvery && b.served % b.failEvery === 0) {
        b.failed++;
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id, error: 'overloaded' }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id, path: req.url }));
    }, 5 + Math.random() * 20);
  });
  const vitals = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404);
      res.end();
      return;
    }
    const t = (Date.now() - b.started) / 1000;
    const body = {
      ready: b.ready,
      requests_in_progress: b.inProgress + Math.round(2 + 2 * Math.sin(t / 3 + b.phase)),
      cpu_usage: Math.max(0, Math.min(100, b.cpuBase + 12 * Math.sin(t / 4 + b.phase) + 4 * Math.random())),
      memory_usage: Math.min(100, b.memBase + t / 20 + 2 * Math.sin(t / 7 + b.phase)),
      gpu_usage: 0.0,
      failed_responses: b.failed,
      connected_peers: 3,
      backoff_requests: 0,
      uptime_seconds: Math.round(3600 * 5 + t),
      version: '1.4.2',
      id,
    };
    res.writeHead(b.vitalsStatus, { 'content-type': 'application/json' });
    res.end(b.vitalsStatus === 200 ? JSON.stringify(body) : '{"error":"internal"}');
  });
  b.appPort = await listen(app, ip);
  b.metricsPort = await listen(vitals, ip);
  b.address = `${ip}:${b.appPort}`;
  return b;
}

/** Start `roster lb` on `ip` with fast checks; resolves once /healthz answers. */
export async function startLb(ip, extra = []) {
  const proxyPort = await freePort(ip);
  const controlPort = await freePort(ip);
  const log = path.join(os.tmpdir(), `roster-ui-lb-${process.pid}-${controlPort}.log`);
  const defaults = {
    '--listen': `${ip}:${proxyPort}`, '--control-listen': `${ip}:${controlPort}`,
    '--threads': '1', '--allowed-networks': '127.0.0.0/8', '--health-interval': '500ms',
    '--health-timeout': '400ms', '--warmup': '0s', '--rate-limit': '0', '--grace-period': '1s',
  };
  // `extra` overrides a default flag of the same name.
  const args = ['lb'];
  for (const [flag, value] of Object.entries(defaults)) if (!extra.includes(flag)) args.push(flag, value);
  args.push(...extra);
  const env = { ...process.env, RUST_LOG: 'warn' };
  delete env.ROSTER_CONFIG;
  const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', fs.openSync(log, 'w')], env });
  children.add(child);
  child.on('exit', () => children.delete(child));
  const lb = {
    child, log,
    control: `http://${ip}:${controlPort}`,
    proxy: `http://${ip}:${proxyPort}`,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGINT');
      const gone = await Promise.race([new Promise((r) => child.once('exit', () => r(true))), sleep(3000)]);
      if (!gone) child.kill('SIGKILL');
    },
    async registry() {
      return (await fetch(`${this.control}/registry`)).json();
    },
    async register(id, address, metricsPort) {
      const res = await fetch(`${this.control}/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id, address, metrics_port: metricsPort }),
      });
      await res.arrayBuffer();
      if (res.status !== 200 && res.status !== 201) throw new Error(`register ${id}: HTTP ${res.status}`);
    },
  };
  await waitFor('lb /healthz', 20000, async () => {
    if (child.exitCode !== null) throw new Error(`roster lb exited ${child.exitCode}; log: ${fs.readFileSync(log, 'utf8')}`);
    return (await fetch(`${lb.control}/healthz`)).ok;
  });
  return lb;
}

/** Steady traffic through the proxy until `stop()`. */
export function traffic(url, perSecond) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  let stopped = false;
  let sent = 0;
  const timer = setInterval(() => {
    if (stopped) return;
    for (let i = 0; i < perSecond / 10; i++) {
      sent++;
      const req = http.get(url, { agent }, (res) => res.resume());
      req.on('error', () => {});
      req.setTimeout(2000, () => req.destroy());
    }
  }, 100);
  return {
    get sent() { return sent; },
    stop() { stopped = true; clearInterval(timer); agent.destroy(); },
  };
}

/** Headless Chromium with the flags a closed network needs; a fresh profile per launch. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

export function closeServers() {
  for (const s of servers) {
    s.closeAllConnections?.();
    s.close();
  }
  servers.clear();
}
