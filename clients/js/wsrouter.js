// wsrouter.js — a client for wsrouter (docs/PROTOCOL.md), one ES module with
// no dependencies, for browsers and Node >= 20 (pass the `ws` package, or
// Node 22's global WebSocket, as options.WebSocket).
//
//   import { WsrouterClient } from './wsrouter.js';
//   const client = new WsrouterClient('wss://example.com/ws', {
//     token: initialJwt,
//     getToken: async ({ reason }) => (await fetch('/login/ws-token')).text(),
//   });
//   client.on('message', (m) => console.log(m.topic, m.offset, m.data));
//   client.on('resync', (r) => reloadStateFromBackend(r.topic));
//   client.on('error', (e) => console.warn(e.message, e.code, e.reason));
//   client.connect();
//
// Protocols. 'v1' (the default) offers Sec-WebSocket-Protocol wsrouter.v1:
// JSON frames, publications with (epoch, offset), recovery after a
// reconnect. 'raw' is wsrouter's default protocol: each publication is one
// frame, at-most-once, nothing to recover.
//
// What the client does for you:
// - reconnects with exponential backoff and jitter: attempt n (0-based,
//   counted since the last good connection) waits
//   min(maxDelay, baseDelay * 2^n) * (1 - jitter * random()), then gives up
//   after maxAttempts failed attempts in a row (state 'closed', an error);
// - v1: keeps per topic the (epoch, offset) of the last publication it
//   delivered (the welcome's position for topics it saw nothing on yet) and
//   offers them in hello.recover; a topic the server cannot prove complete
//   (welcome `recovered:false`) raises a 'resync' event: reload that
//   topic's state from your backend;
// - v1: drops publications it already delivered (same epoch, offset not
//   above the last one), so a message is delivered once even if a server
//   replays it;
// - tokens: getToken({reason}) is called 'refresh' refreshBefore seconds
//   before the welcome's `expires` (the new token goes in a v1 `refresh`
//   and is used for later connections), 'expired' after a close 1008
//   "token expired", 'rejected' once after another 1008 authentication
//   close, and 'initial' when connect() is called without a token. A token
//   from getToken that is refused again ends the client (state 'closed',
//   an error with the close code): a bad token never loops;
// - 1008 authentication closes without getToken are fatal too.
//
// Events (client.on(name, fn), client.off(name, fn)):
//   'state'     {state, previous}  idle → connecting | recovering → connected
//                                  → disconnected → ... ; closed is final
//   'welcome'   the v1 welcome object {session, node, expires, topics}
//   'message'   {topic, data, binary, offset, epoch}: data is a string, or a
//               Uint8Array when binary; topic, offset and epoch are undefined
//               in raw mode (and offset/epoch for publications without
//               history)
//   'resync'    {topic, epoch, offset}: missed publications of topic may be
//               lost (history lost, trimmed, or off)
//   'reply'     {data, binary}: the HTTP backend's answer to a send (v1)
//   'refreshed' {expires}
//   'error'     {message, code, reason, fatal, server}: code/reason of the
//               close when a close caused it; fatal means the client
//               stopped; server: a v1 {"type":"error"} (the session goes on)
//   'close'     {code, reason, reconnectIn}: a connection ended;
//               reconnectIn is the delay in ms, or null when it stops

const V1 = 'wsrouter.v1';

//  1008 closes that are not about the token: reconnect with backoff
const TRANSIENT_1008 = ['hello expected', 'rate limit exceeded', 'slow consumer'];

const DEFAULTS = {
  protocol: 'v1',           // 'v1' or 'raw'
  token: null,              // the JWT for the first connection
  getToken: null,           // async ({reason}) => JWT
  positions: null,          // {topic: {epoch, offset}} to recover from at the first connection
  baseDelay: 250,           // ms
  maxDelay: 30000,          // ms
  jitter: 0.5,              // 0..1: part of each delay that is random
  maxAttempts: Infinity,    // failed attempts in a row before giving up
  refreshBefore: 60,        // s before `expires` to refresh the token (v1)
  minRefreshInterval: 10000, // ms between two refreshes, at least
  openTimeout: 15000,       // ms from the socket's creation to the welcome (v1) or open (raw)
  stableAfter: 1000,        // raw: ms open before a connection counts as good
  WebSocket: null,          // constructor; default globalThis.WebSocket
};

function b64decode(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function b64encode(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

function reportLater(err) {
  //  A listener's exception must not break the client; surface it anyway
  if (typeof reportError === 'function') reportError(err);
  else setTimeout(() => { throw err; }, 0);
}

export class WsrouterClient {
  constructor(url, options = {}) {
    if (typeof url !== 'string' || !/^wss?:\/\//.test(url)) {
      throw new TypeError('WsrouterClient: url must be ws://... or wss://...');
    }
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    if (this.options.protocol !== 'v1' && this.options.protocol !== 'raw') {
      throw new TypeError("WsrouterClient: protocol must be 'v1' or 'raw'");
    }
    this.WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('WsrouterClient: no WebSocket: pass options.WebSocket');
    }
    this.token = this.options.token;
    this.state = 'idle';
    this.session = null;            // v1 welcome
    this.node = null;
    this.expires = null;
    this.duplicates = 0;            // publications dropped as already delivered
    this.attempts = 0;              // failed attempts in a row
    this.connections = 0;           // sockets opened, in all
    this._listeners = new Map();
    this._positions = new Map();    // topic → {epoch, offset|null, base}
    for (const [topic, p] of Object.entries(this.options.positions || {})) {
      if (p && typeof p.epoch === 'string' && Number.isInteger(p.offset) && p.offset >= 0) {
        this._positions.set(topic, { epoch: p.epoch, offset: p.offset, base: p.offset });
      }
    }
    this._ws = null;
    this._gen = 0;                  // connection generation: events of old sockets are ignored
    this._timers = new Set();
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._tokenUnproven = false;    // this.token came from getToken and no connection took it yet
    this._refreshing = false;
    this._needToken = null;         // why the next connection needs a new token first
    this._lastRefresh = -Infinity;
    this._onOnline = () => { if (this._reconnectTimer) this._reconnectNow(); };
  }

  // ---- events

  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return this;
  }

  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) set.delete(fn);
    return this;
  }

  _emit(name, arg) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        reportLater(err);
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous });
  }

  _error(message, extra = {}) {
    this._emit('error', { message, code: null, reason: null, fatal: false, ...extra });
  }

  // ---- positions

  //  {topic: {epoch, offset}}: what the next hello offers. Save it (e.g. in
  //  sessionStorage) and pass it back as options.positions to recover
  //  across page loads.
  get positions() {
    const out = {};
    for (const [topic, p] of this._positions) {
      out[topic] = { epoch: p.epoch, offset: p.offset === null ? p.base : p.offset };
    }
    return out;
  }

  // ---- connection

  connect() {
    if (this.state === 'closed') throw new Error('WsrouterClient: closed; make a new one');
    if (this.state !== 'idle') return this;
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
    this._open();
    return this;
  }

  close(code = 1000, reason = '') {
    if (this.state === 'closed') return;
    this._stop();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch (err) {
        // already closing
      }
    }
    this._setState('closed');
  }

  _stop() {
    this._gen++;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._reconnectTimer = null;
    this._refreshTimer = null;
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _clear(t) {
    if (t) {
      clearTimeout(t);
      this._timers.delete(t);
    }
  }

  async _open() {
    const gen = ++this._gen;
    this._setState(this._positions.size && this.options.protocol === 'v1'
      ? 'recovering' : 'connecting');
    if (this.options.getToken && (this._needToken || !this.token)) {
      if (!(await this._fetchToken(this._needToken || 'initial', gen))) return;
      this._needToken = null;
    }
    if (gen !== this._gen) return;
    let url = this.url;
    if (this.token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(this.token);
    let ws;
    try {
      ws = this.options.protocol === 'v1' ? new this.WebSocket(url, V1) : new this.WebSocket(url);
    } catch (err) {
      this._error('cannot open a WebSocket: ' + err.message);
      this._retry(null, '');
      return;
    }
    this.connections++;
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    const conn = { gen, good: false, closed: false };
    const openTimer = this._later(this.options.openTimeout, () => {
      if (gen !== this._gen || conn.good) return;
      this._error('no ' + (this.options.protocol === 'v1' ? 'welcome' : 'open') + ' within '
        + this.options.openTimeout + ' ms');
      this._drop(ws, conn, 4000, 'open timeout');
    });
    ws.onopen = () => {
      if (gen !== this._gen) return;
      if (this.options.protocol === 'v1') {
        if (ws.protocol !== V1) {
          this._fatal('the server did not accept ' + V1 + ' (an older wsrouter?)');
          return;
        }
        const hello = { type: 'hello' };
        if (this._positions.size) hello.recover = this.positions;
        ws.send(JSON.stringify(hello));
      } else {
        this._clear(openTimer);
        this._setState('connected');
        this._later(this.options.stableAfter, () => {
          if (gen === this._gen && !conn.closed) this._good(conn);
        });
      }
    };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      if (this.options.protocol === 'raw') {
        this._good(conn);
        const bytes = asBytes(ev.data);
        if (bytes) this._emit('message', { data: bytes, binary: true });
        else this._emit('message', { data: String(ev.data), binary: false });
        return;
      }
      this._v1Message(ev.data, conn, openTimer);
    };
    ws.onerror = () => {
      //  Always followed by a close event, which says more
    };
    ws.onclose = (ev) => {
      if (gen !== this._gen || conn.closed) return;
      conn.closed = true;
      this._clear(openTimer);
      this._closed(ev.code, ev.reason || '', conn);
    };
  }

  //  Give up on a socket (timeout): close it and carry on as if it closed.
  _drop(ws, conn, code, reason) {
    if (conn.closed) return;
    conn.closed = true;
    try {
      ws.close(code, reason);
    } catch (err) {
      // closing already
    }
    this._closed(1006, reason, conn);
  }

  //  The connection works: the backoff starts again, the token is proven.
  _good(conn) {
    if (conn.good) return;
    conn.good = true;
    this.attempts = 0;
    this._tokenUnproven = false;
  }

  _v1Message(text, conn, openTimer) {
    let m;
    try {
      m = typeof text === 'string' ? JSON.parse(text) : null;
    } catch (err) {
      m = null;
    }
    if (!m || typeof m !== 'object' || typeof m.type !== 'string') {
      this._error('the server sent a message that is not wsrouter.v1');
      return;
    }
    switch (m.type) {
      case 'welcome':
        this._clear(openTimer);
        this._welcome(m, conn);
        break;
      case 'pub':
        this._pub(m);
        break;
      case 'reply':
        this._emit('reply', m.data_base64 !== undefined
          ? { data: b64decode(m.data_base64), binary: true }
          : { data: m.data, binary: false });
        break;
      case 'refreshed':
        this._refreshing = false;
        this.expires = typeof m.expires === 'number' ? m.expires : null;
        this._emit('refreshed', { expires: this.expires });
        this._armRefresh();
        break;
      case 'error':
        if (this._refreshing && /refresh/.test(String(m.error))) this._refreshing = false;
        if (!conn.good && /^recover/.test(String(m.error))) {
          //  The hello's positions were refused (the server still waits for
          //  a hello): start those topics over, without them
          const dropped = [...this._positions.keys()];
          this._positions.clear();
          this._ws.send(JSON.stringify({ type: 'hello' }));
          this._error('positions refused: ' + m.error + '; resync ' + dropped.join(', '),
            { server: true });
          for (const topic of dropped) this._emit('resync', { topic, epoch: null, offset: null });
          break;
        }
        this._error(String(m.error), { server: true });
        break;
      default:
        break;                      // a later version's message: ignored
    }
  }

  _welcome(w, conn) {
    this._good(conn);
    this.session = w.session;
    this.node = w.node;
    this.expires = typeof w.expires === 'number' ? w.expires : null;
    const topics = w.topics && typeof w.topics === 'object' ? w.topics : {};
    const positions = new Map();
    const resync = [];
    for (const [topic, t] of Object.entries(topics)) {
      const old = this._positions.get(topic);
      if (t.recovered === true && old) {
        //  The missed publications follow, from the offset offered on
        const offset = old.offset === null ? old.base : old.offset;
        positions.set(topic, { epoch: old.epoch, offset, base: offset });
      } else {
        //  Nothing to continue from: the publications that follow the
        //  welcome may still be at or below its offset (those published
        //  during the opening), so no offset to deduplicate against yet.
        positions.set(topic, { epoch: String(t.epoch || ''), offset: null,
                               base: Number.isInteger(t.offset) ? t.offset : 0 });
        if (t.recovered === false) resync.push({ topic, epoch: t.epoch, offset: t.offset });
      }
    }
    this._positions = positions;
    this._setState('connected');
    this._emit('welcome', w);
    for (const r of resync) this._emit('resync', r);
    this._refreshing = false;
    this._armRefresh();
  }

  _pub(m) {
    const topic = m.topic;
    if (typeof m.offset === 'number' && typeof m.epoch === 'string' && m.epoch) {
      const p = this._positions.get(topic);
      if (p && p.epoch === m.epoch && p.offset !== null && m.offset <= p.offset) {
        this.duplicates++;
        return;
      }
      this._positions.set(topic, { epoch: m.epoch, offset: m.offset, base: m.offset });
    }
    const binary = m.data_base64 !== undefined;
    this._emit('message', {
      topic,
      data: binary ? b64decode(m.data_base64) : m.data,
      binary,
      offset: m.offset,
      epoch: m.epoch,
    });
  }

  // ---- tokens

  _armRefresh() {
    this._clear(this._refreshTimer);
    this._refreshTimer = null;
    if (this.expires === null || !this.options.getToken || this.options.protocol !== 'v1') return;
    //  At most one refresh per minRefreshInterval, whatever the expiry says
    const now = Date.now();
    const due = Math.max((this.expires - this.options.refreshBefore) * 1000 - now,
                         this._lastRefresh + this.options.minRefreshInterval - now, 0);
    const gen = this._gen;
    this._refreshTimer = this._later(Math.min(due, 0x7fffffff), async () => {
      this._refreshTimer = null;
      if (gen !== this._gen || this._refreshing) return;
      this._refreshing = true;
      this._lastRefresh = Date.now();
      if (!(await this._fetchToken('refresh', gen))) {
        this._refreshing = false;
        return;
      }
      if (gen !== this._gen || !this._ws || this.state !== 'connected') return;
      this._ws.send(JSON.stringify({ type: 'refresh', token: this.token }));
    });
  }

  //  Ask the application for a token. False if it failed (reported) or the
  //  connection it was for is gone.
  async _fetchToken(reason, gen) {
    let token;
    try {
      token = await this.options.getToken({ reason });
    } catch (err) {
      this._error('getToken failed: ' + (err && err.message ? err.message : err));
      if (gen === this._gen && reason !== 'refresh') {
        this.attempts++;
        this._retry(null, '');
      }
      return false;
    }
    if (gen !== this._gen) return false;
    if (typeof token !== 'string' || !token) {
      this._fatal('getToken gave no token');
      return false;
    }
    this.token = token;
    this._tokenUnproven = reason !== 'refresh';
    return true;
  }

  // ---- closes and reconnects

  _closed(code, reason, conn) {
    this._ws = null;
    this._refreshing = false;
    this._clear(this._refreshTimer);
    this._refreshTimer = null;
    if (this.state === 'closed') return;
    const auth = code === 1008 && !TRANSIENT_1008.some((r) => reason.startsWith(r));
    if (auth) {
      const info = { code, reason };
      if (!this.options.getToken) {
        this._emit('close', { code, reason, reconnectIn: null });
        this._fatal('the token was refused: ' + reason, info);
        return;
      }
      if (this._tokenUnproven) {
        this._emit('close', { code, reason, reconnectIn: null });
        this._fatal('the token from getToken was refused: ' + reason, info);
        return;
      }
      //  One new token, then a new connection at once
      this._emit('close', { code, reason, reconnectIn: 0 });
      this._setState('disconnected');
      this._needToken = reason === 'token expired' ? 'expired' : 'rejected';
      this._open();
      return;
    }
    if (!conn || !conn.good) this.attempts++;
    this._retry(code, reason);
  }

  _retry(code, reason) {
    if (this.state === 'closed') return;
    if (this.attempts >= this.options.maxAttempts) {
      this._emit('close', { code, reason, reconnectIn: null });
      this._fatal('gave up after ' + this.attempts + ' failed attempts', { code, reason });
      return;
    }
    const o = this.options;
    const n = Math.max(0, this.attempts - 1);
    const delay = Math.round(Math.min(o.maxDelay, o.baseDelay * 2 ** Math.min(n, 30))
                             * (1 - o.jitter * Math.random()));
    this._emit('close', { code, reason, reconnectIn: delay });
    this._setState('disconnected');
    this._gen++;
    this._reconnectTimer = this._later(delay, () => {
      this._reconnectTimer = null;
      this._open();
    });
  }

  _reconnectNow() {
    this._clear(this._reconnectTimer);
    this._reconnectTimer = null;
    this._open();
  }

  _fatal(message, extra = {}) {
    this._stop();
    if (this._ws) {
      try {
        this._ws.close(1000);
      } catch (err) {
        // closing already
      }
      this._ws = null;
    }
    this._error(message, { ...extra, fatal: true });
    this._setState('closed');
  }

  // ---- sending

  //  Upstream: a string goes as text, bytes (Uint8Array, ArrayBuffer) as
  //  binary, anything else as its JSON text. True if it was handed to the
  //  socket; false when not connected (nothing is queued).
  send(data) {
    const ws = this._ws;
    if (!ws || this.state !== 'connected') return false;
    const bytes = asBytes(data);
    if (this.options.protocol === 'raw') {
      ws.send(bytes || (typeof data === 'string' ? data : JSON.stringify(data)));
    } else if (bytes) {
      ws.send(JSON.stringify({ type: 'send', data_base64: b64encode(bytes) }));
    } else {
      ws.send(JSON.stringify({ type: 'send', data }));
    }
    return true;
  }
}

export default WsrouterClient;
