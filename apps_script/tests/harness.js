'use strict';
/**
 * Runs the Apps Script sources (../*.gs) unchanged in a `vm` context whose
 * globals are small stand-ins for the Apps Script services:
 *
 *   SpreadsheetApp  the active spreadsheet and sheet, the selection (a range
 *                   list), getRange/getValues/getFormulas/setValues/...; the
 *                   cells live in the local Sheets stub and are read and written
 *                   through its REST API (Google's Sheets v4 JSON), so the rows the
 *                   script marks and the rows the pipeline fills are the same.
 *                   Writes are buffered until SpreadsheetApp.flush(), a read, or
 *                   the end of the execution, as in Apps Script.
 *   Ui              alert / prompt / createMenu / showModalDialog, recorded; the
 *                   answers to questions are scripted.
 *   UrlFetchApp     fetch / fetchAll making real, synchronous HTTP calls; a test
 *                   can act between a request's answer and the script's next step
 *                   (duringFetch), e.g. as another writer of the sheet (asAnother).
 *   HtmlService     createHtmlOutput, as far as a dialog's content goes.
 *   CacheService    the script cache: strings that expire, with Apps Script's size limits.
 *   ScriptApp       the identity token, and time-driven triggers (created, listed,
 *                   deleted; never fired: a test runs the handler itself).
 *   MailApp         sendEmail recorded in `mails`, with a daily quota and sends
 *                   that fail (`mailFailures`); Session: the user's email.
 *   PropertiesService, LockService (document, script and user locks, each its
 *   own), Utilities, Logger, console.
 *
 * Document properties, the script cache, the locks and the triggers can live in
 * files instead of memory so that two processes (two racing executions) share
 * them; with `sharedUserProperties` the user properties too.
 */
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const crypto = require('node:crypto');
const { SyncFetcher } = require('./sync_fetch');

const SCRIPT_DIR = path.resolve(__dirname, '..');
const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

let sharedFetcher = null;
function fetcher() {
  if (!sharedFetcher) sharedFetcher = new SyncFetcher();
  return sharedFetcher;
}

function sleepSync(ms) {
  Atomics.wait(SLEEPER, 0, 0, Math.max(0, ms));
}

/**
 * What the tests are deployed for: the local stack's plain-http loopback URLs
 * and the made-up https hosts of the Settings tests. It stands in for
 * Deployment.gs (which ships naming no host at all) the way a deploying team
 * edits that file before `clasp push`: in code, never in Script Properties.
 * `deployment: 'shipped'` runs the file as it ships instead.
 */
const TEST_DEPLOYMENT = Object.freeze({
  apiHosts: ['api.example.com', 'old.example.com', 'europe-west1-p.cloudfunctions.net'],
  loopbackHttp: true,
});

function scriptFiles(order = 'sorted') {
  const names = fs.readdirSync(SCRIPT_DIR).filter((n) => n.endsWith('.gs')).sort();
  if (order === 'reversed') names.reverse();
  return names.map((n) => path.join(SCRIPT_DIR, n));
}

// ------------------------------------------------------------------ A1 helpers

function columnLetters(index) {
  let letters = '';
  let n = index;
  while (n > 0) {
    const rem = (n - 1) % 26;
    letters = String.fromCharCode(65 + rem) + letters;
    n = Math.floor((n - 1) / 26);
  }
  return letters;
}

function columnIndex(letters) {
  let n = 0;
  for (const ch of letters.toUpperCase()) n = n * 26 + ch.charCodeAt(0) - 64;
  return n;
}

function quoteTitle(title) {
  return `'${title.replace(/'/g, "''")}'`;
}

/** "B2", "A5:I7", "5:7" (whole rows), "A:C" (whole columns) -> 1-based corners or nulls. */
function parseA1(text) {
  const m = /^([A-Z]*)(\d*)(?::([A-Z]*)(\d*))?$/i.exec(text.trim());
  if (!m || (!m[1] && !m[2])) throw new Error(`Range not found: ${text}`);
  const c1 = m[1] ? columnIndex(m[1]) : null;
  const r1 = m[2] ? Number(m[2]) : null;
  const hasEnd = m[3] !== undefined;
  const c2 = hasEnd ? (m[3] ? columnIndex(m[3]) : null) : c1;
  const r2 = hasEnd ? (m[4] ? Number(m[4]) : null) : r1;
  return { r1, c1, r2, c2 };
}

// ------------------------------------------------------------------ Sheets stub REST

class StubSheets {
  constructor(env, onWrite) {
    this.base = env.SHEETS_API_URL.replace(/\/+$/, '');
    this.id = env.SPREADSHEET_ID;
    this.onWrite = onWrite;
  }

  request(method, suffix, body) {
    const result = fetcher().fetch({
      url: `${this.base}/v4/spreadsheets/${encodeURIComponent(this.id)}${suffix}`,
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? null : Buffer.from(JSON.stringify(body)).toString('base64'),
    });
    if (!result.ok) throw new Error(`Service Spreadsheets failed: ${result.error}`);
    const json = JSON.parse(result.body.toString('utf8') || '{}');
    if (result.status !== 200) {
      const message = json.error && json.error.message ? json.error.message : result.status;
      throw new Error(`Service Spreadsheets failed: ${message}`);
    }
    return json;
  }

  values(title, a1, render) {
    const range = encodeURIComponent(quoteTitle(title) + (a1 ? `!${a1}` : ''));
    const answer = this.request('GET', `/values/${range}?valueRenderOption=${render}`);
    return answer.values || [];
  }

  write(data) {
    this.request('POST', '/values:batchUpdate', {
      valueInputOption: 'USER_ENTERED',
      data: data.map((d) => ({ range: `${quoteTitle(d.title)}!${d.a1}`, values: d.values })),
    });
    this.onWrite(data);
  }

  /** Writes as someone else would (not the script: not recorded as its write). */
  writeAsAnother(title, a1, values) {
    this.request('POST', '/values:batchUpdate', {
      valueInputOption: 'USER_ENTERED',
      data: [{ range: `${quoteTitle(title)}!${a1}`, values }],
    });
  }

  sheetId(title) {
    const sheet = (this.request('GET', '').sheets || []).find(
      (s) => s.properties.title.toLowerCase() === title.toLowerCase(),
    );
    if (!sheet) throw new Error(`no sheet ${title}`);
    return sheet.properties.sheetId;
  }

  grid(title) {
    const sheet = (this.request('GET', '').sheets || []).find(
      (s) => s.properties.title.toLowerCase() === title.toLowerCase(),
    );
    if (!sheet) throw new Error(`no sheet ${title}`);
    return sheet.properties.gridProperties;
  }
}

// ------------------------------------------------------------------ SpreadsheetApp

function cellForWrite(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'string') return value;
  throw new Error(`Unsupported cell value in the stand-in: ${Object.prototype.toString.call(value)}`);
}

class FakeRange {
  constructor(sheet, row, column, numRows, numColumns) {
    if (!(row >= 1 && column >= 1 && numRows >= 1 && numColumns >= 1)) {
      throw new Error(
        `The coordinates of the range are outside the dimensions of the sheet (${row}, ${column}, ${numRows}, ${numColumns}).`,
      );
    }
    Object.assign(this, { sheet, row, column, numRows, numColumns });
  }

  getSheet() { return this.sheet; }
  getRow() { return this.row; }
  getColumn() { return this.column; }
  getNumRows() { return this.numRows; }
  getNumColumns() { return this.numColumns; }
  getLastRow() { return this.row + this.numRows - 1; }
  getLastColumn() { return this.column + this.numColumns - 1; }

  getA1Notation() {
    const start = `${columnLetters(this.column)}${this.row}`;
    if (this.numRows === 1 && this.numColumns === 1) return start;
    return `${start}:${columnLetters(this.getLastColumn())}${this.getLastRow()}`;
  }

  read(render) {
    const raw = this.sheet.read(this.getA1Notation(), render);
    const out = [];
    for (let r = 0; r < this.numRows; r++) {
      const line = [];
      for (let c = 0; c < this.numColumns; c++) {
        const v = raw[r] && raw[r][c] !== undefined ? raw[r][c] : '';
        line.push(v);
      }
      out.push(line);
    }
    return out;
  }

  getValues() { return this.read('UNFORMATTED_VALUE'); }
  getValue() { return this.getValues()[0][0]; }
  getDisplayValues() { return this.read('FORMATTED_VALUE').map((r) => r.map(String)); }
  getFormulas() {
    return this.read('FORMULA').map((r) => r.map((v) => (typeof v === 'string' && v.startsWith('=') ? v : '')));
  }
  getFormula() { return this.getFormulas()[0][0]; }

  setValues(values) {
    if (!Array.isArray(values) || values.length !== this.numRows) {
      throw new Error(
        `The number of rows in the data does not match the number of rows in the range. The data has ${values && values.length} but the range has ${this.numRows}.`,
      );
    }
    values.forEach((line) => {
      if (!Array.isArray(line) || line.length !== this.numColumns) {
        throw new Error(
          `The number of columns in the data does not match the number of columns in the range. The data has ${line && line.length} but the range has ${this.numColumns}.`,
        );
      }
    });
    this.sheet.queueWrite(this.getA1Notation(), values.map((line) => line.map(cellForWrite)));
    return this;
  }

  setValue(value) {
    const line = new Array(this.numColumns).fill(cellForWrite(value));
    return this.setValues(Array.from({ length: this.numRows }, () => line.slice()));
  }

  setFormula(formula) { return this.setValue(formula); }
  setFormulas(formulas) { return this.setValues(formulas); }
  clearContent() { return this.setValue(''); }
}

class FakeSheet {
  constructor(harness, title) {
    this.h = harness;
    this.title = title;
  }

  getName() { return this.title; }
  getSheetName() { return this.title; }
  getSheetId() { return this.h.sheets.sheetId(this.title); }
  getParent() { return this.h.spreadsheet; }

  read(a1, render) {
    this.h.flushWrites();  // a read makes Apps Script apply pending writes first
    return this.h.sheets.values(this.title, a1, render);
  }

  queueWrite(a1, values) {
    this.h.pendingWrites.push({ title: this.title, a1, values });
  }

  all() {
    return this.read(null, 'FORMULA');
  }

  getLastRow() {
    const rows = this.all();
    for (let r = rows.length; r > 0; r--) if (rows[r - 1].some((v) => v !== '')) return r;
    return 0;
  }

  getLastColumn() {
    let last = 0;
    for (const row of this.all()) {
      for (let c = row.length; c > last; c--) if (row[c - 1] !== '') { last = c; break; }
    }
    return last;
  }

  getMaxRows() { return this.h.sheets.grid(this.title).rowCount; }
  getMaxColumns() { return this.h.sheets.grid(this.title).columnCount; }

  getRange(a, b, c, d) {
    if (typeof a === 'string') {
      const p = parseA1(a);
      const r1 = p.r1 === null ? 1 : p.r1;
      const c1 = p.c1 === null ? 1 : p.c1;
      const r2 = p.r2 === null ? this.getMaxRows() : p.r2;
      const c2 = p.c2 === null ? this.getMaxColumns() : p.c2;
      return new FakeRange(this, Math.min(r1, r2), Math.min(c1, c2), Math.abs(r2 - r1) + 1, Math.abs(c2 - c1) + 1);
    }
    return new FakeRange(this, a, b, c === undefined ? 1 : c, d === undefined ? 1 : d);
  }

  getDataRange() {
    return new FakeRange(this, 1, 1, Math.max(this.getLastRow(), 1), Math.max(this.getLastColumn(), 1));
  }

  getRangeList(a1s) {
    const ranges = a1s.map((a1) => this.getRange(a1));
    return {
      getRanges: () => ranges.slice(),
      setValue: (v) => { ranges.forEach((r) => r.setValue(v)); },
    };
  }

  getActiveRangeList() {
    if (this.h.activeTitle !== this.title || !this.h.selection.length) return null;
    return this.getRangeList(this.h.selection);
  }

  getActiveRange() {
    const list = this.getActiveRangeList();
    return list ? list.getRanges()[0] : null;
  }
}

// ------------------------------------------------------------------ Ui

const BUTTON = { OK: 'OK', CANCEL: 'CANCEL', YES: 'YES', NO: 'NO', CLOSE: 'CLOSE' };
const BUTTON_SET = { OK: 'OK', OK_CANCEL: 'OK_CANCEL', YES_NO: 'YES_NO', YES_NO_CANCEL: 'YES_NO_CANCEL' };
const ALLOWED = {
  OK: ['OK', 'CLOSE'],
  OK_CANCEL: ['OK', 'CANCEL', 'CLOSE'],
  YES_NO: ['YES', 'NO', 'CLOSE'],
  YES_NO_CANCEL: ['YES', 'NO', 'CANCEL', 'CLOSE'],
};

function dialogArgs(args) {
  // (prompt) | (prompt, buttons) | (title, prompt, buttons)
  if (args.length >= 3) return { title: String(args[0]), text: String(args[1]), buttons: args[2] };
  if (args.length === 2 && args[1] in BUTTON_SET) return { title: '', text: String(args[0]), buttons: args[1] };
  if (args.length === 2) return { title: String(args[0]), text: String(args[1]), buttons: 'OK' };
  return { title: '', text: String(args[0]), buttons: 'OK' };
}

function waitAtBarrier(barrier) {
  fs.mkdirSync(barrier.dir, { recursive: true });
  fs.writeFileSync(path.join(barrier.dir, `arrived-${process.pid}-${crypto.randomUUID()}`), '');
  const deadline = Date.now() + (barrier.timeoutMs || 30000);
  while (fs.readdirSync(barrier.dir).filter((n) => n.startsWith('arrived-')).length < barrier.parties) {
    if (Date.now() > deadline) throw new Error('barrier timed out');
    sleepSync(10);
  }
}

class FakeUi {
  constructor(harness) {
    this.h = harness;
    this.Button = BUTTON;
    this.ButtonSet = BUTTON_SET;
  }

  answerFor(kind, dialog) {
    const buttons = dialog.buttons || 'OK';
    if (kind === 'alert' && buttons === 'OK') return { button: 'OK' };
    const scripted = this.h.answers.shift();
    if (scripted === undefined) {
      const error = new Error(`unexpected ${kind} (no scripted answer): ${dialog.title} / ${dialog.text}`);
      this.h.unexpected.push(error.message);
      throw error;
    }
    const answer = typeof scripted === 'string' ? { button: scripted } : scripted;
    if (answer.expect && !answer.expect.test(dialog.text)) {
      const error = new Error(`scripted answer expected a dialog matching ${answer.expect}, got: ${dialog.text}`);
      this.h.unexpected.push(error.message);
      throw error;
    }
    if (!ALLOWED[buttons].includes(answer.button)) {
      throw new Error(`button ${answer.button} is not in ${buttons}`);
    }
    if (answer.barrier) waitAtBarrier(answer.barrier);
    return answer;
  }

  alert(...args) {
    const dialog = { kind: 'alert', ...dialogArgs(args) };
    this.h.dialogs.push(dialog);
    const answer = this.answerFor('alert', dialog);
    dialog.answer = answer.button;
    return answer.button;
  }

  prompt(...args) {
    const dialog = { kind: 'prompt', ...dialogArgs(args) };
    if (args.length === 1) dialog.buttons = 'OK';
    this.h.dialogs.push(dialog);
    const answer = this.answerFor('prompt', dialog);
    dialog.answer = answer.button;
    dialog.response = answer.text || '';
    return {
      getSelectedButton: () => answer.button,
      getResponseText: () => answer.text || '',
    };
  }

  showModalDialog(output, title) {
    this.h.dialogs.push({ kind: 'modal', title, text: output && output.getContent ? output.getContent() : String(output) });
  }

  createMenu(name) {
    const menu = { name, items: [] };
    const builder = {
      addItem: (caption, functionName) => { menu.items.push({ caption, functionName }); return builder; },
      addSeparator: () => { menu.items.push({ separator: true }); return builder; },
      addSubMenu: () => builder,
      addToUi: () => { this.h.menus.push(menu); },
    };
    return builder;
  }
}

// ------------------------------------------------------------------ Properties and locks

function checkValue(key, value) {
  const text = String(value);
  if (Buffer.byteLength(String(key)) + Buffer.byteLength(text) > 9 * 1024) {
    throw new Error(`Argument too large: value (property ${key})`);
  }
  return text;
}

class FakeProperties {
  /** store: {load(): object, save(object)} */
  constructor(store) { this.store = store; }
  getProperty(key) {
    const all = this.store.load();
    return Object.prototype.hasOwnProperty.call(all, key) ? all[key] : null;
  }
  getProperties() { return { ...this.store.load() }; }
  getKeys() { return Object.keys(this.store.load()); }
  setProperty(key, value) { this.store.update((all) => { all[key] = checkValue(key, value); }); return this; }
  setProperties(values, deleteAllOthers) {
    this.store.update((all) => {
      if (deleteAllOthers) for (const k of Object.keys(all)) delete all[k];
      for (const [k, v] of Object.entries(values)) all[k] = checkValue(k, v);
    });
    return this;
  }
  deleteProperty(key) { this.store.update((all) => { delete all[key]; }); return this; }
  deleteAllProperties() { this.store.update((all) => { for (const k of Object.keys(all)) delete all[k]; }); return this; }
}

/** A fileStore whose keys in `initial` are set when it is opened. */
function seededFileStore(file, initial = {}) {
  const store = fileStore(file);
  if (initial && Object.keys(initial).length) store.update((all) => { Object.assign(all, initial); });
  return store;
}

function memoryStore(initial = {}) {
  const data = { ...initial };
  return { load: () => data, update: (fn) => fn(data) };
}

/** A JSON file shared by processes; each update holds a tiny mkdir mutex. */
function fileStore(file) {
  const mutex = `${file}.mutex`;
  const load = () => {
    try { return JSON.parse(fs.readFileSync(file, 'utf8')); } catch (err) { return {}; }
  };
  return {
    load,
    update(fn) {
      const deadline = Date.now() + 10000;
      for (;;) {
        try { fs.mkdirSync(mutex); break; } catch (err) {
          if (err.code !== 'EEXIST' || Date.now() > deadline) throw err;
          sleepSync(2);
        }
      }
      try {
        const data = load();
        fn(data);
        const tmp = `${file}.${process.pid}.tmp`;
        fs.writeFileSync(tmp, JSON.stringify(data));
        fs.renameSync(tmp, file);
      } finally {
        fs.rmdirSync(mutex);
      }
    },
  };
}

// ------------------------------------------------------------------ CacheService

const CACHE_MAX_KEY = 250;
const CACHE_MAX_VALUE = 100 * 1024;
const CACHE_MAX_SECONDS = 21600;

/** A Cache of CacheService: string values that expire (default 10 minutes, at most 6 hours). */
class FakeCache {
  /** store: as for FakeProperties; each entry is {value, expires (ms since the epoch)} */
  constructor(store) { this.store = store; }

  static check(key, value) {
    if (typeof key !== 'string' || !key || key.length > CACHE_MAX_KEY) {
      throw new Error(`Argument too large: key (${String(key).length} characters)`);
    }
    if (value !== undefined && Buffer.byteLength(String(value)) > CACHE_MAX_VALUE) {
      throw new Error('Argument too large: value');
    }
  }

  get(key) {
    FakeCache.check(key);
    const entry = this.store.load()[key];
    return entry && entry.expires > Date.now() ? entry.value : null;
  }

  getAll(keys) {
    const out = {};
    for (const key of keys) {
      const value = this.get(key);
      if (value !== null) out[key] = value;
    }
    return out;
  }

  put(key, value, seconds = 600) {
    FakeCache.check(key, value);
    const ttl = Math.min(Math.max(Number(seconds) || 0, 1), CACHE_MAX_SECONDS);
    this.store.update((all) => { all[key] = { value: String(value), expires: Date.now() + ttl * 1000 }; });
  }

  putAll(values, seconds) {
    for (const [key, value] of Object.entries(values)) this.put(key, value, seconds);
  }

  remove(key) { this.store.update((all) => { delete all[key]; }); }
  removeAll(keys) { for (const key of keys) this.remove(key); }

  /** For tests: the keys that have not expired. */
  keys() {
    return Object.entries(this.store.load()).filter(([, e]) => e.expires > Date.now()).map(([k]) => k);
  }
}

/**
 * A lock of LockService (kind: document, script or user, each its own lock): in
 * memory (one process) or a directory (shared by processes).
 */
class FakeLock {
  constructor(harness, kind = 'document') {
    this.h = harness;
    this.kind = kind;
    this.state = harness.lockStates[kind];
    this.held = false;
  }

  tryAcquire() {
    if (this.h.lockDir) {
      try {
        fs.mkdirSync(path.join(this.h.lockDir, `${this.kind}.lock`));
        return true;
      } catch (err) {
        if (err.code === 'EEXIST') return false;
        throw err;
      }
    }
    if (this.state.holder === null) {
      this.state.holder = this;
      return true;
    }
    return this.state.holder === this;
  }

  tryLock(timeoutMs) {
    if (this.held) return true;
    const deadline = Date.now() + (this.h.lockDir ? timeoutMs : 0);  // in one process nobody can let go
    for (;;) {
      if (this.tryAcquire()) {
        this.held = true;
        this.h.lockEvents.push(this.kind === 'document' ? 'acquired' : `${this.kind} acquired`);
        if (this.h.execution) this.h.execution.locks.push(this);
        return true;
      }
      if (Date.now() >= deadline) {
        this.h.lockEvents.push(this.kind === 'document' ? 'timed-out' : `${this.kind} timed-out`);
        return false;
      }
      sleepSync(20);
    }
  }

  waitLock(timeoutMs) {
    if (!this.tryLock(timeoutMs)) throw new Error('Lock timeout: another process was holding the lock for too long.');
  }

  hasLock() { return this.held; }

  releaseLock() {
    if (!this.held) return;
    this.held = false;
    this.h.lockEvents.push(this.kind === 'document' ? 'released' : `${this.kind} released`);
    if (this.h.lockDir) fs.rmdirSync(path.join(this.h.lockDir, `${this.kind}.lock`));
    else if (this.state.holder === this) this.state.holder = null;
  }
}

// ------------------------------------------------------------------ Utilities

function toBuffer(data, charset) {
  if (typeof data === 'string') return Buffer.from(data, charset === 'US_ASCII' ? 'ascii' : 'utf8');
  if (Array.isArray(data)) return Buffer.from(data.map((b) => b & 0xff));
  if (data && typeof data.getBytes === 'function') return toBuffer(data.getBytes());
  throw new Error('Utilities: unsupported data');
}

function signedBytes(buffer) {
  return Array.from(buffer, (b) => (b > 127 ? b - 256 : b));
}

function makeUtilities() {
  const newBlob = (data) => {
    const bytes = toBuffer(data);
    return {
      getBytes: () => signedBytes(bytes),
      getDataAsString: () => bytes.toString('utf8'),
      getContentType: () => null,
    };
  };
  return {
    DigestAlgorithm: { MD5: 'md5', SHA_1: 'sha1', SHA_256: 'sha256', SHA_384: 'sha384', SHA_512: 'sha512' },
    Charset: { UTF_8: 'UTF_8', US_ASCII: 'US_ASCII' },
    computeDigest(algorithm, value, charset) {
      return signedBytes(crypto.createHash(algorithm).update(toBuffer(value, charset)).digest());
    },
    base64Encode: (data, charset) => toBuffer(data, charset).toString('base64'),
    base64EncodeWebSafe: (data, charset) =>
      toBuffer(data, charset).toString('base64').replace(/\+/g, '-').replace(/\//g, '_'),
    base64Decode: (text) => signedBytes(Buffer.from(text, 'base64')),
    base64DecodeWebSafe: (text) => signedBytes(Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64')),
    newBlob,
    getUuid: () => crypto.randomUUID(),
    sleep: (ms) => sleepSync(ms),
  };
}

// ------------------------------------------------------------------ UrlFetchApp

function makeUrlFetchApp(h) {
  const toRequest = (url, params = {}) => {
    const method = String(params.method || 'get').toUpperCase();
    const headers = { ...(params.headers || {}) };
    let body = null;
    if (params.payload !== undefined && params.payload !== null) {
      const payload = params.payload;
      const buffer = typeof payload === 'string' || Array.isArray(payload)
        ? toBuffer(payload)
        : Buffer.from(new URLSearchParams(payload).toString());
      body = buffer.toString('base64');
      headers['Content-Type'] = params.contentType || 'application/x-www-form-urlencoded';
    }
    return { url, method, headers, body, followRedirects: params.followRedirects !== false, timeoutMs: 60000 };
  };

  const toResponse = (request, params, result, record) => {
    if (!result.ok) {
      record.error = result.error;
      throw new Error(`Address unavailable: ${request.url} (${result.error})`);
    }
    const text = result.body.toString('utf8');
    record.status = result.status;
    record.responseHeaders = result.headers;
    record.response = text;
    if (!params.muteHttpExceptions && result.status >= 400) {
      throw new Error(
        `Request failed for ${request.url} returned code ${result.status}. Truncated server response: ${text.slice(0, 200)} (use muteHttpExceptions option to examine full response)`,
      );
    }
    return {
      getResponseCode: () => result.status,
      getContentText: () => text,
      getContent: () => signedBytes(result.body),
      getHeaders: () => ({ ...result.headers }),
      getAllHeaders: () => ({ ...result.headers }),
      getBlob: () => makeUtilities().newBlob(signedBytes(result.body)),
    };
  };

  const record = (request) => {
    let json = null;
    const payload = request.body ? Buffer.from(request.body, 'base64').toString('utf8') : null;
    try { json = payload ? JSON.parse(payload) : null; } catch (err) { json = null; }
    const entry = { type: 'fetch', method: request.method, url: request.url, headers: request.headers, payload, json };
    h.fetches.push(entry);
    h.events.push(entry);
    return entry;
  };

  return {
    fetch(url, params = {}) {
      const request = toRequest(url, params);
      const entry = record(request);
      const result = fetcher().fetch(request);
      h.afterFetch([entry]);
      return toResponse(request, params, result, entry);
    },
    fetchAll(list) {
      const requests = list.map((item) => (typeof item === 'string' ? toRequest(item, {}) : toRequest(item.url, item)));
      const entries = requests.map(record);
      const results = fetcher().fetchAll(requests);
      h.afterFetch(entries);
      return results.map((result, i) =>
        toResponse(requests[i], typeof list[i] === 'string' ? {} : list[i], result, entries[i]),
      );
    },
  };
}

// ------------------------------------------------------------------ ScriptApp

/**
 * ScriptApp: the identity token, and this user's triggers of the project
 * (newTrigger(fn).timeBased().everyMinutes(n).create(), getProjectTriggers,
 * deleteTrigger), kept in `h.triggerStore`. The harness never fires a trigger:
 * a test runs its function (h.run(fn)) as the trigger would.
 */
function makeScriptApp(h) {
  const list = () => h.triggerStore.load().triggers || [];
  const handle = (t) => ({
    getUniqueId: () => t.id,
    getHandlerFunction: () => t.handler,
    getEventType: () => t.eventType,
    getTriggerSource: () => 'CLOCK',
  });
  return {
    getIdentityToken: () => h.identityToken,
    getOAuthToken: () => 'stand-in-oauth-token',
    EventType: { CLOCK: 'CLOCK' },
    getProjectTriggers: () => list().map(handle),
    deleteTrigger(trigger) {
      const id = trigger.getUniqueId();
      h.triggerStore.update((all) => { all.triggers = (all.triggers || []).filter((t) => t.id !== id); });
      h.events.push({ type: 'trigger-deleted', id });
    },
    newTrigger(handler) {
      if (typeof handler !== 'string' || !handler) throw new Error('Invalid argument: functionName');
      const spec = { handler, eventType: 'CLOCK' };
      const clock = {
        everyMinutes(n) {
          if (![1, 5, 10, 15, 30].includes(n)) throw new Error('Invalid argument: minutes (1, 5, 10, 15 or 30)');
          spec.everyMinutes = n;
          return clock;
        },
        everyHours(n) { spec.everyHours = n; return clock; },
        create() {
          if (!spec.everyMinutes && !spec.everyHours) throw new Error('The trigger has no schedule');
          const trigger = { ...spec, id: crypto.randomUUID() };
          h.triggerStore.update((all) => { all.triggers = [...(all.triggers || []), trigger]; });
          h.events.push({ type: 'trigger-created', ...trigger });
          return handle(trigger);
        },
      };
      return { timeBased: () => clock };
    },
  };
}

/** The triggers of the project, as plain objects ({id, handler, everyMinutes}). */
function triggersOf(h) {
  return (h.triggerStore.load().triggers || []).map((t) => ({ ...t }));
}

// ------------------------------------------------------------------ the harness

class Harness {
  /**
   * options:
   *   env            {SPREADSHEET_ID, WORKSHEET, SHEETS_API_URL}
   *   sheetTitle     the active sheet (default env.WORKSHEET)
   *   selection      A1 ranges selected on the active sheet
   *   scriptProperties, userProperties, documentProperties   initial values
   *   sharedDir      keep document properties, the script cache and the document lock in
   *                  this directory
   *   identityToken  what ScriptApp.getIdentityToken() returns (default null)
   *   namedRanges    {name: "A1" (active sheet) or "Title!A1"} for getRangeByName
   *   loadOrder      'sorted' | 'reversed' order of the .gs files
   *   deployment     DEPLOYMENT in place of Deployment.gs (default TEST_DEPLOYMENT),
   *                  or 'shipped' to run Deployment.gs as it is
   *   sharedUserProperties  with sharedDir: the user properties in a file there too
   *   userEmail      what Session.getActiveUser().getEmail() returns (default tester@example.com)
   *   mailQuota      MailApp's emails left today (default 100)
   */
  constructor(options) {
    const env = options.env;
    for (const name of ['SPREADSHEET_ID', 'WORKSHEET', 'SHEETS_API_URL']) {
      if (!env[name]) throw new Error(`harness: env ${name} is missing`);
    }
    this.env = env;
    this.activeTitle = options.sheetTitle || env.WORKSHEET;
    this.selection = options.selection || [];
    this.namedRanges = options.namedRanges || {};
    this.identityToken = options.identityToken === undefined ? null : options.identityToken;
    this.dialogs = [];
    this.toasts = [];
    this.fetches = [];
    this.events = [];
    this.logs = [];
    this.menus = [];
    this.answers = [];
    this.unexpected = [];
    this.lockEvents = [];
    this.pendingWrites = [];
    this.fetchHooks = [];
    this.execution = null;
    this.lockStates = { document: { holder: null }, script: { holder: null }, user: { holder: null } };
    this.lockState = this.lockStates.document;
    this.lockDir = options.sharedDir || null;
    if (this.lockDir) fs.mkdirSync(this.lockDir, { recursive: true });
    this.sheets = new StubSheets(env, (data) => {
      this.events.push({ type: 'sheet-write', data });
    });

    this.scriptProps = new FakeProperties(memoryStore(options.scriptProperties));
    // With sharedUserProperties (and sharedDir) one user's properties are shared by
    // processes: two executions of the same person, e.g. two runs of a trigger.
    this.userProps = new FakeProperties(
      this.lockDir && options.sharedUserProperties
        ? seededFileStore(path.join(this.lockDir, 'user-properties.json'), options.userProperties)
        : memoryStore(options.userProperties),
    );
    this.userEmail = options.userEmail === undefined ? 'tester@example.com' : options.userEmail;
    this.mails = [];
    this.mailQuota = options.mailQuota === undefined ? 100 : options.mailQuota;
    this.mailFailures = 0;  // the next n sends fail
    // The project's triggers of this user (ScriptApp), shared by processes like the properties.
    this.triggerStore = this.lockDir
      ? fileStore(path.join(this.lockDir, 'triggers.json'))
      : memoryStore();
    this.documentProps = new FakeProperties(
      this.lockDir
        ? fileStore(path.join(this.lockDir, 'document-properties.json'))
        : memoryStore(options.documentProperties),
    );
    // Shared by every execution and user of the script, like Apps Script's script cache.
    this.scriptCache = new FakeCache(
      this.lockDir ? fileStore(path.join(this.lockDir, 'script-cache.json')) : memoryStore(),
    );
    this.userCache = new FakeCache(memoryStore());
    this.documentCache = new FakeCache(memoryStore());

    const h = this;
    const ui = new FakeUi(this);
    this.ui = ui;
    const sheetsByTitle = {};
    const sheetNamed = (title) => (sheetsByTitle[title] = sheetsByTitle[title] || new FakeSheet(h, title));
    this.spreadsheet = {
      getId: () => env.SPREADSHEET_ID,
      getUrl: () => `https://docs.google.com/spreadsheets/d/${env.SPREADSHEET_ID}/edit`,
      getName: () => 'AI image scenes (local)',
      getActiveSheet: () => sheetNamed(h.activeTitle),
      getSheetByName: (title) => sheetNamed(title),
      getActiveRangeList: () => sheetNamed(h.activeTitle).getActiveRangeList(),
      getActiveRange: () => sheetNamed(h.activeTitle).getActiveRange(),
      getRangeByName: (name) => {
        const where = h.namedRanges[name];
        if (!where) return null;
        const bang = where.lastIndexOf('!');
        const title = bang < 0 ? h.activeTitle : where.slice(0, bang).replace(/^'(.*)'$/, '$1');
        return sheetNamed(title).getRange(bang < 0 ? where : where.slice(bang + 1));
      },
      toast: (message, title, seconds) => { h.toasts.push({ message: String(message), title, seconds }); },
    };
    const SpreadsheetApp = {
      getActiveSpreadsheet: () => h.spreadsheet,
      getActive: () => h.spreadsheet,
      getActiveSheet: () => h.spreadsheet.getActiveSheet(),
      getActiveRange: () => h.spreadsheet.getActiveRange(),
      getActiveRangeList: () => h.spreadsheet.getActiveRangeList(),
      getUi: () => ui,
      flush: () => h.flushWrites(),
    };
    const consoleFor = (level) => (...args) => {
      const line = args.map((a) => (typeof a === 'string' ? a : String(a && a.stack ? a.stack : a))).join(' ');
      h.logs.push({ level, line });
      if (process.env.APPS_SCRIPT_DEBUG) process.stderr.write(`[script ${level}] ${line}\n`);
    };
    this.globals = {
      SpreadsheetApp,
      UrlFetchApp: makeUrlFetchApp(this),
      PropertiesService: {
        getScriptProperties: () => h.scriptProps,
        getUserProperties: () => h.userProps,
        getDocumentProperties: () => h.documentProps,
      },
      CacheService: {
        getScriptCache: () => h.scriptCache,
        getUserCache: () => h.userCache,
        getDocumentCache: () => h.documentCache,
      },
      LockService: {
        getDocumentLock: () => new FakeLock(h, 'document'),
        getScriptLock: () => new FakeLock(h, 'script'),
        getUserLock: () => new FakeLock(h, 'user'),
      },
      ScriptApp: makeScriptApp(h),
      Session: {
        getActiveUser: () => ({ getEmail: () => h.userEmail }),
        getEffectiveUser: () => ({ getEmail: () => h.userEmail }),
      },
      MailApp: {
        sendEmail(...args) {
          // (recipient, subject, body[, options]) or ({to, subject, body, ...})
          const mail = typeof args[0] === 'object'
            ? { to: args[0].to, subject: args[0].subject, body: args[0].body }
            : { to: args[0], subject: args[1], body: args[2] };
          for (const name of ['to', 'subject', 'body']) {
            if (typeof mail[name] !== 'string' || !mail[name]) throw new Error(`Invalid argument: ${name}`);
          }
          if (h.mailQuota < 1) throw new Error('Service invoked too many times for one day: email.');
          if (h.mailFailures > 0) {
            // The send fails, or the execution dies in it: the mail does not leave.
            h.mailFailures -= 1;
            throw new Error('Service error: Gmail');
          }
          h.mailQuota -= 1;
          h.mails.push(mail);
          h.events.push({ type: 'mail', ...mail });
        },
        getRemainingDailyQuota: () => h.mailQuota,
      },
      Utilities: makeUtilities(),
      HtmlService: {
        createHtmlOutput: (html) => {
          const output = {
            getContent: () => String(html),
            setWidth: () => output,
            setHeight: () => output,
            setTitle: () => output,
          };
          return output;
        },
      },
      Logger: { log: consoleFor('log') },
      console: { log: consoleFor('log'), info: consoleFor('info'), warn: consoleFor('warn'), error: consoleFor('error') },
    };
    this.context = vm.createContext({ ...this.globals });
    const deployment = options.deployment === undefined ? TEST_DEPLOYMENT : options.deployment;
    for (const file of scriptFiles(options.loadOrder)) {
      const source = deployment !== 'shipped' && path.basename(file) === 'Deployment.gs'
        ? `const DEPLOYMENT = Object.freeze(${JSON.stringify(deployment)});`
        : fs.readFileSync(file, 'utf8');
      vm.runInContext(source, this.context, { filename: file });
    }
  }

  flushWrites() {
    if (!this.pendingWrites.length) return;
    const data = this.pendingWrites;
    this.pendingWrites = [];
    this.sheets.write(data);
  }

  /**
   * Runs `fn(entry)` once, after the first request for which `match(entry)` holds
   * has been answered and before the script sees the answer: what happens in the
   * sheet while the script waits for a slow request. `entry` is the recorded fetch
   * ({method, url, headers, payload, json}).
   */
  duringFetch(match, fn) { this.fetchHooks.push({ match, fn }); }

  afterFetch(entries) {
    const hooks = this.fetchHooks;
    this.fetchHooks = [];
    for (const hook of hooks) {
      const entry = entries.find((e) => hook.match(e));
      if (entry) hook.fn(entry);
      else this.fetchHooks.push(hook);
    }
  }

  /**
   * Someone else at the sheet (a person, or the pipeline writing a row), acting on
   * the cells directly: none of it is the script's write or waits for its flush.
   * `title` defaults to the active sheet.
   */
  get asAnother() {
    const h = this;
    const titleOf = (title) => title || h.activeTitle;
    return {
      /** values typed in (USER_ENTERED): '=…' a formula, "'…" text, digits a number. */
      write(a1, values, title) { h.sheets.writeAsAnother(titleOf(title), a1, values); },
      /** `count` empty rows inserted before row `before`; the rows below move down. */
      insertRows(before, count, title) {
        const sheetId = h.sheets.sheetId(titleOf(title));
        h.sheets.request('POST', ':batchUpdate', {
          requests: [{
            insertDimension: {
              range: { sheetId, dimension: 'ROWS', startIndex: before - 1, endIndex: before - 1 + count },
              inheritFromBefore: false,
            },
          }],
        });
      },
      /** `count` rows from row `first` deleted; the rows below move up. */
      deleteRows(first, count, title) {
        const sheetId = h.sheets.sheetId(titleOf(title));
        h.sheets.request('POST', ':batchUpdate', {
          requests: [{
            deleteDimension: { range: { sheetId, dimension: 'ROWS', startIndex: first - 1, endIndex: first - 1 + count } },
          }],
        });
      },
      /**
       * Rows first..last sorted by `compare` (on each row's cells as an array), as
       * Data → Sort range does: every cell moves with its row, formulas included.
       */
      sortRows(first, last, compare, title) {
        const name = titleOf(title);
        const width = h.sheets.grid(name).columnCount;
        const a1 = `A${first}:${columnLetters(width)}${last}`;
        const raw = h.sheets.values(name, a1, 'FORMULA');
        const rows = [];
        for (let r = 0; r <= last - first; r++) {
          const line = [];
          for (let c = 0; c < width; c++) line.push(raw[r] && raw[r][c] !== undefined ? raw[r][c] : '');
          rows.push(line);
        }
        rows.sort(compare);
        const typed = rows.map((line) => line.map((v) =>
          (typeof v === 'string' && v !== '' && !v.startsWith('=') ? `'${v}` : v)));
        h.sheets.writeAsAnother(name, a1, typed);
      },
    };
  }

  select(...ranges) { this.selection = ranges.flat(); }
  answer(...answers) { this.answers.push(...answers); }
  holdDocumentLock() { this.lockState.holder = 'another execution'; }
  releaseDocumentLock() { this.lockState.holder = null; }

  /** Runs a global function of the script as one execution; returns what it did. */
  run(name, ...args) {
    const fn = this.context[name];
    if (typeof fn !== 'function') throw new Error(`the script has no function ${name}`);
    const mark = {
      dialogs: this.dialogs.length, fetches: this.fetches.length, toasts: this.toasts.length,
      events: this.events.length, unexpected: this.unexpected.length, mails: this.mails.length,
    };
    this.execution = { locks: [] };
    let thrown = null;
    try {
      fn(...args);
    } catch (err) {
      thrown = err;
    } finally {
      try {
        this.flushWrites();
      } finally {
        for (const lock of this.execution.locks) lock.releaseLock();  // executions end, locks go
        this.execution = null;
      }
    }
    const dialogs = this.dialogs.slice(mark.dialogs);
    return {
      thrown,
      dialogs,
      alerts: dialogs.filter((d) => d.kind === 'alert'),
      lastDialog: dialogs[dialogs.length - 1] || null,
      fetches: this.fetches.slice(mark.fetches),
      toasts: this.toasts.slice(mark.toasts),
      mails: this.mails.slice(mark.mails),
      events: this.events.slice(mark.events),
      unexpected: this.unexpected.slice(mark.unexpected),
    };
  }
}

function createHarness(options) {
  return new Harness(options);
}

module.exports = {
  createHarness, scriptFiles, columnLetters, parseA1, SCRIPT_DIR, TEST_DEPLOYMENT, triggersOf,
};
