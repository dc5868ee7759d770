'use strict';
/**
 * Small HTTP servers for the tests, each in a worker thread so that they keep
 * answering while the main thread is blocked in a synchronous UrlFetchApp call.
 *
 * One server does both jobs the tests need:
 *   - a counting proxy in front of the real API (`upstream`): every request is
 *     logged (method, path, runMode, lane, scene ids, headers) before it is forwarded;
 *     `dropLiveAnswers: n` forwards the next n live submissions but then cuts the
 *     connection, so the client never sees the answer (a lost answer);
 *   - canned answers (`routes`), e.g. a 429 with the API's JSON error body.
 */
const { Worker } = require('node:worker_threads');

const SERVER_SOURCE = `
const http = require('node:http');
const { parentPort, workerData } = require('node:worker_threads');
const config = workerData;
const log = [];
const HOP = new Set(['host', 'connection', 'keep-alive', 'content-length', 'transfer-encoding',
  'content-encoding', 'upgrade', 'proxy-connection']);

function parse(buffer) {
  try { return JSON.parse(buffer.toString('utf8')); } catch (err) { return null; }
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const json = parse(body);
  const path = req.url.split('?')[0];
  const entry = {
    method: req.method,
    path,
    runMode: json && json.runMode ? json.runMode : null,
    lane: json && json.lane ? json.lane : null,
    scenes: json && Array.isArray(json.items) ? json.items.map((i) => i.scene_id) : null,
    headers: { ...req.headers },
  };
  log.push(entry);
  const route = (config.routes || []).find((r) =>
    r.method === req.method && (r.path === path || (r.prefix && path.startsWith(r.prefix))) &&
    (!r.runMode || r.runMode === entry.runMode));
  if (route) {
    entry.status = route.status;
    const text = typeof route.body === 'string' ? route.body : JSON.stringify(route.body);
    res.writeHead(route.status, { 'content-type': route.contentType || 'application/json', ...(route.headers || {}) });
    res.end(text);
    return;
  }
  if (!config.upstream) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'not_found', message: 'no canned answer for ' + req.method + ' ' + path }));
    return;
  }
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) if (!HOP.has(name)) headers[name] = value;
  let upstream;
  try {
    upstream = await fetch(config.upstream + req.url, {
      method: req.method,
      headers,
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : body,
      redirect: 'manual',
    });
  } catch (err) {
    entry.status = 502;
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'bad_gateway', message: String(err) }));
    return;
  }
  const answer = Buffer.from(await upstream.arrayBuffer());
  entry.status = upstream.status;
  entry.response = parse(answer);
  entry.replay = upstream.headers.get('idempotent-replay');
  if (entry.runMode === 'live' && config.dropLiveAnswers > 0) {
    config.dropLiveAnswers -= 1;
    entry.dropped = true;
    req.socket.destroy();
    return;
  }
  const out = {};
  upstream.headers.forEach((value, name) => { if (!HOP.has(name)) out[name] = value; });
  res.writeHead(upstream.status, out);
  res.end(answer);
});

server.keepAliveTimeout = 1000;
server.listen(0, '127.0.0.1', () => {
  parentPort.postMessage({ ready: 'http://127.0.0.1:' + server.address().port });
});

parentPort.on('message', ({ id, op, arg }) => {
  if (op === 'log') parentPort.postMessage({ reply: id, value: log });
  else if (op === 'configure') { Object.assign(config, arg); parentPort.postMessage({ reply: id, value: true }); }
  else if (op === 'close') {
    server.close(() => parentPort.postMessage({ reply: id, value: true }));
    server.closeAllConnections();
  }
});
`;

/** Starts a server; `config`: {upstream?, routes?: [{method, path|prefix, runMode?, status, body, headers?}], dropLiveAnswers?}. */
async function startServer(config) {
  const worker = new Worker(SERVER_SOURCE, { eval: true, workerData: { routes: [], ...config } });
  worker.unref();
  const pending = new Map();
  let seq = 0;
  const url = await new Promise((resolve, reject) => {
    worker.on('message', (message) => {
      if (message.ready) resolve(message.ready);
      else if (pending.has(message.reply)) {
        pending.get(message.reply)(message.value);
        pending.delete(message.reply);
      }
    });
    worker.once('error', reject);
  });
  const call = (op, arg) =>
    new Promise((resolve) => {
      const id = ++seq;
      pending.set(id, resolve);
      worker.postMessage({ id, op, arg });
    });
  return {
    url,
    /** Every request seen so far. */
    log: () => call('log'),
    /** Requests that reached POST /batch/images, optionally of one runMode. */
    async batches(runMode) {
      const all = await call('log');
      return all.filter((e) => e.method === 'POST' && e.path === '/batch/images' &&
        (!runMode || e.runMode === runMode));
    },
    configure: (arg) => call('configure', arg),
    async close() {
      await call('close');
      await worker.terminate();
    },
  };
}

module.exports = { startServer };
