// wsrouter web console: plain JavaScript, served by the node itself.
// The key is asked once and kept in sessionStorage (this tab only); every
// data request carries it as "Authorization: apikey KEY". Nothing but the
// key prompt is shown until the node accepts the key.
'use strict';

const KEY_STORE = 'wsrouter.console.key';
const HISTORY = 60;                     // chart points (seconds)
const $ = (id) => document.getElementById(id);

let key = null;                         // the accepted key
let stream = null;                      // AbortController of the live stream
let topicsTimer = null;
let last = null;                        // previous figures, for rates
const series = {};                      // chart id -> values
let client = null;                      // test client WebSocket

function headers() {
  return { Authorization: 'apikey ' + key };
}

async function api(method, path, body) {
  const init = { method, headers: headers(), cache: 'no-store' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, init);
  let json = null;
  try { json = await response.json(); } catch (e) { json = null; }
  if (response.status === 401) {
    logout('the node refused the key');
  }
  return { status: response.status, json };
}

// ---------------------------------------------------------------- key prompt

function showLogin(message) {
  $('console').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('key-role').textContent = '';
  $('node-name').textContent = '';
  $('key-error').textContent = message || '';
  $('key-input').focus();
}

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  key = null;
  if (stream) { stream.abort(); stream = null; }
  if (topicsTimer) { clearInterval(topicsTimer); topicsTimer = null; }
  if (client) { client.close(); client = null; }
  showLogin(message);
}

async function tryKey(candidate) {
  let response;
  try {
    response = await fetch('/api/stats', {
      headers: { Authorization: 'apikey ' + candidate }, cache: 'no-store' });
  } catch (e) {
    showLogin('node unreachable');
    return;
  }
  if (response.status === 403) {
    sessionStorage.removeItem(KEY_STORE);
    showLogin('console disabled on this node: set WEBSOCKET_API_KEY or WEBSOCKET_CONSOLE_KEY');
    return;
  }
  if (response.status !== 200) {
    sessionStorage.removeItem(KEY_STORE);
    showLogin('key refused');
    return;
  }
  key = candidate;
  sessionStorage.setItem(KEY_STORE, key);
  const stats = await response.json();
  $('login').hidden = true;
  $('key-input').value = '';
  $('console').hidden = false;
  $('logout').hidden = false;
  $('key-role').textContent = stats.key === 'api' ? '(API key)' : '(console key)';
  render(stats);
  openStream();
  loadTopics();
  topicsTimer = setInterval(loadTopics, 1000);
}

// ---------------------------------------------------------------- figures

function setText(id, text, state) {
  const element = $(id);
  element.textContent = text;
  if (state) element.dataset.state = state;
}

function rate(now, before, name, seconds) {
  return Math.max(0, (now[name] - before[name]) / seconds);
}

function fmt(value) {
  return value >= 100 ? Math.round(value).toString() : (Math.round(value * 10) / 10).toString();
}

function push(chart, value) {
  const values = series[chart] || (series[chart] = []);
  values.push(value);
  if (values.length > HISTORY) values.shift();
  const canvas = $(chart);
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...values);
  g.strokeStyle = '#2a5db0';
  g.lineWidth = 1.5;
  g.beginPath();
  values.forEach((v, i) => {
    const x = canvas.width - (values.length - 1 - i) * (canvas.width / (HISTORY - 1));
    const y = canvas.height - 2 - (v / top) * (canvas.height - 4);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function state(flag) {
  return flag ? 'up' : 'down';
}

function backplane(value) {
  return value === 1 ? ['up', 'up'] : value === 0 ? ['down', 'down'] : ['not configured', 'off'];
}

function render(stats) {
  $('node-name').textContent = stats.node;
  setText('sessions-open', String(stats.sessions_open));
  push('chart-sessions', stats.sessions_open);
  if (last && stats.ts > last.ts) {
    const seconds = (stats.ts - last.ts) / 1000;
    const figures = [
      ['handshakes-rate', 'chart-handshakes', rate(stats, last, 'handshakes', seconds)],
      ['deliveries-in-rate', 'chart-deliveries-in', rate(stats, last, 'messages_in', seconds)],
      ['deliveries-out-rate', 'chart-deliveries-out', rate(stats, last, 'messages_out', seconds)],
      ['drops-rate', 'chart-drops', rate(stats, last, 'drops', seconds)],
    ];
    for (const [id, chart, value] of figures) {
      setText(id, fmt(value));
      push(chart, value);
    }
  }
  setText('drops-total', String(stats.drops));
  last = stats;
  setText('node-status', stats.ready ? 'ready' : stats.draining ? 'draining' : 'not ready',
          stats.ready ? 'up' : 'down');
  setText('bridge-status', stats.bridge_up ? 'up' : 'down', state(stats.bridge_up));
  setText('backplane-status', stats.backplane_up ? 'up' : 'down', state(stats.backplane_up));
  const redis = backplane(stats.redis), nats = backplane(stats.nats);
  setText('redis-status', redis[0], redis[1]);
  setText('nats-status', nats[0], nats[1]);
  setText('tls-status', stats.tls ? 'on' : 'off');
  setText('deflate-status', stats.deflate ? 'on' : 'off');
  setText('build-id', stats.build);
  $('publish-submit').disabled = !stats.can_publish;
  if (!stats.can_publish) {
    $('publish-result').textContent = 'publishing needs the API key (the console key cannot publish)';
  }
  $('client-connect').disabled = !stats.can_mint || client !== null;
  if (!stats.can_mint && !client) {
    setText('client-status', stats.mint_refusal);
  }
}

// Server-sent events read through fetch (EventSource cannot send the key).
async function openStream() {
  const controller = new AbortController();
  stream = controller;
  try {
    const response = await fetch('/api/stats/stream', {
      headers: headers(), cache: 'no-store', signal: controller.signal });
    if (response.status === 401) { logout('the node refused the key'); return; }
    if (response.status !== 200) throw new Error('status ' + response.status);
    setText('live-state', 'live');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data: '))
          .map((l) => l.slice(6)).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  if (stream === controller && key) {
    setText('live-state', 'reconnecting');
    setTimeout(() => { if (stream === controller && key) openStream(); }, 2000);
  }
}

// ---------------------------------------------------------------- topics

async function loadTopics() {
  if (!key) return;
  const { status, json } = await api('GET', '/api/topics?limit=100');
  if (status !== 200 || !json) return;
  const body = $('topics-body');
  const rows = json.topics.map((t) => {
    const row = document.createElement('tr');
    row.dataset.topic = t.topic;
    const name = document.createElement('td');
    name.className = 'topic';
    name.textContent = t.topic;
    const count = document.createElement('td');
    count.className = 'count';
    count.textContent = String(t.subscribers);
    row.append(name, count);
    return row;
  });
  body.replaceChildren(...rows);
  $('topics-note').textContent = json.age_ms < 0 ? 'counting…'
    : json.topics.length + ' shown, ' + json.worker_topics + ' held by the workers';
}

// ---------------------------------------------------------------- forms

async function lookUpPresence(event) {
  event.preventDefault();
  const kind = $('presence-kind').value;
  const id = $('presence-id').value.trim();
  const { status, json } = await api('GET', '/api/presence?' + kind + '=' + encodeURIComponent(id));
  $('presence-result').textContent = status + ' ' + JSON.stringify(json, null, 2);
}

async function publish(event) {
  event.preventDefault();
  const body = { data: $('publish-data').value };
  body[$('publish-kind').value] = $('publish-id').value.trim();
  const { status, json } = await api('POST', '/api/publish', body);
  $('publish-result').textContent = status === 202 ? 'accepted: ' + json.topic
    : 'refused (' + status + '): ' + (json && json.error);
}

function showMessage(text) {
  const list = $('client-messages');
  const item = document.createElement('li');
  item.textContent = text;
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
}

async function connectClient(event) {
  event.preventDefault();
  const user = $('client-user').value.trim();
  const channels = $('client-channels').value.trim();
  let path = '/api/token?user=' + encodeURIComponent(user);
  if (channels) path += '&channels=' + encodeURIComponent(channels);
  const { status, json } = await api('POST', path);
  if (status !== 200) {
    setText('client-status', 'no token (' + status + '): ' + (json && json.error));
    return;
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(scheme + '//' + location.host + '/ws?token=' +
                           encodeURIComponent(json.token));
  ws.binaryType = 'arraybuffer';
  client = ws;
  $('client-connect').disabled = true;
  $('client-disconnect').disabled = false;
  setText('client-status', 'connecting as ' + user);
  ws.onopen = () => setText('client-status', 'connected as ' + user, 'up');
  ws.onmessage = (m) => showMessage(typeof m.data === 'string' ? m.data
    : '[binary, ' + m.data.byteLength + ' bytes]');
  ws.onclose = (e) => {
    if (client === ws) client = null;
    setText('client-status', 'closed (' + e.code + (e.reason ? ' ' + e.reason : '') + ')',
            'down');
    $('client-connect').disabled = false;
    $('client-disconnect').disabled = true;
  };
}

function disconnectClient() {
  if (client) client.close(1000, 'bye');
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const candidate = $('key-input').value.trim();
    if (candidate) tryKey(candidate);
  });
  $('logout').addEventListener('click', () => logout(''));
  $('presence-form').addEventListener('submit', lookUpPresence);
  $('publish-form').addEventListener('submit', publish);
  $('client-form').addEventListener('submit', connectClient);
  $('client-disconnect').addEventListener('click', disconnectClient);
  const stored = sessionStorage.getItem(KEY_STORE);
  if (stored) tryKey(stored); else showLogin('');
});
