#!/usr/bin/env node
// e2e_jsclient — clients/js/wsrouter.js in Node (the npm `ws` package as its
// WebSocket) against scripted wsrouter.v1 servers made here with `ws`, for
// what a real node never does on purpose:
// - a server that replays publications the client already has: each is
//   delivered once (dropped by offset), and the next hello offers the last
//   delivered position;
// - recovered:false in the welcome: a 'resync' event, and the welcome's
//   position adopted (publications at or below its offset still delivered);
// - the hello's positions refused ("recover: ..." error): hello again
//   without them, 'resync' for each;
// - backoff: delays grow from baseDelay, capped by maxDelay, within the
//   jitter; maxAttempts failed attempts end the client (fatal error);
// - send: text, JSON and bytes become v1 send messages.
// The browser and a real node are in e2e_browser.js.
'use strict';

const http = require('http');
const path = require('path');
const { pathToFileURL } = require('url');

let WebSocket;
try {
  WebSocket = require('ws');
} catch (err) {
  console.log('FAIL setup: the npm package ws is not installed: run `npm ci` in ' + __dirname);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const CLIENT = pathToFileURL(path.join(__dirname, '..', '..', 'clients', 'js', 'wsrouter.js')).href;

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(10);
  }
}

//  A v1 server; script(ws, hello, n) runs for the n-th connection
function server(script) {
  return new Promise((resolve) => {
    const httpServer = http.createServer();
    const wss = new WebSocket.Server({ server: httpServer,
      handleProtocols: (protocols) => (protocols.has('wsrouter.v1') ? 'wsrouter.v1' : false) });
    const s = { hellos: [], received: [], connections: 0, wss, httpServer };
    wss.on('connection', (ws) => {
      const n = s.connections++;
      let greeted = false;
      ws.on('message', (data) => {
        const m = JSON.parse(String(data));
        s.received.push(m);
        if (m.type === 'hello' && !greeted) {
          s.hellos.push(m);
          greeted = script(ws, m, n) !== false;
        }
      });
    });
    httpServer.listen(0, '127.0.0.1', () => {
      s.url = `ws://127.0.0.1:${httpServer.address().port}/ws`;
      s.close = () => { for (const c of wss.clients) c.terminate(); wss.close(); httpServer.close(); };
      resolve(s);
    });
  });
}

const pub = (topic, epoch, offset, data) => JSON.stringify({ type: 'pub', topic, epoch, offset, data });

function record(client) {
  const t = { messages: [], errors: [], resyncs: [], states: [], closes: [] };
  client.on('message', (m) => t.messages.push(m));
  client.on('error', (e) => t.errors.push(e));
  client.on('resync', (r) => t.resyncs.push(r));
  client.on('state', (s) => t.states.push(s.state));
  client.on('close', (c) => t.closes.push(c));
  return t;
}

async function main() {
  const { WsrouterClient } = await import(CLIENT);
  let passed = 0;
  let failed = 0;
  const run = async (name, fn) => {
    try {
      await fn();
      passed++;
      console.log(`PASS ${name}`);
    } catch (err) {
      failed++;
      console.log(`FAIL ${name}: ${err && err.stack ? err.stack : err}`);
    }
  };

  await run('replayed publications are delivered once; the next hello offers the last', async () => {
    const s = await server((ws, hello, n) => {
      if (n === 0) {
        ws.send(JSON.stringify({ type: 'welcome', session: '1', node: 'a', expires: null,
          topics: { 'user:u1': { epoch: 'E', offset: 0 } } }));
        for (let i = 1; i <= 3; i++) ws.send(pub('user:u1', 'E', i, 'p' + i));
        setTimeout(() => ws.terminate(), 50);
      } else {
        ws.send(JSON.stringify({ type: 'welcome', session: '2', node: 'a', expires: null,
          topics: { 'user:u1': { epoch: 'E', offset: 5, recovered: true } } }));
        //  A server that replays too much: 2 and 3 again, then 4, 5
        for (let i = 2; i <= 5; i++) ws.send(pub('user:u1', 'E', i, 'p' + i));
        ws.send(JSON.stringify({ type: 'pub', topic: 'user:u1', data: 'plain' }));
      }
    });
    const c = new WsrouterClient(s.url, { WebSocket, token: 't', baseDelay: 10, maxDelay: 50 });
    const t = record(c);
    c.connect();
    await until(() => t.messages.length >= 6, 5000, '6 messages');
    await sleep(100);
    const got = t.messages.map((m) => m.data).join(',');
    expect(got === 'p1,p2,p3,p4,p5,plain', `delivered ${got}`);
    expect(c.duplicates === 2, `duplicates ${c.duplicates}`);
    expect(JSON.stringify(s.hellos[0]) === '{"type":"hello"}', `first hello ${JSON.stringify(s.hellos[0])}`);
    expect(JSON.stringify(s.hellos[1].recover) === '{"user:u1":{"epoch":"E","offset":3}}',
      `second hello ${JSON.stringify(s.hellos[1])}`);
    expect(JSON.stringify(c.positions) === '{"user:u1":{"epoch":"E","offset":5}}',
      `positions ${JSON.stringify(c.positions)}`);
    expect(t.states.join(',') === 'connecting,connected,disconnected,recovering,connected',
      `states ${t.states}`);
    c.close();
    s.close();
  });

  await run('recovered:false: resync, the welcome position adopted, later offsets kept', async () => {
    const s = await server((ws, hello) => {
      ws.send(JSON.stringify({ type: 'welcome', session: '1', node: 'a', expires: null,
        topics: { 'user:u1': { epoch: 'F', offset: 9, recovered: false },
          'channel:c': { epoch: 'G', offset: 4 } } }));
      //  Held during the opening: at or below the welcome's offset, still new
      ws.send(pub('user:u1', 'F', 9, 'f9'));
      ws.send(pub('user:u1', 'F', 10, 'f10'));
      ws.send(pub('user:u1', 'F', 10, 'f10 again'));
    });
    const c = new WsrouterClient(s.url, { WebSocket, token: 't',
      positions: { 'user:u1': { epoch: 'E', offset: 7 }, 'bad topic': { epoch: 'E' } } });
    const t = record(c);
    c.connect();
    await until(() => t.messages.length >= 2, 5000, 'messages');
    await sleep(100);
    expect(JSON.stringify(s.hellos[0].recover) === '{"user:u1":{"epoch":"E","offset":7}}',
      `hello ${JSON.stringify(s.hellos[0])}`);
    expect(t.resyncs.length === 1 && t.resyncs[0].topic === 'user:u1' && t.resyncs[0].epoch === 'F',
      `resyncs ${JSON.stringify(t.resyncs)}`);
    expect(t.messages.map((m) => m.data).join(',') === 'f9,f10', 'messages');
    expect(JSON.stringify(c.positions) === '{"user:u1":{"epoch":"F","offset":10},'
      + '"channel:c":{"epoch":"G","offset":4}}', `positions ${JSON.stringify(c.positions)}`);
    expect(t.states[0] === 'recovering', `states ${t.states}`);
    c.close();
    s.close();
  });

  await run('positions refused: hello again without them, resync each', async () => {
    const s = await server((ws, hello) => {
      if (hello.recover) {
        ws.send(JSON.stringify({ type: 'error', error: 'recover: not a topic' }));
        return false;           // still waiting for a hello
      }
      ws.send(JSON.stringify({ type: 'welcome', session: '1', node: 'a', expires: null,
        topics: { 'user:u1': { epoch: 'E', offset: 2 } } }));
      return true;
    });
    const c = new WsrouterClient(s.url, { WebSocket, token: 't',
      positions: { 'user:x y': { epoch: 'E', offset: 1 } } });
    const t = record(c);
    c.connect();
    await until(() => c.state === 'connected', 5000, 'connected');
    expect(s.hellos.length === 2 && !s.hellos[1].recover, `hellos ${JSON.stringify(s.hellos)}`);
    expect(t.resyncs.length === 1 && t.resyncs[0].topic === 'user:x y', 'resync');
    c.close();
    s.close();
  });

  await run('backoff grows within the jitter and the cap; maxAttempts ends it', async () => {
    //  A port nobody listens on: every attempt fails
    const probe = http.createServer();
    await new Promise((r) => probe.listen(0, '127.0.0.1', r));
    const port = probe.address().port;
    await new Promise((r) => probe.close(r));
    const c = new WsrouterClient(`ws://127.0.0.1:${port}/ws`, { WebSocket, token: 't',
      baseDelay: 20, maxDelay: 100, jitter: 0.5, maxAttempts: 6 });
    const t = record(c);
    c.connect();
    await until(() => c.state === 'closed', 5000, 'closed');
    const delays = t.closes.map((x) => x.reconnectIn);
    //  attempt n waits min(100, 20 * 2^(n-1)) * (1 - 0.5 * random)
    const caps = [20, 40, 80, 100, 100];
    expect(delays.length === 6 && delays[5] === null, `delays ${delays}`);
    for (let i = 0; i < 5; i++) {
      expect(delays[i] >= caps[i] / 2 - 1 && delays[i] <= caps[i],
        `delay ${i}: ${delays[i]} not in [${caps[i] / 2}, ${caps[i]}]`);
    }
    const fatal = t.errors.find((e) => e.fatal);
    expect(fatal && /gave up after 6/.test(fatal.message) && c.connections === 6,
      `errors ${JSON.stringify(t.errors)}, ${c.connections} connections`);
  });

  await run('send: text, JSON and bytes as v1 send messages; false when not connected', async () => {
    const s = await server((ws) => {
      ws.send(JSON.stringify({ type: 'welcome', session: '1', node: 'a', expires: null, topics: {} }));
    });
    const c = new WsrouterClient(s.url, { WebSocket, token: 't' });
    expect(c.send('early') === false, 'send before connect');
    c.connect();
    await until(() => c.state === 'connected', 5000, 'connected');
    c.send('text');
    c.send({ a: 1 });
    c.send(new Uint8Array([0, 1, 2]));
    await until(() => s.received.length >= 4, 5000, 'sends');
    const sends = s.received.slice(1).map((m) => JSON.stringify(m)).join(' ');
    expect(sends === '{"type":"send","data":"text"} {"type":"send","data":{"a":1}} '
      + '{"type":"send","data_base64":"AAEC"}', `sends ${sends}`);
    c.close();
    s.close();
  });

  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
