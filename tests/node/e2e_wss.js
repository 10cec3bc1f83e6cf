#!/usr/bin/env node
// e2e_wss — the npm `ws` client over wss:// (Node's TLS, OpenSSL inside
// Node) against a node with a TLS port: TLS 1.3 sessions run on wsrouter's
// own record layer (wsr_tlsrec) after the handshake. Pings and client
// messages up, publishes down (small, over several records), many of each
// interleaved, and a clean close. Node cannot send a TLS KeyUpdate; that is
// e2e_tls's `openssl s_client` case. Prints one line per case and
// `N passed, M failed`; exits 77 when the ws package or openssl is missing.
'use strict';

const { spawn, spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');

let WebSocket;
try {
  WebSocket = require('ws');
} catch (err) {
  console.log('SKIP the npm package ws is not installed (npm ci in ' + __dirname + ')');
  process.exit(77);
}
if (spawnSync('openssl', ['version']).status !== 0) {
  console.log('SKIP openssl not installed');
  process.exit(77);
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

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on('error', reject);
  });
}

function makeCert(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt',
    'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { timeout: 30000 });
  if (r.status !== 0) throw new Error('openssl req failed: ' + r.stderr);
  return { cert, key };
}

async function startServer(cert, key) {
  const secret = 'node-secret-' + crypto.randomBytes(12).toString('hex');
  const apiKey = 'node-key-' + crypto.randomBytes(12).toString('hex');
  const tlsPort = await freePort();
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('WEBSOCKET_') && !k.startsWith('JWT_')) env[k] = v;
  }
  const proc = spawn(BIN, ['serve', '--port', '0', '--bind', '127.0.0.1', '--jwt-secret', secret,
    '--api-key', apiKey, '--tls-cert', cert, '--tls-key', key, '--tls-port', String(tlsPort),
    '--rate-messages', '10000'],
  { env, stdio: ['ignore', 'pipe', 'pipe'] });
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
  const server = { proc, secret, apiKey, port: null, tlsPort };
  server.stop = () => new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
    const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    proc.once('exit', (code) => { clearTimeout(killer); resolve(code); });
    proc.kill('SIGTERM');
  });
  server.port = await withTimeout(ready, 15000, 'server ready line');
  return server;
}

function mint(server, sub) {
  const r = spawnSync(BIN, ['token', '--sub', sub, '--ttl', '600'], {
    env: { ...process.env, JWT_SECRET_KEY: server.secret }, timeout: 15000, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`wsrouter token exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
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
  if (res.status < 200 || res.status > 299) throw new Error(`publish: ${res.status} ${res.body}`);
}

async function metric(server, name) {
  const res = await request(server, 'GET', '/metrics');
  for (const line of res.body.split('\n')) {
    const [k, v] = line.split(' ');
    if (k === name) return Number(v);
  }
  throw new Error(`/metrics has no ${name}`);
}

async function waitMetric(server, name, want) {
  const deadline = Date.now() + 5000;
  let value = await metric(server, name);
  while (Date.now() < deadline && value < want) {
    await new Promise((r) => setTimeout(r, 20));
    value = await metric(server, name);
  }
  return value;
}

function open(server, cert, token) {
  const ws = new WebSocket(`wss://127.0.0.1:${server.tlsPort}/ws?token=${encodeURIComponent(token)}`,
    { ca: fs.readFileSync(cert), maxPayload: 1 << 22 });
  const state = { ws, messages: [], pongs: [], waiters: [], closed: null };
  const wake = () => state.waiters.splice(0).forEach((w) => w());
  ws.on('message', (data) => { state.messages.push(data.toString()); wake(); });
  ws.on('pong', (data) => { state.pongs.push(data.toString()); wake(); });
  ws.on('close', (code) => { state.closed = code; wake(); });
  ws.on('error', () => {});
  state.opened = withTimeout(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  }), 10000, 'wss open');
  state.until = (cond, ms, what) => withTimeout(new Promise((resolve, reject) => {
    const check = () => {
      if (cond()) return resolve();
      if (state.closed !== null) return reject(new Error(`${what}: closed (${state.closed})`));
      state.waiters.push(check);
    };
    check();
  }), ms, what);
  return state;
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
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsr-wss-'));
  const { cert, key } = makeCert(dir);
  let server;
  try {
    server = await startServer(cert, key);
  } catch (e) {
    console.log(`FAIL setup: ${e.message}`);
    console.log('0 passed, 1 failed');
    process.exitCode = 1;
    return;
  }
  try {
    await run('wss over TLS 1.3: pings, client messages and publishes both ways', async () => {
      const c = open(server, cert, mint(server, 'wss1'));
      try {
        await c.opened;
        expect(c.ws._socket.getProtocol() === 'TLSv1.3',
          `negotiated ${c.ws._socket.getProtocol()}, not TLSv1.3`);
        await waitMetric(server, 'wsrouter_sessions_open', 1);
        const inBefore = await metric(server, 'wsrouter_messages_in_total');
        const N = 200;
        for (let i = 0; i < N; i += 1) {
          c.ws.ping(`p${i}`);
          c.ws.send(`up-${i}-` + 'u'.repeat(i * 50));
          if (i % 20 === 0) await publish(server, { user: 'wss1', data: `down-${i}-` + 'd'.repeat(i * 100) });
        }
        await publish(server, { user: 'wss1', data: 'big-' + 'b'.repeat(200000) });
        await c.until(() => c.pongs.length === N, 10000, 'pongs');
        for (let i = 0; i < N; i += 1) expect(c.pongs[i] === `p${i}`, `pong ${i}: ${c.pongs[i]}`);
        await c.until(() => c.messages.length === N / 20 + 1, 10000, 'messages down');
        for (let i = 0; i < N / 20; i += 1) {
          expect(c.messages[i] === `down-${i * 20}-` + 'd'.repeat(i * 20 * 100), `message ${i} down`);
        }
        expect(c.messages[N / 20].length === 200004, 'the 200 KB message down, whole');
        const inAfter = await waitMetric(server, 'wsrouter_messages_in_total', inBefore + N);
        expect(inAfter === inBefore + N, `messages in: ${inAfter - inBefore}, expected ${N}`);
      } finally {
        c.ws.terminate();
      }
    });

    await run('wss clean close both ways (close_notify after the close frame)', async () => {
      const c = open(server, cert, mint(server, 'wss2'));
      await c.opened;
      c.ws.close(1000, 'bye');
      await c.until(() => c.closed !== null, 5000, 'close');
      expect(c.closed === 1000, `close code ${c.closed}`);
      const before = await metric(server, 'wsrouter_tls_handshakes_total');
      expect(before >= 2, `tls handshakes counted: ${before}`);
    });
  } finally {
    const code = await server.stop();
    if (code !== 0) console.log(`note: server exit status after SIGTERM: ${code}`);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed || !passed ? 1 : 0;
}

main().catch((e) => {
  console.log(`FAIL harness: ${e.stack || e}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
