#!/usr/bin/env node
// e2e_console — the web console (/console) in headless Chromium (Debian's
// `chromium`, driven by npm puppeteer-core) against real nodes on free
// loopback ports, with independent Python clients (tests/console_clients.py,
// tokens minted there) as the sessions the console must see:
// - the page loads with its security headers and shows only the key prompt;
// - a wrong key sees nothing but the key prompt, and every data endpoint
//   answers it 401;
// - the API key opens the console: three Python sessions make
//   `sessions-open` read 3 (and 0 after they go); topics are listed with
//   their subscriber counts, largest first; status shows node and bridge up;
// - the key is kept in sessionStorage across a reload;
// - a publish from the form reaches the console's test client (a dev token
//   minted by the node); presence lookup answers;
// - the console key opens the console but cannot publish (the form is off,
//   POST /api/publish answers 401), and can mint;
// - no key configured: the data endpoints answer 403, the page says so;
//   without --dev and without a console key the node does not mint; a node
//   verifying EdDSA tokens (no secret) says it cannot mint.
// Exits 77 when chromium or python3's websockets module is not installed.
'use strict';

const { spawn, spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');

const SKIP = 77;
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.resolve(process.env.WSROUTER || path.join(ROOT, 'build', 'wsrouter'));
const CHROMIUM = process.env.CHROMIUM
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
const PYTHON = '/usr/bin/python3';
const CLIENTS = path.join(ROOT, 'tests', 'console_clients.py');

if (!CHROMIUM) {
  console.log('SKIP suite: chromium not installed (scripts/deps test installs it)');
  process.exit(SKIP);
}
if (spawnSync(PYTHON, ['-c', 'import websockets']).status !== 0) {
  console.log('SKIP suite: python3 websockets not installed (scripts/deps test installs it)');
  process.exit(SKIP);
}
let puppeteer;
try {
  puppeteer = require('puppeteer-core');
} catch (err) {
  console.log('FAIL setup: the npm package puppeteer-core is not installed: run `npm ci` in '
    + __dirname);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const started = [];                 // child processes, stopped by PID at the end

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  })]).finally(() => clearTimeout(timer));
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

//  A node with the given settings; resolves once its ready line is out.
function startNode(args, extraEnv = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('WEBSOCKET_') && !k.startsWith('JWT_') && !k.startsWith('NATS_')) env[k] = v;
  }
  Object.assign(env, extraEnv);
  const proc = spawn(BIN, ['serve', '--port', '0', '--bind', '127.0.0.1', '--workers', '2',
    '--max-per-ip', '0', '--handshake-rate', '0', ...args],
  { env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(proc);
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on ws:\/\/[^:\s/]+:(\d+)\/ws/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.on('error', (e) => reject(new Error(`cannot start ${BIN}: ${e.message}`)));
    proc.on('exit', (code, sig) => reject(new Error(
      `wsrouter exited (${code === null ? sig : code}) before it was ready: ${err}`)));
  });
  return withTimeout(ready, 15000, 'wsrouter ready line').then((port) => ({
    proc, port, stderr: () => err, stdout: () => out,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
      const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      proc.once('exit', (code) => { clearTimeout(killer); resolve(code); });
      proc.kill('SIGTERM');
    }),
  }));
}

//  One HTTP request; resolves { status, headers, body }.
function request(port, method, urlPath, key, body) {
  const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
  const headers = {};
  if (key) headers.Authorization = `apikey ${key}`;
  if (data) {
    headers['Content-Type'] = 'application/json';
    headers['Content-Length'] = data.length;
  }
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers,
      agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => {
        text += d;
        //  A stream answers 200 and goes on: its first event is enough
        if (res.headers['content-type'] === 'text/event-stream' && text.includes('\n\n')) {
          req.destroy();
          resolve({ status: res.statusCode, headers: res.headers, body: text });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  }), 10000, `${method} ${urlPath}`);
}

//  Python sessions, held until release(); resolves once all are open.
function pythonClients(port, secret, specs) {
  const proc = spawn(PYTHON, [CLIENTS, String(port), secret, ...specs],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  started.push(proc);
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err = (err + d).slice(-2000); });
  return withTimeout(new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      if (/OPEN \d+/.test(out)) {
        resolve({
          release: () => new Promise((done) => {
            proc.once('exit', done);
            proc.stdin.end();
          }),
        });
      }
    });
    proc.on('exit', (code) => reject(new Error(`python clients exited ${code}: ${err}`)));
  }), 15000, 'python clients');
}

async function text(page, id) {
  return page.$eval('#' + id, (e) => e.textContent);
}

async function visible(page, id) {
  return page.$eval('#' + id, (e) => !e.hidden && e.offsetParent !== null);
}

async function waitText(page, id, pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await text(page, id);
    if (pred(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: #${id} reads '${value}' after ${ms} ms`);
    await sleep(100);
  }
}

async function login(page, key) {
  await page.waitForSelector('#key-input', { visible: true, timeout: 10000 });
  await page.type('#key-input', key);
  await page.click('#key-submit');
}

// ---------------------------------------------------------------------------

async function main() {
  const results = { passed: 0, failed: 0 };
  const secret = 'c-secret-' + crypto.randomBytes(16).toString('hex');
  const apiKey = 'c-api-' + crypto.randomBytes(12).toString('hex');
  const consoleKey = 'c-con-' + crypto.randomBytes(12).toString('hex');
  let browser = null;
  const run = async (name, fn) => {
    try {
      await withTimeout(fn(), 60000, name);
      results.passed++;
      console.log(`PASS ${name}`);
    } catch (err) {
      results.failed++;
      console.log(`FAIL ${name}: ${err && err.stack ? err.stack : err}`);
    }
  };
  const nodes = [];
  try {
    //  The main node: API key and console key, no --dev
    const node = await startNode(['--jwt-secret', secret, '--api-key', apiKey,
      '--console-key', consoleKey]);
    nodes.push(node);
    const base = `http://127.0.0.1:${node.port}`;
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
    const page = await browser.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    //  Refused requests (the wrong key's 401, the favicon's 404) are
    //  logged by Chromium as errors; anything else, a CSP violation
    //  included, fails the suite
    page.on('console', (m) => {
      if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) {
        pageErrors.push(m.text());
      }
    });

    await run('the page loads from the node with its security headers: the key prompt only',
      async () => {
        const answer = await request(node.port, 'GET', '/console');
        expect(answer.status === 200 && /text\/html/.test(answer.headers['content-type']),
          `GET /console: ${answer.status} ${answer.headers['content-type']}`);
        const csp = answer.headers['content-security-policy'] || '';
        expect(/script-src 'self'/.test(csp) && /frame-ancestors 'none'/.test(csp)
          && !/unsafe-inline/.test(csp), `CSP: ${csp}`);
        expect(answer.headers['x-frame-options'] === 'DENY', 'X-Frame-Options');
        expect(answer.headers['x-content-type-options'] === 'nosniff', 'nosniff');
        for (const file of ['console.js', 'console.css']) {
          const f = await request(node.port, 'GET', `/console/${file}`);
          expect(f.status === 200 && f.body.length > 500, `GET /console/${file}: ${f.status}`);
        }
        expect((await request(node.port, 'GET', '/console/nothing.js')).status === 404,
          'unknown console file: 404');
        await page.goto(`${base}/console`);
        await page.waitForSelector('#key-input', { visible: true, timeout: 10000 });
        expect(!(await visible(page, 'console')), 'the console is hidden before a key');
      });

    await run('a wrong key sees nothing but the key prompt; data endpoints answer 401',
      async () => {
        await login(page, 'not-the-key');
        await waitText(page, 'key-error', (t) => /refused/.test(t), 5000, 'wrong key');
        expect(!(await visible(page, 'console')), 'console hidden after a wrong key');
        expect(await visible(page, 'login'), 'prompt still shown');
        expect(await text(page, 'sessions-open') === '–', 'no figures were filled in');
        expect(await page.evaluate(() => sessionStorage.length) === 0, 'wrong key not kept');
        for (const [method, p] of [['GET', '/api/stats'], ['GET', '/api/stats/stream'],
          ['GET', '/api/topics'], ['POST', '/api/token?user=x'],
          ['GET', '/api/presence?user=x'], ['POST', '/api/publish']]) {
          const answer = await request(node.port, method, p, 'not-the-key',
            method === 'POST' && p === '/api/publish' ? { user: 'x', data: 'y' } : undefined);
          expect(answer.status === 401, `${method} ${p} with a wrong key: ${answer.status}`);
          const none = await request(node.port, method, p);
          expect(none.status === 401, `${method} ${p} without a key: ${none.status}`);
        }
        const stats = await request(node.port, 'GET', '/api/stats', apiKey);
        expect(stats.headers['cache-control'] === 'no-store', 'API answers are not stored');
      });

    await run('the API key opens the console; three Python sessions make sessions-open 3',
      async () => {
        await page.$eval('#key-input', (e) => { e.value = ''; });
        await login(page, apiKey);
        await page.waitForSelector('#console', { visible: true, timeout: 5000 });
        expect(!(await visible(page, 'login')), 'prompt gone');
        await waitText(page, 'sessions-open', (t) => t === '0', 5000, 'no sessions yet');
        expect(await text(page, 'key-role') === '(API key)', 'role shown');
        const clients = await pythonClients(node.port, secret,
          ['py0:hall,room', 'py1:hall,room', 'py2:hall']);
        await waitText(page, 'sessions-open', (t) => t === '3', 5000, 'three sessions');
        //  Topics with their subscriber counts, largest first
        const deadline = Date.now() + 8000;
        let rows = [];
        for (;;) {
          rows = await page.$$eval('#topics-body tr', (trs) => trs.map((tr) => [
            tr.dataset.topic, Number(tr.querySelector('.count').textContent)]));
          if (rows.length >= 5 || Date.now() > deadline) break;
          await sleep(200);
        }
        expect(JSON.stringify(rows.slice(0, 2)) === '[["channel:hall",3],["channel:room",2]]',
          `topics: ${JSON.stringify(rows)}`);
        expect(rows.length === 5 && rows.slice(2).every((r) => r[1] === 1
          && /^user:py[012]$/.test(r[0])), `topics: ${JSON.stringify(rows)}`);
        await clients.release();
        await waitText(page, 'sessions-open', (t) => t === '0', 5000, 'sessions gone');
      });

    await run('status: node ready, bridge and backplane up, Redis and NATS not configured',
      async () => {
        expect(await text(page, 'node-status') === 'ready', 'node-status');
        expect(await text(page, 'bridge-status') === 'up', 'bridge-status');
        expect(await text(page, 'backplane-status') === 'up', 'backplane-status');
        expect(await text(page, 'redis-status') === 'not configured', 'redis-status');
        expect(await text(page, 'nats-status') === 'not configured', 'nats-status');
        expect(await text(page, 'live-state') === 'live', 'live stream');
        const rate = await text(page, 'handshakes-rate');
        expect(/^\d+(\.\d)?$/.test(rate), `handshakes-rate: ${rate}`);
      });

    await run('the key is kept in sessionStorage across a reload', async () => {
      await page.reload();
      await page.waitForSelector('#console', { visible: true, timeout: 5000 });
      expect(!(await visible(page, 'login')), 'no prompt after the reload');
      await waitText(page, 'sessions-open', (t) => t === '0', 5000, 'figures after reload');
    });

    await run('a publish from the form reaches the test client (a dev token from the node)',
      async () => {
        await page.type('#client-user', 'tester');
        await page.type('#client-channels', 'lobby');
        await page.click('#client-connect');
        await waitText(page, 'client-status', (t) => t === 'connected as tester', 5000,
          'test client');
        await waitText(page, 'sessions-open', (t) => t === '1', 5000, 'its session counted');
        await page.select('#publish-kind', 'user');
        await page.type('#publish-id', 'tester');
        await page.type('#publish-data', 'hello from the form');
        await page.click('#publish-submit');
        await waitText(page, 'publish-result', (t) => /^accepted/.test(t), 5000, 'publish');
        await waitText(page, 'client-messages', (t) => t.includes('hello from the form'), 5000,
          'delivery');
        //  ... and to a channel
        await page.select('#publish-kind', 'channel');
        await page.$eval('#publish-id', (e) => { e.value = ''; });
        await page.type('#publish-id', 'lobby');
        await page.$eval('#publish-data', (e) => { e.value = ''; });
        await page.type('#publish-data', 'to the lobby');
        await page.click('#publish-submit');
        await waitText(page, 'client-messages', (t) => t.includes('to the lobby'), 5000,
          'channel delivery');
        //  Presence answers (no Redis here: the bridge says what it can)
        await page.type('#presence-id', 'tester');
        await page.click('#presence-submit');
        await waitText(page, 'presence-result', (t) => /^\d{3} /.test(t), 5000, 'presence');
        await page.click('#client-disconnect');
        await waitText(page, 'client-status', (t) => /^closed/.test(t), 5000, 'disconnect');
      });

    await run('the console key opens the console but cannot publish; it can mint', async () => {
      const context = await browser.createBrowserContext();
      try {
        const other = await context.newPage();
        await other.goto(`${base}/console`);
        await login(other, consoleKey);
        await other.waitForSelector('#console', { visible: true, timeout: 5000 });
        expect(await text(other, 'key-role') === '(console key)', 'role shown');
        expect(await other.$eval('#publish-submit', (e) => e.disabled), 'publish form off');
        const refused = await request(node.port, 'POST', '/api/publish', consoleKey,
          { user: 'tester', data: 'x' });
        expect(refused.status === 401, `publish with the console key: ${refused.status}`);
        const token = await request(node.port, 'POST', '/api/token?user=ck1', consoleKey);
        expect(token.status === 200 && JSON.parse(token.body).token.split('.').length === 3,
          `mint with the console key: ${token.status} ${token.body}`);
        const stream = await request(node.port, 'GET', '/api/stats/stream', consoleKey);
        expect(stream.status === 200 && /^retry: \d+\ndata: \{/.test(stream.body),
          `stream: ${stream.status} ${stream.body.slice(0, 80)}`);
      } finally {
        await context.close();
      }
    });

    await run('no key configured: data endpoints 403 and the page says the console is off',
      async () => {
        const bare = await startNode(['--jwt-secret', secret]);
        nodes.push(bare);
        for (const [method, p] of [['GET', '/api/stats'], ['GET', '/api/stats/stream'],
          ['GET', '/api/topics'], ['POST', '/api/token?user=x']]) {
          const answer = await request(bare.port, method, p, 'anything');
          expect(answer.status === 403, `${method} ${p} on a keyless node: ${answer.status}`);
        }
        const context = await browser.createBrowserContext();
        try {
          const other = await context.newPage();
          await other.goto(`http://127.0.0.1:${bare.port}/console`);
          await login(other, 'anything');
          await waitText(other, 'key-error', (t) => /disabled/.test(t), 5000, 'disabled');
          expect(!(await visible(other, 'console')), 'console hidden');
        } finally {
          await context.close();
        }
      });

    await run('minting: refused without --dev or a console key; a public-key node cannot mint',
      async () => {
        const plain = await startNode(['--jwt-secret', secret, '--api-key', apiKey]);
        nodes.push(plain);
        const refused = await request(plain.port, 'POST', '/api/token?user=x', apiKey);
        expect(refused.status === 403 && /--dev or WEBSOCKET_CONSOLE_KEY/.test(refused.body),
          `mint without dev: ${refused.status} ${refused.body}`);
        const { publicKey } = crypto.generateKeyPairSync('ed25519');
        const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
        const eddsa = await startNode(['--dev', '--jwt-alg', 'EdDSA', '--jwt-public-key',
          raw.toString('base64'), '--api-key', apiKey]);
        nodes.push(eddsa);
        const none = await request(eddsa.port, 'POST', '/api/token?user=x', apiKey);
        expect(none.status === 403 && /public key/.test(none.body),
          `mint on an EdDSA node: ${none.status} ${none.body}`);
        const context = await browser.createBrowserContext();
        try {
          const other = await context.newPage();
          await other.goto(`http://127.0.0.1:${eddsa.port}/console`);
          await login(other, apiKey);
          await waitText(other, 'client-status', (t) => /public key/.test(t), 5000,
            'the test client says it cannot mint');
          expect(await other.$eval('#client-connect', (e) => e.disabled), 'connect off');
        } finally {
          await context.close();
        }
      });

    expect(!pageErrors.length, `page errors: ${pageErrors.join('; ')}`);
  } catch (err) {
    results.failed++;
    console.log(`FAIL setup: ${err && err.stack ? err.stack : err}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    for (const n of nodes) await n.stop();
    for (const p of started) {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
  }
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exit(results.failed ? 1 : 0);
}

main();
