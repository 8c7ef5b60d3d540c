// End-to-end: the operator page of a real `roster lb` in headless Chromium.
// An LB, seven fake backends in several states, steady proxied traffic; the
// page must show each state, follow a backend going `ready: false` without a
// reload, filter and search, and break no CSP rule. Writes target/ui.png (UI_SCREENSHOT=docs/ui.png refreshes the README's).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import {
  ROOT, IP, startLb, fakeBackend, traffic, launchBrowser, waitFor, sleep, closeServers, freePort,
} from './harness.mjs';

const SCREENSHOT = process.env.UI_SCREENSHOT || path.join(ROOT, 'target/ui.png');
// Nothing here may take longer: a hung browser or LB fails the run, it does not stall it.
const HARD_LIMIT_MS = 180000;
const hard = setTimeout(() => {
  console.error(`ui test: gave up after ${HARD_LIMIT_MS} ms`);
  process.exit(1);
}, HARD_LIMIT_MS);
hard.unref();

let lb, browser, page, load;
const backends = {};
const problems = [];   // console errors, CSP violations, page errors
const requests = [];   // every request the page made: "METHOD path"

const row = (id) => `#viewport .row[data-id="${id}"]`;
async function rowState(id) {
  return page.evaluate((sel) => {
    const r = document.querySelector(sel);
    return r && !r.hidden ? { state: r.dataset.state, label: r.querySelector('.chip').textContent, why: r.querySelector('.why').textContent } : null;
  }, row(id));
}
async function visibleIds() {
  return page.$$eval('#viewport .row', (rows) => rows.filter((r) => !r.hidden).map((r) => r.dataset.id));
}

before(async () => {
  const specs = [
    ['web-1', { cpu: 22, mem: 41 }],
    ['web-2', { cpu: 35, mem: 55 }],
    ['web-3', { cpu: 18, mem: 38 }],
    ['web-4', { cpu: 61, mem: 72, failEvery: 12 }],
    ['api-flaky', { cpu: 44, mem: 63, failEvery: 1 }],
    ['web-5', { cpu: 27, mem: 47 }],
    ['api-broken', { vitalsStatus: 500 }],
    ['batch-warming', { ready: false, cpu: 5, mem: 12 }],
  ];
  for (const [id, o] of specs) backends[id] = await fakeBackend(id, IP, o);
  // Three 5xx in a row eject; web-4's occasional 503 never comes in a row.
  // Panic below 30% healthy: 5 of 9 now, 4 after web-5's flip, 2 at the end.
  lb = await startLb(IP, ['--eject-after', '3', '--ejection-time', '60s', '--panic-threshold', '30']);
  for (const b of Object.values(backends)) await lb.register(b.id, b.address, b.metricsPort);
  // A backend whose vitals port is closed: unreachable.
  const closed = await freePort(IP);
  await lb.register('cache-gone', `${IP}:${await freePort(IP)}`, closed);
  await waitFor('registry settles', 15000, async () => {
    const reg = await lb.registry();
    const st = Object.fromEntries(reg.backends.map((e) => [e.id, e.state]));
    return st['web-1'] === 'healthy' && st['web-5'] === 'healthy' && st['api-broken'] === 'unhealthy'
      && st['cache-gone'] === 'unhealthy' && st['batch-warming'] === 'not_ready';
  });
  load = traffic(`${lb.proxy}/`, 40);
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1320, height: 600 }, colorScheme: 'light' });
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`));
  await page.goto(`${lb.control}/`, { timeout: 15000 });
});

after(async () => {
  load?.stop();
  await browser?.close().catch(() => {});
  await lb?.stop();
  closeServers();
});

test('GET / is the page, with a restrictive CSP', async () => {
  const res = await fetch(`${lb.control}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const csp = res.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(await page.title().then((t) => t.startsWith('roster')), true);
});

test('rows show every backend with the right state, colour class and label', async () => {
  const want = {
    'web-1': ['healthy', 'healthy'], 'web-2': ['healthy', 'healthy'], 'web-3': ['healthy', 'healthy'],
    'web-4': ['healthy', 'healthy'], 'web-5': ['healthy', 'healthy'],
    'api-broken': ['unhealthy', 'unhealthy'], 'cache-gone': ['unhealthy', 'unhealthy'],
    'batch-warming': ['not_ready', 'not ready'],
    'api-flaky': ['ejected', 'ejected'],
  };
  await waitFor('all rows', 10000, async () => (await visibleIds()).length === 9);
  await waitFor('api-flaky ejected', 10000, async () => (await rowState('api-flaky'))?.state === 'ejected');
  for (const [id, [state, label]] of Object.entries(want)) {
    const r = await rowState(id);
    assert.ok(r, `row ${id}`);
    assert.equal(r.state, state, id);
    assert.equal(r.label, label, id);
    const cls = await page.$eval(`${row(id)} .chip`, (c) => c.className);
    assert.ok(cls.includes(`st-${state}`), `${id}: ${cls}`);
  }
  assert.match((await rowState('api-broken')).why, /500/, 'why: the check error');
  assert.match(await page.getAttribute(`${row('api-broken')} .why`, 'title'), /^GET http:\/\/.*\/metrics/);
  assert.match((await rowState('batch-warming')).why, /ready=false/);
  assert.match((await rowState('api-flaky')).why, /^ejected: /);
  // Trouble first: unhealthy rows lead.
  const order = await visibleIds();
  assert.deepEqual(order.slice(0, 2).sort(), ['api-broken', 'cache-gone']);
  const reg = await lb.registry();
  assert.equal(await page.textContent('#s-total'), '9');
  assert.equal(await page.textContent('#s-routable'), String(reg.backends.filter((e) => e.routable).length));
  await waitFor('digest in header', 5000, async () => (await page.textContent('#s-digest')) === (await lb.registry()).digest);
  assert.equal(await page.textContent('[data-count="unhealthy"]'), '2');
  assert.equal(await page.textContent('[data-count="ejected"]'), '1');
});

test('the header shows requests/s through the proxy', async () => {
  const rps = await waitFor('requests/s > 0', 15000, async () => {
    const v = Number(await page.textContent('#s-rps'));
    return v > 0 ? v : 0;
  });
  assert.ok(rps > 5 && rps < 200, `requests/s ${rps}`);
  await waitFor('per-backend req/s', 10000, async () => Number(await page.textContent(`${row('web-1')} .num:not(.lease)`)) > 0);
  // Sparklines got points.
  await waitFor('cpu sparkline', 10000, async () => (await page.getAttribute(`${row('web-2')} .m-cpu path`, 'd'))?.includes('L'));
});

test('a backend going ready:false shows as not ready within seconds, without reload', async () => {
  await page.evaluate(() => { window.__noReload = 42; });
  const before = Number(await page.textContent('#s-routable'));
  const t0 = Date.now();
  backends['web-5'].ready = false;
  await waitFor('web-5 not ready on the page', 5000, async () => {
    const r = await rowState('web-5');
    return r && r.state === 'not_ready' && r.label === 'not ready';
  });
  const took = Date.now() - t0;
  console.log(`ui test: web-5 shown as not ready ${took} ms after its vitals flipped`);
  assert.equal(await page.evaluate(() => window.__noReload), 42, 'the page was not reloaded');
  await waitFor('routable count drops', 5000, async () => Number(await page.textContent('#s-routable')) === before - 1);
  assert.match((await rowState('web-5')).why, /ready=false/);
});

test('filter by state and search by id', async () => {
  await page.click('#filters button[data-filter="not_ready"]');
  await waitFor('not-ready filter', 3000, async () => {
    const ids = (await visibleIds()).sort();
    return ids.join() === 'batch-warming,web-5';
  });
  assert.match(page.url(), /#state=not_ready/);
  await page.click('#filters button[data-filter="all"]');
  await page.fill('#search', 'web-3');
  await waitFor('search', 3000, async () => (await visibleIds()).join() === 'web-3');
  await page.fill('#search', 'nothing-like-this');
  await waitFor('empty message', 3000, async () => (await page.isVisible('#empty')) && (await visibleIds()).length === 0);
  await page.fill('#search', '');
  await waitFor('all rows back', 3000, async () => (await visibleIds()).length === 9);
});

test('a row opens its detail with charts', async () => {
  await page.click(row('web-4'));
  await waitFor('detail', 3000, async () => (await page.isVisible('#detail')) && (await page.textContent('#d-id')) === 'web-4');
  assert.match(await page.textContent('#d-fields'), /version1\.4\.2/);
  await page.click('#d-close');
  await waitFor('detail closed', 3000, async () => !(await page.isVisible('#detail')));
});

test('the page is read-only and breaks no CSP rule', async () => {
  const seen = [...new Set(requests)].sort();
  assert.deepEqual(seen, ['GET /', 'GET /registry', 'GET /services', 'GET /telemetry', 'GET /ui/app.css', 'GET /ui/app.js']);
  assert.deepEqual(problems, []);
});

test('screenshot', async () => {
  // Let the charts gather a little history, then take the picture.
  await sleep(Number(process.env.UI_SCREENSHOT_WAIT_MS || 12000));
  await page.evaluate(() => { document.getElementById('viewport').scrollTop = 0; document.activeElement?.blur(); });
  await page.mouse.move(5, 595);
  await sleep(100);
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, type: 'png' });
  const size = fs.statSync(SCREENSHOT).size;
  console.log(`ui test: wrote ${path.relative(ROOT, SCREENSHOT)} (${size} bytes)`);
  assert.ok(size > 10000 && size < 400000, `screenshot size ${size}`);
  assert.deepEqual(problems, []);
});

test('panic mode shows a banner', async () => {
  assert.equal(await page.isVisible('#panic'), false);
  backends['web-1'].ready = false;
  backends['web-2'].ready = false;
  await waitFor('panic banner', 5000, async () => page.isVisible('#panic'));
  assert.match(await page.title(), /^PANIC/);
  // Panic routes to verified backends whatever their state: tagged "routed".
  await waitFor('routed tag', 5000, async () => (await page.textContent(`${row('api-flaky')} .tag`)) === 'routed');
});

test('an unreachable LB shows a banner and keeps the last rows', async () => {
  await lb.stop();
  await waitFor('problem banner', 8000, async () => (await page.isVisible('#problem'))
    && /Cannot read the registry/.test(await page.textContent('#problem')));
  assert.equal((await visibleIds()).length, 9);
});
