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
 *     `failLiveAnswers: n` forwards them but answers 503 instead of the server's
 *     answer (the front end's error when an instance dies after its work);
 *     `faults: [{scene, kind, times?, status?, body?}]` does the same to the live
 *     submissions that carry row `scene` (`kind` 'drop' or 'fail'), `times` times
 *     (default 1), or refuses them without forwarding (`kind` 'refuse': `status`
 *     and `body`, as the API answers a refusal, e.g. a 429 budget_exceeded);
 *     `maxBodyBytes: n` answers 413 payload_too_large, as the API does, to a body
 *     longer than n bytes (a deployment with a small max_body_bytes);
 *   - canned answers (`routes`), e.g. a 429 with the API's JSON error body; a
 *     server without `upstream` answers GET /limits with `limits` (default
 *     DEFAULT_LIMITS, what the API says for its default settings) unless a
 *     route says otherwise, since the script asks for them before it sends rows.
 */
const { Worker } = require('node:worker_threads');

/**
 * GET /limits as a deployment answers it (shared/services/views.py deployment_limits),
 * here one that kept gemini-3.1-flash-image as its model and offers three models: a
 * test that needs another deployment changes what it needs.
 */
const WIDE_RATIOS = ['1:1', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '9:16', '16:9', '21:9'];
const DEFAULT_LIMITS = Object.freeze({
  max_items_per_batch: 500,
  max_variants: 4,
  max_prompt_chars: 4000,
  max_body_bytes: 1048576,
  default_model: 'gemini-3.1-flash-image',
  lanes: ['live', 'economy'],
  models: {
    'gemini-2.5-flash-image': {
      aspect_ratios: WIDE_RATIOS, image_sizes: ['1K'], default_image_size: '1K', max_reference_images: 3,
    },
    'gemini-3-pro-image': {
      aspect_ratios: WIDE_RATIOS, image_sizes: ['1K', '2K', '4K'], default_image_size: '1K', max_reference_images: 14,
    },
    'gemini-3.1-flash-image': {
      aspect_ratios: [...WIDE_RATIOS, '1:4', '4:1', '1:8', '8:1'],
      image_sizes: ['512', '1K', '2K', '4K'],
      default_image_size: '1K',
      max_reference_images: 14,
    },
  },
});

/** DEFAULT_LIMITS with some fields changed; `model` changes the default model's entry. */
function limitsWith(changes = {}, model = {}) {
  const limits = JSON.parse(JSON.stringify(DEFAULT_LIMITS));
  Object.assign(limits, changes);
  const name = limits.default_model;
  limits.models[name] = { ...(limits.models[name] || DEFAULT_LIMITS.models['gemini-3.1-flash-image']), ...model };
  return limits;
}

/**
 * Canned answers to POST /batch/images for these items ({scene_id, variants}):
 * the dry run's plan, and a live answer of batch `batchId` with a job per item.
 */
function batchAnswers(items, batchId = 'bat_canned') {
  const images = items.reduce((n, item) => n + item.variants, 0);
  const plan = {
    runMode: 'dry_run',
    model: DEFAULT_LIMITS.default_model,
    price_per_image_usd: '0.0450',
    job_count: items.length,
    image_count: images,
    estimated_cost_usd: (0.045 * images).toFixed(4),
    lanes: { live: (0.045 * images).toFixed(4), economy: (0.0225 * images).toFixed(4) },
    jobs: items.map((item) => ({
      scene_id: item.scene_id, variants: item.variants, estimated_cost_usd: (0.045 * item.variants).toFixed(4),
    })),
  };
  const live = {
    ...plan,
    runMode: 'live',
    batch_id: batchId,
    unpublished: [],
    jobs: items.map((item, i) => ({ scene_id: item.scene_id, job_id: `${batchId}_job_${i}`, variants: item.variants, state: 'queued' })),
  };
  return [
    { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: plan },
    { method: 'POST', path: '/batch/images', runMode: 'live', status: 202, body: live },
  ];
}

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
    bytes: body.length,
    runMode: json && json.runMode ? json.runMode : null,
    lane: json && json.lane ? json.lane : null,
    scenes: json && Array.isArray(json.items) ? json.items.map((i) => i.scene_id) : null,
    body: json,
    headers: { ...req.headers },
  };
  log.push(entry);
  if (config.maxBodyBytes && body.length > config.maxBodyBytes) {
    entry.status = 413;
    res.writeHead(413, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'payload_too_large',
      message: 'the body must be at most ' + config.maxBodyBytes + ' bytes' }));
    return;
  }
  const fault = entry.runMode === 'live' && entry.scenes
    ? (config.faults || []).find((f) => (f.times === undefined ? 1 : f.times) > 0 && entry.scenes.includes(f.scene))
    : null;
  if (fault) fault.times = (fault.times === undefined ? 1 : fault.times) - 1;
  if (fault && fault.kind === 'refuse') {
    entry.status = fault.status;
    entry.refused = true;
    res.writeHead(fault.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(fault.body));
    return;
  }
  const route = (config.routes || []).find((r) =>
    r.method === req.method && (r.path === path || (r.prefix && path.startsWith(r.prefix))) &&
    (!r.runMode || r.runMode === entry.runMode));
  if (route) {
    if (route.delayMs) await new Promise((resolve) => setTimeout(resolve, route.delayMs));
    entry.status = route.status;
    const text = typeof route.body === 'string' ? route.body : JSON.stringify(route.body);
    res.writeHead(route.status, { 'content-type': route.contentType || 'application/json', ...(route.headers || {}) });
    res.end(text);
    return;
  }
  if (!config.upstream && req.method === 'GET' && path === '/limits' && config.limits) {
    entry.status = 200;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(config.limits));
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
    // A connection per request: gunicorn closes an idle keep-alive connection after
    // 2 s, and a pooled one reused just then fails the request unsent ("fetch failed").
    upstream = await fetch(config.upstream + req.url, {
      method: req.method,
      headers: { ...headers, connection: 'close' },
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
  if (fault && fault.kind === 'drop') {
    entry.dropped = true;
    req.socket.destroy();
    return;
  }
  if (entry.runMode === 'live' && config.dropLiveAnswers > 0) {
    config.dropLiveAnswers -= 1;
    entry.dropped = true;
    req.socket.destroy();
    return;
  }
  if ((fault && fault.kind === 'fail') || (entry.runMode === 'live' && config.failLiveAnswers > 0)) {
    if (!fault) config.failLiveAnswers -= 1;
    entry.failed = true;
    res.writeHead(503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'unavailable', message: 'The service is unavailable; try again.' }));
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

/**
 * Starts a server; `config`: {upstream?, routes?: [{method, path|prefix, runMode?, status,
 * body, headers?, delayMs?}], limits? (GET /limits without upstream), dropLiveAnswers?,
 * failLiveAnswers?, faults?, maxBodyBytes?}.
 */
async function startServer(config) {
  const worker = new Worker(SERVER_SOURCE, {
    eval: true,
    workerData: { routes: [], limits: DEFAULT_LIMITS, ...config },
  });
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
    /** Requests that asked for GET /limits. */
    async limitsRequests() {
      return (await call('log')).filter((e) => e.method === 'GET' && e.path === '/limits');
    },
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

module.exports = { startServer, DEFAULT_LIMITS, limitsWith, batchAnswers };
