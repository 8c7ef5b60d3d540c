// Measure the operator page with many backends: `scripts/ui-test.sh --scale 10000`.
// Registers N entries on 10.0.0.0/8 (never reachable here: they stay
// unhealthy, which is fine for rendering) plus five live fake backends, then
// times the page's first render, its polls, scrolling, search and filtering
// in headless Chromium. Prints a report; asserts only loose upper bounds.
import assert from 'node:assert/strict';
import { startLb, fakeBackend, launchBrowser, waitFor, sleep, closeServers } from './harness.mjs';

const N = Number(process.argv[2] || 10000);
const IP = '127.0.71.1';
const hard = setTimeout(() => { console.error('scale: gave up after 10 minutes'); process.exit(1); }, 600000);
hard.unref();

const lb = await startLb(IP, [
  '--allowed-networks', '10.0.0.0/8,127.0.0.0/8', '--max-backends', String(N + 100),
  '--health-interval', '5s', '--health-timeout', '1s', '--threads', '2',
]);
let browser;
try {
  const live = [];
  for (let i = 1; i <= 5; i++) {
    const b = await fakeBackend(`live-${i}`, IP);
    live.push(b);
    await lb.register(b.id, b.address, b.metricsPort);
  }
  let t = Date.now();
  let next = 0;
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= N) return;
      const id = `pod-${String(i).padStart(5, '0')}`;
      await lb.register(id, `10.${Math.floor(i / 62500) + 1}.${Math.floor(i / 250) % 250}.${(i % 250) + 1}:8080`, 9090);
    }
  }
  await Promise.all(Array.from({ length: 32 }, worker));
  console.log(`scale: registered ${N} backends in ${Date.now() - t} ms`);
  const reg = await lb.registry();
  assert.equal(reg.backends.length, N + 5);
  const json = JSON.stringify(reg).length;
  t = Date.now();
  await (await fetch(`${lb.control}/registry`)).arrayBuffer();
  console.log(`scale: GET /registry = ${(json / 1e6).toFixed(1)} MB, served in ${Date.now() - t} ms`);

  browser = await launchBrowser();
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));
  await page.addInitScript(() => {
    window.__longTasks = [];
    new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__longTasks.push(e.duration); })
      .observe({ type: 'longtask', buffered: true });
  });
  t = Date.now();
  await page.goto(`${lb.control}/`);
  await waitFor('first rows', 60000, async () => page.evaluate(() => window.__roster && window.__roster.polls >= 1 && document.querySelectorAll('#viewport .row:not([hidden])').length > 0));
  const firstRender = Date.now() - t;
  // Five more polls.
  const polls = [];
  let seen = await page.evaluate(() => window.__roster.polls);
  while (polls.length < 5) {
    await waitFor('next poll', 60000, async () => (await page.evaluate(() => window.__roster.polls)) > seen);
    const s = await page.evaluate(() => ({ ...window.__roster, foot: document.getElementById('f-poll').textContent }));
    seen = s.polls;
    polls.push(s);
  }
  const avg = (k) => (polls.reduce((a, s) => a + s[k], 0) / polls.length).toFixed(1);
  // Scroll to the middle: time until the new rows are painted.
  const scroll = await page.evaluate(async () => {
    const vp = document.getElementById('viewport');
    const t0 = performance.now();
    vp.scrollTop = vp.scrollHeight / 2;
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const first = [...document.querySelectorAll('#viewport .row:not([hidden])')].map((r) => r.dataset.id)[0];
    return { ms: performance.now() - t0, first };
  });
  // Search and filter: time until the list shows the result.
  const timeUntil = async (what, act, check) => {
    const t0 = Date.now();
    await act();
    await waitFor(what, 10000, check);
    return Date.now() - t0;
  };
  const visible = () => page.$$eval('#viewport .row:not([hidden])', (rs) => rs.map((r) => r.dataset.id));
  const searchMs = await timeUntil('search', () => page.fill('#search', 'pod-0999'), async () => {
    const ids = await visible();
    return ids.length === 10 && ids.every((id) => id.startsWith('pod-0999'));
  });
  await page.fill('#search', '');
  const filterMs = await timeUntil('filter healthy', () => page.click('#filters button[data-filter="healthy"]'), async () => {
    const ids = await visible();
    return ids.length === 5 && ids.every((id) => id.startsWith('live-'));
  });
  await page.click('#filters button[data-filter="all"]');
  const sortMs = await timeUntil('sort by cpu', () => page.selectOption('#sort', 'cpu'), async () => (await visible())[0]?.startsWith('live-'));
  const dom = await page.evaluate(() => document.getElementsByTagName('*').length);
  const heap = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize : 0));
  const longTasks = await page.evaluate(() => window.__longTasks);
  await page.screenshot({ path: process.env.UI_SCALE_SCREENSHOT || '/tmp/roster-ui-scale.png' });

  console.log(`scale: ${N + 5} backends in the page`);
  console.log(`scale: first render ${firstRender} ms after navigation (page load + first /registry + parse + render)`);
  console.log(`scale: per poll (mean of 5): fetch ${avg('lastPollMs')} ms, JSON.parse ${avg('lastParseMs')} ms, apply+filter+sort ${avg('lastApplyMs')} ms, rows ${avg('lastRenderMs')} ms; ${polls[0].bytes} bytes`);
  console.log(`scale: footer says: ${polls[polls.length - 1].foot}`);
  console.log(`scale: scroll to the middle painted in ${scroll.ms.toFixed(1)} ms (first row ${scroll.first})`);
  console.log(`scale: search ${searchMs} ms, filter ${filterMs} ms, sort ${sortMs} ms (each until the list shows it, incl. the test's polling)`);
  console.log(`scale: DOM elements ${dom}, JS heap ${(heap / 1e6).toFixed(1)} MB, long tasks: ${longTasks.length} (max ${Math.max(0, ...longTasks).toFixed(0)} ms)`);
  assert.deepEqual(problems, []);
  assert.ok(dom < 3000, `DOM stays small: ${dom}`);
  assert.ok(scroll.ms < 500, `scroll ${scroll.ms}`);
} finally {
  await browser?.close().catch(() => {});
  await lb.stop();
  closeServers();
}
