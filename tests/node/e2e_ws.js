#!/usr/bin/env node
// e2e_ws — wsrouter driven by a second, independent client: the npm `ws`
// package. Tokens are minted by spawning `$WSROUTER token`; publishing uses
// node's http module. Prints one line per case and `N passed, M failed`.
'use strict';

const { spawn, spawnSync } = require('child_process');
const crypto = require('crypto');
const http = require('http');
const path = require('path');

let WebSocket;
try {
  WebSocket = require('ws');
} catch (err) {
  console.log('FAIL setup: the npm package ws is not installed: run `npm ci` (or `npm install`) '
    + 'in ' + __dirname);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const BIN = path.resolve(process.env.WSROUTER || path.join(__dirname, '..', '..', 'build', 'wsrouter'));
const READY_RE = /ws:\/\/[^:\s/]+:(\d+)\/ws/;

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function startServer() {
  const secret = 'node-secret-' + crypto.randomBytes(12).toString('hex');
  const apiKey = 'node-key-' + crypto.randomBytes(12).toString('hex');
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('WEBSOCKET_') && !k.startsWith('JWT_')) env[k] = v;
  }
  const proc = spawn(BIN, ['serve', '--port', '0', '--bind', '127.0.0.1',
    '--jwt-secret', secret, '--api-key', apiKey], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const m = READY_RE.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.on('error', (e) => reject(new Error(`cannot start ${BIN}: ${e.message}`)));
    proc.on('exit', (code, sig) => reject(new Error(
      `server exited (${code === null ? sig : code}) before it was ready; stderr: ${err.slice(-1000)}`)));
  });
  const server = { proc, secret, apiKey, port: null };
  server.stop = () => new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
    const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    proc.once('exit', (code) => { clearTimeout(killer); resolve(code); });
    proc.kill('SIGTERM');
  });
  return withTimeout(ready, 15000, 'server ready line').then((port) => {
    server.port = port;
    return server;
  }, async (e) => { await server.stop(); throw e; });
}

function mintWithCli(server, sub) {
  const r = spawnSync(BIN, ['token', '--sub', sub, '--ttl', '600'], {
    env: { ...process.env, JWT_SECRET_KEY: server.secret }, timeout: 15000, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`wsrouter token exited ${r.status}: ${r.stderr}`);
  const token = r.stdout.trim();
  if (token.split('.').length !== 3) throw new Error(`wsrouter token printed no JWT: ${token}`);
  return token;
}

function request(server, method, urlPath, body, headers) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, method, path: urlPath,
      headers: headers || {} }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  }), 10000, `${method} ${urlPath}`);
}

async function publish(server, obj) {
  const res = await request(server, 'POST', '/api/publish', JSON.stringify(obj), {
    Authorization: 'apikey ' + server.apiKey, 'Content-Type': 'application/json' });
  if (res.status < 200 || res.status > 299) {
    throw new Error(`publish ${JSON.stringify(obj)}: expected 2xx, got ${res.status} ${res.body}`);
  }
}

async function metric(server, name) {
  const res = await request(server, 'GET', '/metrics');
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status}`);
  for (const line of res.body.split('\n')) {
    const [key, value] = line.split(' ');
    if (key === name) return Number(value);
  }
  throw new Error(`/metrics has no ${name}`);
}

// A client that records messages and the close, so nothing is missed.
function open(server, token) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws?token=${encodeURIComponent(token)}`);
  const state = { ws, messages: [], waiters: [], closed: null };
  ws.on('message', (data, isBinary) => {
    state.messages.push({ data, isBinary });
    state.waiters.splice(0).forEach((w) => w());
  });
  ws.on('close', (code, reason) => {
    state.closed = { code, reason: reason.toString() };
    state.waiters.splice(0).forEach((w) => w());
  });
  ws.on('error', () => {});
  state.opened = withTimeout(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (req, res) => reject(new Error(`handshake: HTTP ${res.statusCode}`)));
    ws.once('error', reject);
  }), 10000, 'WebSocket open');
  state.next = (ms, what) => withTimeout(new Promise((resolve, reject) => {
    const check = () => {
      if (state.messages.length) return resolve(state.messages.shift());
      if (state.closed) {
        return reject(new Error(`${what}: closed instead (${state.closed.code} ${state.closed.reason})`));
      }
      state.waiters.push(check);
    };
    check();
  }), ms, what);
  state.closeEvent = (ms, what) => withTimeout(new Promise((resolve) => {
    const check = () => (state.closed ? resolve(state.closed) : state.waiters.push(check));
    check();
  }), ms, what);
  return state;
}

async function waitSessions(server, n) {
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    if (await metric(server, 'wsrouter_sessions_open') === n) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

async function main() {
  let passed = 0;
  let failed = 0;
  const run = async (name, fn) => {
    try {
      await withTimeout(fn(), 60000, name);
      passed += 1;
      console.log(`PASS ${name}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${name}: ${e.message}`);
    }
  };
  let server = null;
  try {
    server = await startServer();
  } catch (e) {
    console.log(`FAIL setup: ${e.message}`);
    console.log(`${passed} passed, ${failed + 1} failed`);
    process.exitCode = 1;
    return;
  }
  try {
    await run('ws client with a CLI-minted token receives an HTTP publish', async () => {
      const c = open(server, mintWithCli(server, 'nodeuser'));
      try {
        await c.opened;
        await waitSessions(server, 1);
        await publish(server, { user: 'nodeuser', data: 'hello node ✓' });
        await publish(server, { user: 'nodeuser', data: { a: 1 } });
        const m1 = await c.next(10000, 'first message');
        expect(!m1.isBinary && m1.data.toString() === 'hello node ✓',
          `first message: expected text 'hello node ✓', got ${m1.isBinary ? 'binary' : 'text'} '${m1.data}'`);
        const m2 = await c.next(10000, 'second message');
        expect(!m2.isBinary && m2.data.toString() === '{"a":1}',
          `second message: expected text '{"a":1}', got '${m2.data}'`);
        const bytes = crypto.randomBytes(4096);
        bytes[0] = 0xff;
        await publish(server, { user: 'nodeuser', data_base64: bytes.toString('base64') });
        const m3 = await c.next(10000, 'binary message');
        expect(m3.isBinary && Buffer.compare(m3.data, bytes) === 0,
          `binary message: expected ${bytes.length} identical bytes in a binary frame, got `
          + `${m3.isBinary ? 'binary' : 'text'} of ${m3.data.length} bytes`);
      } finally {
        c.ws.terminate();
      }
    });

    await run('bad token gets the 101 then close 1008', async () => {
      for (const token of ['garbage', mintWithCli({ secret: server.secret + 'x' }, 'nodeuser')]) {
        const c = open(server, token);
        try {
          await c.opened;
          const closed = await c.closeEvent(5000, 'close after a bad token');
          expect(closed.code === 1008, `expected close code 1008, got ${closed.code} (${closed.reason})`);
          expect(closed.reason.length > 0, 'expected a close reason');
          expect(c.messages.length === 0, `bad token got ${c.messages.length} messages`);
        } finally {
          c.ws.terminate();
        }
      }
    });

    await run('binary client message counted in wsrouter_messages_in_total', async () => {
      const c = open(server, mintWithCli(server, 'counter'));
      try {
        await c.opened;
        await waitSessions(server, 1);
        const before = await metric(server, 'wsrouter_messages_in_total');
        await new Promise((resolve, reject) => c.ws.send(Buffer.from([0, 1, 2, 0xff]),
          { binary: true }, (e) => (e ? reject(e) : resolve())));
        const deadline = Date.now() + 3000;
        let after = before;
        while (Date.now() < deadline && after < before + 1) {
          await new Promise((r) => setTimeout(r, 20));
          after = await metric(server, 'wsrouter_messages_in_total');
        }
        expect(after === before + 1, `wsrouter_messages_in_total: expected ${before + 1}, got ${after}`);
        expect(!c.closed, `session closed after a binary message: ${JSON.stringify(c.closed)}`);
      } finally {
        c.ws.terminate();
      }
    });
  } finally {
    const code = await server.stop();
    if (code !== 0) console.log(`note: server exit status after SIGTERM: ${code}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed || !passed ? 1 : 0;
}

main().catch((e) => {
  console.log(`FAIL harness: ${e.stack || e}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
