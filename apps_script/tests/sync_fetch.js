'use strict';
/**
 * Synchronous HTTP for the Apps Script stand-ins, as UrlFetchApp is synchronous.
 *
 * A worker thread runs Node's fetch; the main thread posts the requests, blocks
 * in Atomics.wait until the worker signals, then takes the answer with
 * receiveMessageOnPort. While the main thread blocks, other worker threads
 * (the tests' small HTTP servers) keep serving.
 */
const { Worker, MessageChannel, receiveMessageOnPort } = require('node:worker_threads');

const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { port, signal } = workerData;

// UrlFetchApp opens its own connections, and so does this: a pooled keep-alive
// connection can be closed by the server (gunicorn after 2 s idle) just as it is
// reused, which fails the request unsent.
async function one(request) {
  try {
    const response = await fetch(request.url, {
      method: request.method,
      headers: { ...request.headers, connection: 'close' },
      body: request.body == null ? undefined : Buffer.from(request.body, 'base64'),
      redirect: request.followRedirects === false ? 'manual' : 'follow',
      signal: AbortSignal.timeout(request.timeoutMs),
    });
    const body = Buffer.from(await response.arrayBuffer());
    const headers = {};
    response.headers.forEach((value, name) => { headers[name] = value; });
    return { ok: true, status: response.status, headers, body: body.toString('base64'), url: response.url };
  } catch (err) {
    const cause = err && err.cause ? (err.cause.code || err.cause.message) : '';
    return { ok: false, error: (err && err.message ? err.message : String(err)) + (cause ? ' (' + cause + ')' : '') };
  }
}

port.on('message', async ({ id, requests }) => {
  const results = await Promise.all(requests.map((request) => one(request)));
  port.postMessage({ id, results });
  Atomics.add(signal, 0, 1);
  Atomics.notify(signal, 0);
});
`;

class SyncFetcher {
  constructor() {
    this.signal = new Int32Array(new SharedArrayBuffer(4));
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { port: port2, signal: this.signal },
      transferList: [port2],
    });
    this.worker.unref();
    this.port.unref();
    this.seq = 0;
  }

  /**
   * requests: [{url, method, headers, body (base64 or null), followRedirects, timeoutMs}]
   * returns, in order: {ok, status, headers, body (Buffer), url} or {ok: false, error}
   */
  fetchAll(requests) {
    const id = ++this.seq;
    const timeoutMs = Math.max(...requests.map((r) => r.timeoutMs || 60000)) + 5000;
    this.port.postMessage({ id, requests: requests.map((r) => ({ timeoutMs: 60000, ...r })) });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // Load the counter before looking for the answer: if the worker answers in
      // between, the counter has moved and Atomics.wait returns at once.
      const counter = Atomics.load(this.signal, 0);
      const message = receiveMessageOnPort(this.port);
      if (message && message.message.id === id) {
        return message.message.results.map((r) =>
          r.ok ? { ...r, body: Buffer.from(r.body, 'base64') } : r,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`synchronous fetch timed out after ${timeoutMs} ms`);
      Atomics.wait(this.signal, 0, counter, Math.min(left, 1000));
    }
  }

  fetch(request) {
    return this.fetchAll([request])[0];
  }

  close() {
    return this.worker.terminate();
  }
}

module.exports = { SyncFetcher };
