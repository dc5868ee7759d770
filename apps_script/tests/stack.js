'use strict';
/**
 * The running local stack as the tests see it: its environment, unique scene
 * ids, and the Sheets stub's REST API for putting rows in and reading them back
 * (asynchronously, between executions of the script).
 */
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { createHarness, columnLetters } = require('./harness');

const NAMES = ['API_URL', 'API_KEY', 'SPREADSHEET_ID', 'WORKSHEET', 'SHEETS_API_URL'];

function stackEnv() {
  const missing = NAMES.filter((name) => !process.env[name]);
  if (missing.length) {
    throw new Error(
      `missing ${missing.join(', ')}: run these tests through ` +
        '`.venv/bin/pytest tests/integration/test_apps_script.py` (it starts the local stack), ' +
        'or `make up && set -a && . .devstack/env && set +a` first',
    );
  }
  return Object.fromEntries(NAMES.map((name) => [name, process.env[name]]));
}

const RUN = crypto.randomBytes(3).toString('hex');
let counter = 0;

/** A scene id no other test (or run) uses: the sheet is shared. */
function sceneId(name) {
  counter += 1;
  return `as-${name}-${RUN}-${counter}`;
}

function valuesUrl(env, range, suffix = '', sheet = env.WORKSHEET) {
  const title = `'${sheet.replace(/'/g, "''")}'`;
  return `${env.SHEETS_API_URL}/v4/spreadsheets/${encodeURIComponent(env.SPREADSHEET_ID)}/values/${encodeURIComponent(`${title}!${range}`)}${suffix}`;
}

async function call(url, options = {}) {
  const res = await fetch(url, {
    ...options,
    headers: { 'content-type': 'application/json', connection: 'close', ...(options.headers || {}) },
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`Sheets stub ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

/** Appends rows (arrays in header order) after the table; returns their row numbers. */
async function appendRows(env, rows) {
  const answer = await call(
    valuesUrl(env, 'A1', ':append?valueInputOption=RAW&insertDataOption=OVERWRITE'),
    { method: 'POST', body: JSON.stringify({ majorDimension: 'ROWS', values: rows }) },
  );
  const m = /!([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?$/.exec(answer.updates.updatedRange);
  if (!m) throw new Error(`unexpected append answer ${JSON.stringify(answer)}`);
  const first = Number(m[2]);
  return rows.map((_, i) => first + i);
}

/** Scenes as {scene_id, prompt, ref_pack_public_url, variants} objects -> row numbers. */
async function addScenes(env, scenes) {
  return appendRows(
    env,
    scenes.map((s) => [s.scene_id, s.prompt, s.ref_pack_public_url || '', s.variants === undefined ? '' : s.variants]),
  );
}

async function header(env, sheet = env.WORKSHEET) {
  const answer = await call(valuesUrl(env, '1:1', '', sheet));
  return answer.values[0];
}

/**
 * Rows by header name; render FORMULA shows =IMAGE() formulas. `sheet`: another
 * sheet of the spreadsheet than the stack's scenes sheet.
 */
async function readRows(env, rowNumbers, render = 'FORMULA', sheet = env.WORKSHEET) {
  const names = await header(env, sheet);
  const last = columnLetters(names.length);
  const out = [];
  for (const row of rowNumbers) {
    const answer = await call(valuesUrl(env, `A${row}:${last}${row}`, `?valueRenderOption=${render}`, sheet));
    const values = (answer.values && answer.values[0]) || [];
    out.push(Object.fromEntries(names.map((name, i) => [name, values[i] === undefined ? '' : values[i]])));
  }
  return out;
}

async function writeCells(env, a1, values) {
  await call(valuesUrl(env, a1, '?valueInputOption=USER_ENTERED'), {
    method: 'PUT',
    body: JSON.stringify({ range: a1, majorDimension: 'ROWS', values }),
  });
}

/** The A1 range of whole data rows first..last (A..I). */
function rowsA1(first, last = first) {
  return `A${first}:I${last}`;
}

/** A harness on the stack's sheet, configured with the stack's API URL and key. */
function harnessFor(env, options = {}) {
  return createHarness({
    env,
    scriptProperties: {
      AI_IMAGES_API_URL: options.apiUrl || env.API_URL,
      AI_IMAGES_AUTH_MODE: options.authMode || 'api_key',
    },
    userProperties: options.apiKey === null ? {} : { AI_IMAGES_API_KEY: options.apiKey || env.API_KEY },
    ...options.harness,
  });
}

/**
 * Whether a request (a harness fetch, with `url`, or a server log entry, with
 * `path`) is the script's GET /limits, which it asks before it checks any row.
 */
function isLimitsRequest(entry) {
  const where = entry.path || new URL(entry.url).pathname;
  return entry.method === 'GET' && /\/limits$/.test(where);
}

/** The requests other than GET /limits: what carries rows, jobs or images. */
function withoutLimits(entries) {
  return entries.filter((entry) => !isLimitsRequest(entry));
}

/**
 * A new sheet of the spreadsheet, named `prefix` and a suffix unique to the run,
 * holding `values` (rows of cells, header first) from A1 as typed (RAW); returns
 * its title.
 */
async function addSheet(env, prefix, values) {
  const title = `${prefix} ${sceneId('sheet')}`;
  const base = `${env.SHEETS_API_URL}/v4/spreadsheets/${encodeURIComponent(env.SPREADSHEET_ID)}`;
  await call(`${base}:batchUpdate`, {
    method: 'POST',
    body: JSON.stringify({ requests: [{ addSheet: { properties: { title } } }] }),
  });
  await call(`${base}/values/${encodeURIComponent(`'${title}'!A1`)}?valueInputOption=RAW`, {
    method: 'PUT',
    body: JSON.stringify({ values }),
  });
  return title;
}

/** Rows of `header` from objects by column name (missing names: empty cells). */
function rowsOf(header, objects) {
  return objects.map((o) => header.map((name) => (o[name] === undefined ? '' : o[name])));
}

/** Columns the pipeline or the script writes: never in a row's `fields`. */
const WRITTEN_COLUMNS = ['status_img', 'job_id', 'error_img', 'review'];

/**
 * The `fields` a row is sent with: every column of `header` but those the pipeline
 * or the script writes, as the sheet shows it (a number as text), trimmed; the
 * prompt only for a row with a template (without one it is sent as `prompt`).
 */
function fieldsOf(header, row, withTemplate = false) {
  return Object.fromEntries(header
    .filter((name) => !WRITTEN_COLUMNS.includes(name) && !/^nano_img_\d+$/.test(name))
    .filter((name) => withTemplate || name !== 'prompt')
    .map((name) => [name, row[name] === undefined ? '' : String(row[name]).trim()]));
}

async function sleep(ms) {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs one Apps Script execution in its own process (run_execution.js); its exit code and output. */
function spawnExecution(job) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'run_execution.js')], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => { out += c; });
    child.stderr.on('data', (c) => { err += c; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out, err }));
    child.stdin.end(JSON.stringify(job));
  });
}

/** Runs one execution that must end normally; what it reports (run_execution.js). */
async function runExecution(job) {
  const { code, out, err } = await spawnExecution(job);
  if (code !== 0) throw new Error(`execution exited ${code}: ${err}`);
  return JSON.parse(out);
}

module.exports = {
  stackEnv, sceneId, appendRows, addScenes, readRows, writeCells, rowsA1, harnessFor, sleep, header,
  isLimitsRequest, withoutLimits, addSheet, rowsOf, fieldsOf, spawnExecution, runExecution,
};
