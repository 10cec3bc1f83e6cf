#!/usr/bin/env node
// e2e_browser — clients/js/wsrouter.js in headless Chromium (Debian's
// `chromium`, driven by npm puppeteer-core) against a real node and a real
// redis-server, all on free loopback ports:
// - raw mode: a publish arrives as one frame (text and binary), a send
//   gets the HTTP backend's reply;
// - wsrouter.v1: publications carry epoch and offset; send → reply;
// - the node is killed (SIGKILL) and restarted while 1,000 messages are
//   published through scripts/redis/publish.lua: the page ends with all of
//   them exactly once, in order, and recovered:true;
// - the TCP connection is cut (a proxy of this test drops it and refuses
//   new ones) while 1,000 are published through POST /api/publish: the same;
// - Redis loses the history while the page is away: a 'resync' event
//   (recovered:false) and the new epoch;
// - a bad token: an error with close code 1008, state 'closed', no endless
//   reconnect (one retry with a token from getToken, then stop);
// - the token runs out: close 1008 "token expired", getToken('expired'), the
//   client reconnects and recovers what was published meanwhile;
// - a v1 `refresh` before expiry keeps the same session past the old
//   expiry (skipped, exit 77, while the server answers "refresh is not
//   available").
// Exits 77 when chromium or redis-server is not installed.
'use strict';

const { spawn } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

const SKIP = 77;
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.resolve(process.env.WSROUTER || path.join(ROOT, 'build', 'wsrouter'));
const CHROMIUM = process.env.CHROMIUM
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
const REDIS = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => fs.existsSync(p));
const CLIENT_JS = path.join(ROOT, 'clients', 'js', 'wsrouter.js');
const PUBLISH_LUA = path.join(ROOT, 'scripts', 'redis', 'publish.lua');
const HISTORY = 2000;

if (!CHROMIUM) {
  console.log('SKIP suite: chromium not installed (scripts/deps test installs it)');
  process.exit(SKIP);
}
if (!REDIS) {
  console.log('SKIP suite: redis-server not installed (scripts/deps test installs it)');
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

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

// ---------------------------------------------------------------------------
//  JWT (HS256), minted here, independent of the server

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-')
    .replace(/\//g, '_');
}

function mint(secret, sub, { ttl = 600, channels, expOffset } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { sub, iat: now - (expOffset !== undefined && expOffset < 0 ? 60 : 0) };
  payload.exp = expOffset !== undefined ? now + expOffset : now + ttl;
  if (channels) payload.channels = channels;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(payload));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

// ---------------------------------------------------------------------------
//  redis-server and a small RESP client (pipelined EVALSHA of publish.lua)

async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync('/tmp/e2e-browser-redis-');
  const proc = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir],
  { stdio: ['ignore', 'ignore', 'ignore'] });
  started.push(proc);
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      const r = await Resp.connect(port);
      await r.call('PING');
      r.close();
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} not ready: ${err.message}`);
      await sleep(50);
    }
  }
  return { proc, port, url: `redis://127.0.0.1:${port}` };
}

class Resp {
  static connect(port) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      sock.once('error', reject);
      sock.once('connect', () => {
        sock.removeListener('error', reject);
        resolve(new Resp(sock));
      });
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.waiting = [];
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this._parse();
    });
    sock.on('error', (e) => this._failAll(e));
    sock.on('close', () => this._failAll(new Error('redis connection closed')));
  }

  _failAll(err) {
    for (const w of this.waiting.splice(0)) w.reject(err);
  }

  _parseOne(pos) {
    const nl = this.buf.indexOf('\r\n', pos);
    if (nl < 0) return null;
    const kind = String.fromCharCode(this.buf[pos]);
    const line = this.buf.toString('utf8', pos + 1, nl);
    const next = nl + 2;
    if (kind === '+' || kind === ':') return { value: kind === ':' ? Number(line) : line, next };
    if (kind === '-') return { value: new Error(line), next };
    if (kind === '$') {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      if (this.buf.length < next + n + 2) return null;
      return { value: this.buf.toString('utf8', next, next + n), next: next + n + 2 };
    }
    if (kind === '*') {
      const n = Number(line);
      const out = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = this._parseOne(p);
        if (!r) return null;
        out.push(r.value);
        p = r.next;
      }
      return { value: out, next: p };
    }
    throw new Error(`RESP: unexpected ${kind}`);
  }

  _parse() {
    for (;;) {
      if (!this.buf.length || !this.waiting.length) return;
      const r = this._parseOne(0);
      if (!r) return;
      this.buf = this.buf.subarray(r.next);
      const w = this.waiting.shift();
      if (r.value instanceof Error) w.reject(r.value);
      else w.resolve(r.value);
    }
  }

  static encode(args) {
    const parts = [`*${args.length}\r\n`];
    for (const a of args) {
      const b = Buffer.from(String(a));
      parts.push(`$${b.length}\r\n`, b, '\r\n');
    }
    return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
  }

  call(...args) {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write(Resp.encode(args));
    });
  }

  //  Many commands in one write; their replies in order
  pipeline(commands) {
    const replies = commands.map(() => new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
    }));
    this.sock.write(Buffer.concat(commands.map((c) => Resp.encode(c))));
    return Promise.all(replies);
  }

  close() {
    this.sock.destroy();
  }
}

// ---------------------------------------------------------------------------
//  The node: `wsrouter serve` with Redis and history; restartable on its port

function startNode(cfg, port) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('WEBSOCKET_') && !k.startsWith('JWT_') && !k.startsWith('NATS_')) env[k] = v;
  }
  const args = ['serve', '--port', String(port || 0), '--bind', '127.0.0.1',
    '--jwt-secret', cfg.secret, '--api-key', cfg.apiKey, '--redis-url', cfg.redisUrl,
    '--history-size', String(HISTORY), '--upstream-url', cfg.upstreamUrl,
    '--rate-messages', '0', '--max-per-ip', '0', '--handshake-rate', '0'];
  const proc = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(proc);
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /ws:\/\/[^:\s/]+:(\d+)\/ws/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.on('error', (e) => reject(new Error(`cannot start ${BIN}: ${e.message}`)));
    proc.on('exit', (code, sig) => reject(new Error(
      `wsrouter exited (${code === null ? sig : code}) before it was ready: ${err}`)));
  });
  return withTimeout(ready, 15000, 'wsrouter ready line').then((p) => {
    const node = { proc, port: p, stderr: () => err };
    node.kill = () => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      proc.once('exit', () => resolve());
      proc.kill('SIGKILL');
    });
    node.stop = () => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
      const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      proc.once('exit', (code) => { clearTimeout(killer); resolve(code); });
      proc.kill('SIGTERM');
    });
    return node;
  });
}

//  Sequential POST /api/publish on one keep-alive agent
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function apiPublish(cfg, body) {
  const data = Buffer.from(JSON.stringify(body));
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: cfg.node.port, method: 'POST',
      path: '/api/publish', agent,
      headers: { Authorization: `apikey ${cfg.apiKey}`, 'Content-Type': 'application/json',
        'Content-Length': data.length } }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        if (res.statusCode >= 200 && res.statusCode < 300) resolve(text);
        else reject(new Error(`publish ${JSON.stringify(body).slice(0, 80)}: HTTP ${res.statusCode} ${text}`));
      });
    });
    req.on('error', reject);
    req.end(data);
  }), 10000, 'POST /api/publish');
}

// ---------------------------------------------------------------------------
//  Test web server: the page, the client module, a token endpoint (the
//  "login API" getToken calls) and the HTTP upstream (echo)

function startWeb(cfg) {
  const page = '<!doctype html><meta charset="utf-8"><title>wsrouter e2e</title>'
    + '<script type="module">import { WsrouterClient } from "/wsrouter.js";'
    + 'window.WsrouterClient = WsrouterClient; window.ready = true;</script>';
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(page);
    } else if (url.pathname === '/wsrouter.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      res.end(fs.readFileSync(CLIENT_JS));
    } else if (url.pathname === '/token') {
      const sub = url.searchParams.get('sub');
      const secret = url.searchParams.get('bad') ? 'not-the-secret' : cfg.secret;
      const channels = url.searchParams.get('channels');
      cfg.tokensMinted.push(sub);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Access-Control-Allow-Origin': '*' });
      res.end(mint(secret, sub, { ttl: Number(url.searchParams.get('ttl') || 600),
        channels: channels ? channels.split(',') : undefined }));
    } else if (url.pathname === '/upstream' && req.method === 'POST') {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        cfg.upstream.push(body);
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('echo:' + body.length);
      });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, port: server.address().port }));
  });
}

// ---------------------------------------------------------------------------
//  A TCP proxy in front of the node whose connections the test can cut

function startProxy(targetPort) {
  const sockets = new Set();
  const state = { refusing: false, accepted: 0 };
  const server = net.createServer((client) => {
    state.accepted++;
    if (state.refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(state.target || targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        state,
        cut() {
          state.refusing = true;
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        restore() { state.refusing = false; },
        close() { this.cut(); server.close(); },
      });
    });
  });
}

// ---------------------------------------------------------------------------
//  In the page: clients by name, everything they report kept in window.T

async function pageClient(page, name, url, options, tokenQuery) {
  await page.evaluate((name, url, options, tokenQuery) => {
    window.T = window.T || {};
    const t = { messages: [], states: [], errors: [], welcomes: [], resyncs: [], replies: [],
      refreshed: [], closes: [], tokenReasons: [] };
    window.T[name] = t;
    const opts = { ...options };
    if (tokenQuery) {
      opts.getToken = async ({ reason }) => {
        t.tokenReasons.push(reason);
        const r = await fetch('/token?' + tokenQuery);
        return r.text();
      };
    }
    const c = new window.WsrouterClient(url, opts);
    t.client = c;
    c.on('message', (m) => t.messages.push({ topic: m.topic, offset: m.offset, epoch: m.epoch,
      binary: m.binary, data: m.binary ? Array.from(m.data) : m.data }));
    c.on('state', (s) => t.states.push(s.state));
    c.on('error', (e) => t.errors.push({ message: e.message, code: e.code, reason: e.reason,
      fatal: e.fatal }));
    c.on('welcome', (w) => t.welcomes.push(JSON.parse(JSON.stringify(w))));
    c.on('resync', (r) => t.resyncs.push(r));
    c.on('reply', (r) => t.replies.push(r.data));
    c.on('refreshed', (r) => t.refreshed.push(r.expires));
    c.on('close', (c2) => t.closes.push(c2));
    c.connect();
  }, name, url, options, tokenQuery || null);
}

function view(page, name) {
  return page.evaluate((name) => {
    const t = window.T[name];
    return { messages: t.messages.length, state: t.client.state, states: t.states.slice(),
      errors: t.errors.slice(), welcomes: t.welcomes.slice(), resyncs: t.resyncs.slice(),
      replies: t.replies.slice(), refreshed: t.refreshed.slice(), closes: t.closes.slice(),
      tokenReasons: t.tokenReasons.slice(), connections: t.client.connections,
      duplicates: t.client.duplicates, session: t.client.session,
      positions: t.client.positions };
  }, name);
}

function messages(page, name, from = 0) {
  return page.evaluate((name, from) => window.T[name].messages.slice(from), name, from);
}

async function waitFor(page, name, pred, ms, what) {
  const deadline = Date.now() + ms;
  let v;
  for (;;) {
    v = await view(page, name);
    if (pred(v)) return v;
    if (Date.now() > deadline) {
      throw new Error(`${what}: not within ${ms} ms; client state ${v.state}, ` +
        `${v.messages} messages, errors ${JSON.stringify(v.errors).slice(0, 400)}, ` +
        `closes ${JSON.stringify(v.closes).slice(0, 300)}`);
    }
    await sleep(50);
  }
}

//  Exactly once, in order: payloads prefix0..prefix(n-1), offsets 1..n
async function expectSequence(page, name, topic, prefix, n) {
  const got = (await messages(page, name)).filter((m) => m.topic === topic);
  const bad = [];
  if (got.length !== n) bad.push(`expected ${n} messages on ${topic}, got ${got.length}`);
  for (let i = 0; i < Math.min(got.length, n) && bad.length < 5; i++) {
    if (got[i].data !== prefix + i || got[i].offset !== i + 1) {
      bad.push(`#${i}: expected ${prefix + i} at offset ${i + 1}, got ${got[i].data} at ${got[i].offset}`);
    }
  }
  const seen = new Set(got.map((m) => m.data));
  if (seen.size !== got.length) bad.push(`${got.length - seen.size} duplicates`);
  expect(!bad.length, bad.join('; '));
}

// ---------------------------------------------------------------------------

async function main() {
  const results = { passed: 0, failed: 0, skipped: 0 };
  const cfg = { secret: 'b-secret-' + crypto.randomBytes(12).toString('hex'),
    apiKey: 'b-key-' + crypto.randomBytes(12).toString('hex'), tokensMinted: [], upstream: [] };
  let browser = null;
  let web = null;
  let proxy = null;
  const run = async (name, fn) => {
    try {
      await withTimeout(fn(), 90000, name);
      results.passed++;
      console.log(`PASS ${name}`);
    } catch (err) {
      if (err && err.skip) {
        results.skipped++;
        console.log(`SKIP ${name}: ${err.message}`);
      } else {
        results.failed++;
        console.log(`FAIL ${name}: ${err && err.stack ? err.stack : err}`);
      }
    }
  };
  try {
    const redis = await startRedis();
    cfg.redisUrl = redis.url;
    web = await startWeb(cfg);
    cfg.upstreamUrl = `http://127.0.0.1:${web.port}/upstream`;
    cfg.node = await startNode(cfg, 0);
    proxy = await startProxy(cfg.node.port);
    const direct = `ws://127.0.0.1:${cfg.node.port}/ws`;
    const proxied = `ws://127.0.0.1:${proxy.port}/ws`;
    const fast = { baseDelay: 50, maxDelay: 500, jitter: 0.5 };
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
    const page = await browser.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await page.goto(`http://127.0.0.1:${web.port}/`);
    await page.waitForFunction('window.ready === true', { timeout: 10000 });

    await run('raw mode: a publish arrives as one frame, text and binary; send gets the reply',
      async () => {
        await pageClient(page, 'raw', direct, { protocol: 'raw', token: mint(cfg.secret, 'r1'),
          ...fast });
        await waitFor(page, 'raw', (v) => v.state === 'connected', 10000, 'raw connected');
        await sleep(200);           // the session subscribes after the upgrade
        await apiPublish(cfg, { user: 'r1', data: 'hello raw' });
        await apiPublish(cfg, { user: 'r1', data_base64: Buffer.from([0, 1, 255]).toString('base64') });
        await waitFor(page, 'raw', (v) => v.messages >= 2, 10000, 'raw messages');
        const got = await messages(page, 'raw');
        expect(got[0].data === 'hello raw' && !got[0].binary && got[0].topic === undefined,
          `raw text: ${JSON.stringify(got[0])}`);
        expect(got[1].binary && JSON.stringify(got[1].data) === '[0,1,255]',
          `raw binary: ${JSON.stringify(got[1])}`);
        const sent = await page.evaluate(() => window.T.raw.client.send('up raw'));
        expect(sent === true, 'send returned false while connected');
        await waitFor(page, 'raw', (v) => v.messages >= 3, 10000, 'raw reply');
        const reply = (await messages(page, 'raw'))[2];
        expect(reply.data === 'echo:' + JSON.stringify(cfg.upstream[0] || '').length
          || /^echo:\d+$/.test(reply.data), `raw reply: ${JSON.stringify(reply)}`);
        expect(cfg.upstream.some((b) => b.includes('up raw')), `upstream got ${cfg.upstream}`);
        await page.evaluate(() => window.T.raw.client.close());
      });

    await run('v1: welcome, publications with epoch and offset, send → reply', async () => {
      await pageClient(page, 'v1', direct, { token: mint(cfg.secret, 'u1', { channels: ['lobby'] }),
        ...fast });
      const v = await waitFor(page, 'v1', (x) => x.state === 'connected', 10000, 'v1 welcome');
      const w = v.welcomes[0];
      expect(w && w.topics['user:u1'] && w.topics['channel:lobby'] && /^\d+$/.test(w.session),
        `welcome: ${JSON.stringify(w)}`);
      for (let i = 0; i < 3; i++) await apiPublish(cfg, { user: 'u1', data: 'a' + i });
      await apiPublish(cfg, { channel: 'lobby', data: { hp: 3 } });
      await waitFor(page, 'v1', (x) => x.messages >= 4, 10000, 'v1 messages');
      await expectSequence(page, 'v1', 'user:u1', 'a', 3);
      const got = await messages(page, 'v1');
      const lobby = got.find((m) => m.topic === 'channel:lobby');
      expect(lobby && lobby.data === '{"hp":3}' && lobby.offset === 1 && lobby.epoch,
        `channel pub: ${JSON.stringify(lobby)}`);
      expect(got[0].epoch && got[0].epoch === w.topics['user:u1'].epoch,
        `epoch ${got[0].epoch} vs welcome ${w.topics['user:u1'].epoch}`);
      const pos = (await view(page, 'v1')).positions;
      expect(pos['user:u1'].offset === 3 && pos['channel:lobby'].offset === 1,
        `positions ${JSON.stringify(pos)}`);
      const n = cfg.upstream.length;
      await page.evaluate(() => window.T.v1.client.send({ move: 'up' }));
      await waitFor(page, 'v1', (x) => x.replies.length >= 1, 10000, 'v1 reply');
      const r = await view(page, 'v1');
      expect(/^echo:\d+$/.test(r.replies[0]), `reply ${JSON.stringify(r.replies)}`);
      expect(cfg.upstream.slice(n).some((b) => b.includes('move')), 'upstream did not get the send');
      await page.evaluate(() => window.T.v1.client.close());
    });

    await run('node killed and restarted while 1000 are published (publish.lua): '
      + 'all arrive exactly once, in order', async () => {
      await pageClient(page, 'restart', direct, { token: mint(cfg.secret, 'u2'), ...fast });
      await waitFor(page, 'restart', (x) => x.state === 'connected', 10000, 'welcome');
      for (let i = 0; i < 10; i++) await apiPublish(cfg, { user: 'u2', data: 'm' + i });
      await waitFor(page, 'restart', (x) => x.messages >= 10, 10000, 'first 10');
      await cfg.node.kill();
      await waitFor(page, 'restart', (x) => x.state !== 'connected', 10000, 'disconnect seen');
      const r = await Resp.connect(redis.port);
      const sha = await r.call('SCRIPT', 'LOAD', fs.readFileSync(PUBLISH_LUA, 'utf8'));
      const cmds = [];
      for (let i = 10; i < 1010; i++) cmds.push(['EVALSHA', sha, '1', 'ws:u2', 'm' + i, String(HISTORY)]);
      const replies = await r.pipeline(cmds);
      r.close();
      expect(Number(replies[999][0]) === 1010, `publish.lua last offset ${JSON.stringify(replies[999])}`);
      cfg.node = await startNode(cfg, cfg.node.port);
      const v = await waitFor(page, 'restart', (x) => x.messages >= 1010, 60000, '1010 messages');
      await expectSequence(page, 'restart', 'user:u2', 'm', 1010);
      const last = v.welcomes[v.welcomes.length - 1];
      expect(v.welcomes.length >= 2 && last.topics['user:u2'].recovered === true,
        `welcome after the restart: ${JSON.stringify(last)}`);
      expect(!v.resyncs.length, `resync events: ${JSON.stringify(v.resyncs)}`);
      expect(v.states.includes('recovering'), `states ${v.states}`);
      for (let i = 1010; i < 1015; i++) await apiPublish(cfg, { user: 'u2', data: 'm' + i });
      await waitFor(page, 'restart', (x) => x.messages >= 1015, 10000, 'live after recovery');
      await sleep(200);
      await expectSequence(page, 'restart', 'user:u2', 'm', 1015);
      await page.evaluate(() => window.T.restart.client.close());
    });

    proxy.state.target = cfg.node.port;
    await run('TCP connection cut while 1000 are published (API): all arrive exactly once, '
      + 'in order', async () => {
      await pageClient(page, 'cut', proxied, { token: mint(cfg.secret, 'u3'), ...fast });
      await waitFor(page, 'cut', (x) => x.state === 'connected', 10000, 'welcome');
      for (let i = 0; i < 10; i++) await apiPublish(cfg, { user: 'u3', data: 'c' + i });
      await waitFor(page, 'cut', (x) => x.messages >= 10, 10000, 'first 10');
      proxy.cut();
      await waitFor(page, 'cut', (x) => x.state !== 'connected', 10000, 'disconnect seen');
      for (let i = 10; i < 1010; i++) await apiPublish(cfg, { user: 'u3', data: 'c' + i });
      const before = (await view(page, 'cut')).messages;
      expect(before === 10, `${before} messages arrived while the connection was cut`);
      proxy.restore();
      const v = await waitFor(page, 'cut', (x) => x.messages >= 1010, 60000, '1010 messages');
      await sleep(300);
      await expectSequence(page, 'cut', 'user:u3', 'c', 1010);
      const last = v.welcomes[v.welcomes.length - 1];
      expect(last.topics['user:u3'].recovered === true, `welcome ${JSON.stringify(last)}`);
      await page.evaluate(() => window.T.cut.client.close());
    });

    await run('history lost while away (Redis FLUSHALL): resync event, new epoch', async () => {
      await pageClient(page, 'lost', proxied, { token: mint(cfg.secret, 'u4'), ...fast });
      await waitFor(page, 'lost', (x) => x.state === 'connected', 10000, 'welcome');
      for (let i = 0; i < 3; i++) await apiPublish(cfg, { user: 'u4', data: 'l' + i });
      await waitFor(page, 'lost', (x) => x.messages >= 3, 10000, 'first 3');
      const oldEpoch = (await view(page, 'lost')).positions['user:u4'].epoch;
      proxy.cut();
      await waitFor(page, 'lost', (x) => x.state !== 'connected', 10000, 'disconnect seen');
      const r = await Resp.connect(redis.port);
      await r.call('FLUSHALL');
      r.close();
      await apiPublish(cfg, { user: 'u4', data: 'new0' });
      proxy.restore();
      const v = await waitFor(page, 'lost', (x) => x.resyncs.length >= 1 && x.state === 'connected',
        20000, 'resync');
      expect(v.resyncs[0].topic === 'user:u4' && v.resyncs[0].epoch !== oldEpoch,
        `resync ${JSON.stringify(v.resyncs)} (old epoch ${oldEpoch})`);
      await apiPublish(cfg, { user: 'u4', data: 'new1' });
      await waitFor(page, 'lost', (x) => x.messages >= 4, 10000, 'live after resync');
      const got = (await messages(page, 'lost')).slice(3);
      const last = got[got.length - 1];
      expect(last.data === 'new1' && last.epoch === v.resyncs[0].epoch,
        `after resync: ${JSON.stringify(got)}`);
      await page.evaluate(() => window.T.lost.client.close());
    });

    await run('bad token: error with close code 1008, closed, no reconnect loop', async () => {
      const bad = mint('not-the-secret', 'u6');
      await pageClient(page, 'bad', direct, { token: bad, ...fast });
      await pageClient(page, 'badraw', direct, { protocol: 'raw', token: bad, ...fast });
      //  With getToken: one new token (also bad), then it stops
      await pageClient(page, 'badcb', direct, { token: bad, ...fast }, 'sub=u6&bad=1');
      for (const name of ['bad', 'badraw', 'badcb']) {
        const v = await waitFor(page, name, (x) => x.state === 'closed', 10000, `${name} closed`);
        const fatal = v.errors.find((e) => e.fatal);
        expect(fatal && fatal.code === 1008 && fatal.reason === 'bad signature',
          `${name}: errors ${JSON.stringify(v.errors)}`);
      }
      await sleep(1500);
      for (const [name, want] of [['bad', 1], ['badraw', 1], ['badcb', 2]]) {
        const v = await view(page, name);
        expect(v.connections === want && v.state === 'closed',
          `${name}: ${v.connections} connections (expected ${want}), state ${v.state}`);
      }
      expect(JSON.stringify((await view(page, 'badcb')).tokenReasons) === '["rejected"]',
        'getToken reasons');
    });

    //  Two clients whose token runs out in 3 s, started together: one waits
    //  for the server's close (refreshBefore far behind expires), one
    //  refreshes before. The server closes at exp plus its leeway (30 s).
    const expToken = (sub) => mint(cfg.secret, sub, { expOffset: 3 });
    await pageClient(page, 'exp', direct, { token: expToken('u5'), refreshBefore: -3600, ...fast },
      'sub=u5');
    await pageClient(page, 'ref', direct, { token: expToken('u7'), refreshBefore: 60, ...fast },
      'sub=u7');
    const expAt = Date.now() / 1000 + 3;

    await run('token expired: close 1008, getToken("expired"), reconnect, recovery', async () => {
      await waitFor(page, 'exp', (x) => x.state === 'connected', 10000, 'welcome');
      for (let i = 0; i < 5; i++) await apiPublish(cfg, { user: 'u5', data: 'e' + i });
      await waitFor(page, 'exp', (x) => x.messages >= 5, 10000, 'first 5');
      const v1 = await waitFor(page, 'exp', (x) => x.closes.length >= 1, 45000, 'expiry close');
      expect(v1.closes[0].code === 1008 && v1.closes[0].reason === 'token expired',
        `close ${JSON.stringify(v1.closes)}`);
      for (let i = 5; i < 10; i++) await apiPublish(cfg, { user: 'u5', data: 'e' + i });
      const v = await waitFor(page, 'exp', (x) => x.messages >= 10 && x.state === 'connected',
        15000, 'recovered after the new token');
      await expectSequence(page, 'exp', 'user:u5', 'e', 10);
      expect(JSON.stringify(v.tokenReasons) === '["expired"]', `getToken reasons ${v.tokenReasons}`);
      expect(v.welcomes.length === 2 && v.welcomes[1].topics['user:u5'].recovered === true,
        `welcomes ${JSON.stringify(v.welcomes)}`);
      expect(!v.errors.some((e) => e.fatal), `errors ${JSON.stringify(v.errors)}`);
      await page.evaluate(() => window.T.exp.client.close());
    });

    await run('refresh before expiry keeps the same session past the old expiry', async () => {
      const v0 = await waitFor(page, 'ref', (x) => x.welcomes.length >= 1, 10000, 'welcome');
      const session = v0.welcomes[0].session;
      const v1 = await waitFor(page, 'ref', (x) => x.refreshed.length >= 1 || x.errors.length >= 1
        || x.closes.length >= 1, 10000, 'refreshed');
      const notAvailable = v1.errors.find((e) => /refresh is not available/.test(e.message));
      if (notAvailable && !v1.refreshed.length) {
        await page.evaluate(() => window.T.ref.client.close());
        const err = new Error('the server answers "refresh is not available" '
          + '(v1 refresh not implemented in this build: actors/wsr_session.c s_v1_refresh)');
        err.skip = true;
        throw err;
      }
      expect(v1.refreshed.length === 1 && v1.refreshed[0] > Date.now() / 1000 + 300
        && JSON.stringify(v1.tokenReasons) === '["refresh"]',
        `refreshed ${JSON.stringify(v1.refreshed)}, errors ${JSON.stringify(v1.errors)}, `
        + `closes ${JSON.stringify(v1.closes)}, getToken reasons ${v1.tokenReasons}`);
      //  Past the old token's expiry plus the server's leeway
      await sleep(Math.max(0, (expAt + 32) * 1000 - Date.now()));
      const v = await view(page, 'ref');
      expect(v.closes.length === 0 && v.state === 'connected' && v.session === session,
        `after the old expiry: closes ${JSON.stringify(v.closes)}, state ${v.state}`);
      await apiPublish(cfg, { user: 'u7', data: 'still' });
      await waitFor(page, 'ref', (x) => x.messages >= 1, 10000, 'publication after refresh');
      await page.evaluate(() => window.T.ref.client.close());
    });

    expect(!pageErrors.length, `page errors: ${pageErrors.join('; ')}`);
  } catch (err) {
    results.failed++;
    console.log(`FAIL setup: ${err && err.stack ? err.stack : err}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (proxy) proxy.close();
    if (web) web.server.close();
    agent.destroy();
    if (cfg.node) await cfg.node.stop();
    for (const p of started) {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
  }
  let line = `${results.passed} passed, ${results.failed} failed`;
  if (results.skipped) line += `, ${results.skipped} skipped`;
  console.log(line);
  if (results.failed) process.exit(1);
  process.exit(results.skipped ? SKIP : 0);
}

main();
