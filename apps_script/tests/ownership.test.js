'use strict';
/**
 * The sheet is shared (issue 27): each row is written by the job that owns it,
 * found by who it is at the moment of writing.
 *
 * The script reads the sheet, waits for a slow request, then writes. Meanwhile
 * the pipeline writes rows itself, people sort and insert rows, and a scene may
 * be sent again. These tests change the sheet while the script waits (the
 * harness's duringFetch, acting as another writer) and check that every write
 * lands on the right scene, for the job named in its row's job_id cell, and
 * never moves a cell back. Each test uses a sheet of its own, since inserting
 * and sorting rows would move the rows of tests running beside it.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./servers');
const { stackEnv, sceneId, harnessFor, withoutLimits } = require('./stack');

let env;
let canned;

test.before(async () => {
  env = stackEnv();
  canned = await startServer({ routes: [] });
});

test.after(async () => {
  await canned.close();
});

const HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img',
  'nano_img_1', 'nano_img_2', 'nano_img_3', 'job_id',
];
const COL = Object.fromEntries(HEADER.map((name, i) => [name, i]));

function sheetsBase() {
  return `${env.SHEETS_API_URL}/v4/spreadsheets/${encodeURIComponent(env.SPREADSHEET_ID)}`;
}

async function sheetsCall(url, options) {
  const res = await fetch(url, { ...options, headers: { 'content-type': 'application/json' } });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text || '{}');
}

/**
 * A new sheet with HEADER and these rows from row 2, typed in (USER_ENTERED, so
 * digits become numbers as in Sheets; text that must stay text starts with "'").
 */
async function newSheet(rows) {
  const title = `Owners ${sceneId('sheet')}`;
  await sheetsCall(`${sheetsBase()}:batchUpdate`, {
    method: 'POST',
    body: JSON.stringify({ requests: [{ addSheet: { properties: { title } } }] }),
  });
  await sheetsCall(`${sheetsBase()}/values/${encodeURIComponent(`'${title}'!A1`)}?valueInputOption=USER_ENTERED`, {
    method: 'PUT',
    body: JSON.stringify({ values: [HEADER, ...rows] }),
  });
  return title;
}

/** Rows 2..last of a sheet as objects by header name (formulas as written). */
async function rowsOf(title, last) {
  const range = encodeURIComponent(`'${title}'!A2:I${last}`);
  const answer = await sheetsCall(`${sheetsBase()}/values/${range}?valueRenderOption=FORMULA`, { method: 'GET' });
  const values = answer.values || [];
  const out = [];
  for (let r = 0; r <= last - 2; r++) {
    const line = values[r] || [];
    out.push(Object.fromEntries(HEADER.map((name, i) => [name, line[i] === undefined ? '' : line[i]])));
  }
  return out;
}

function row(fields) {
  return HEADER.map((name) => (fields[name] === undefined ? '' : fields[name]));
}

function image(url) {
  return `=IMAGE("${url}")`;
}

/** A /status answer. variants: [[n, state, thumbnail_url?], ...] */
function view(jobId, sceneIdOf, state, statusText, variants) {
  const count = (s) => variants.filter(([, vstate]) => vstate === s).length;
  return {
    job_id: jobId, batch_id: 'bat_owner', scene_id: sceneIdOf, state, status_text: statusText, error: null,
    progress: { done: count('done'), failed: count('failed'), total: variants.length },
    model: 'm', created_at: '2025-01-01T00:00:00+00:00',
    variants: variants.map(([n, vstate, thumb]) => ({ variant: n, state: vstate, error: null, thumbnail_url: thumb || null })),
  };
}

function statusRoute(v) {
  return { method: 'GET', path: `/status/${v.job_id}`, status: 200, body: v };
}

/** Dry run and live answers of POST /batch/images for these scenes (one image each). */
function batchRoutes(sceneIds, jobIds) {
  const plan = {
    runMode: 'dry_run', model: 'gemini-3.1-flash-image', price_per_image_usd: '0.0450',
    job_count: sceneIds.length, image_count: sceneIds.length,
    estimated_cost_usd: (0.045 * sceneIds.length).toFixed(4),
    jobs: sceneIds.map((id) => ({ scene_id: id, variants: 1, estimated_cost_usd: '0.0450' })),
  };
  const live = {
    ...plan, runMode: 'live', batch_id: 'bat_owner', unpublished: [],
    jobs: sceneIds.map((id, i) => ({ scene_id: id, job_id: jobIds[i], variants: 1, state: 'queued' })),
  };
  return [
    { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: plan },
    { method: 'POST', path: '/batch/images', runMode: 'live', status: 202, body: live },
  ];
}

const isStatus = (entry) => entry.method === 'GET' && entry.url.includes('/status/');
const isLive = (entry) => entry.method === 'POST' && entry.json && entry.json.runMode === 'live';

function harness(title, selection) {
  return harnessFor(env, { apiUrl: canned.url, harness: { sheetTitle: title, selection } });
}

test('a re-sent scene: the old job\'s status, answered last, does not take the row back', async () => {
  const scene = sceneId('resent');
  const title = await newSheet([row({ scene_id: scene, prompt: 'p', variants: 1, status_img: 'generating (0/1)', job_id: 'job_old' })]);
  // The old job finished; its answer arrives after the scene was sent again.
  await canned.configure({
    routes: [statusRoute(view('job_old', scene, 'completed', 'completed', [[1, 'done', 'https://example.com/old1.jpg']]))],
  });
  const h = harness(title, ['A2:I2']);
  // While /status is asked, Generate marks the row again and writes the new job's id.
  h.duringFetch(isStatus, () => h.asAnother.write('E2:I2', [['queued', '', '', '', 'job_new']]));

  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [now] = await rowsOf(title, 2);
  assert.equal(now.job_id, 'job_new');
  assert.equal(now.status_img, 'queued', 'the old job\'s status is not written into the new job\'s row');
  assert.equal(now.nano_img_1, '', 'nor its image');
  assert.match(run.lastDialog ? run.lastDialog.text : run.toasts[0].message, /0 rows updated/);
});

test('Refresh racing the pipeline: a row completed during the status requests is not moved back to "generating"', async () => {
  const scene = sceneId('race-done');
  const title = await newSheet([row({ scene_id: scene, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_done' })]);
  // Answered while the job was still running...
  await canned.configure({ routes: [statusRoute(view('job_done', scene, 'generating', 'generating (0/1)', [[1, 'generating']]))] });
  const h = harness(title, ['A2:I2']);
  // ...and before the script writes, the pipeline writes the finished row.
  h.duringFetch(isStatus, () => h.asAnother.write('E2:F2', [['completed', image('https://example.com/done1.jpg')]]));

  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [now] = await rowsOf(title, 2);
  assert.equal(now.status_img, 'completed', '"generating" is not written over "completed"');
  assert.equal(now.nano_img_1, image('https://example.com/done1.jpg'));
});

test('Refresh racing the pipeline: a re-roll finished during the status requests leaves no "being made" note', async () => {
  const scene = sceneId('race-reroll');
  const title = await newSheet([
    row({ scene_id: scene, prompt: 'p', variants: 1, status_img: 'completed', nano_img_1: image('https://example.com/v1.jpg'), job_id: 'job_reroll' }),
  ]);
  // Answered while a re-roll of image 1 was being made...
  await canned.configure({
    routes: [statusRoute(view('job_reroll', scene, 'completed', 'completed; variant 1: re-roll (v2) being made', [[1, 'done', 'https://example.com/v1.jpg']]))],
  });
  const h = harness(title, ['A2:I2']);
  // ...and before the script writes, the pipeline writes the row with the new version.
  h.duringFetch(isStatus, () => h.asAnother.write('E2:F2', [['completed', image('https://example.com/v2.jpg')]]));

  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [now] = await rowsOf(title, 2);
  assert.equal(now.status_img, 'completed', 'the re-roll note is not left next to the new image');
  assert.equal(now.nano_img_1, image('https://example.com/v2.jpg'), 'the new version stays');
});

test('a refused Generate puts back only the cells that still hold its "queued" marks', async () => {
  const scene = sceneId('refused');
  const title = await newSheet([row({ scene_id: scene, prompt: 'p', variants: 1, status_img: 'generating (0/1)', job_id: 'job_running' })]);
  const routes = batchRoutes([scene], ['job_never']);
  routes[1] = {
    method: 'POST', path: '/batch/images', runMode: 'live', status: 429,
    body: { error: 'budget_exceeded', message: 'today 0 images remain' },
  };
  await canned.configure({ routes });
  const h = harness(title, ['A2:I2']);
  // While the batch is being refused, the running job finishes and the pipeline writes its row.
  h.duringFetch(isLive, () => {
    h.asAnother.write('E2:I2', [['completed', image('https://example.com/run1.jpg'), '', '', 'job_running']]);
  });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /Nothing was sent; the rows are as they were\.$/);
  const [now] = await rowsOf(title, 2);
  assert.equal(now.status_img, 'completed', 'the stale "generating (0/1)" is not put back');
  assert.equal(now.nano_img_1, image('https://example.com/run1.jpg'), 'the image written meanwhile stays');
  assert.equal(now.job_id, 'job_running');
});

test('a row inserted while Generate waits for the server: each job id lands on its own scene', async () => {
  const a = sceneId('ins-gen-a');
  const b = sceneId('ins-gen-b');
  const title = await newSheet([
    row({ scene_id: a, prompt: 'p', variants: 1 }),
    row({ scene_id: b, prompt: 'p', variants: 1 }),
  ]);
  await canned.configure({ routes: batchRoutes([a, b], ['job_ins_a', 'job_ins_b']) });
  const h = harness(title, ['A2:I3']);
  h.duringFetch(isLive, () => h.asAnother.insertRows(2, 1));
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /^Batch bat_owner accepted/);
  const [inserted, first, second] = await rowsOf(title, 4);
  assert.deepEqual(Object.values(inserted).filter((v) => v !== ''), [], 'the inserted row is left empty');
  assert.equal(first.scene_id, a);
  assert.equal(first.job_id, 'job_ins_a');
  assert.equal(first.status_img, 'queued');
  assert.equal(second.scene_id, b);
  assert.equal(second.job_id, 'job_ins_b');
});

test('a scene sent again while its old job writes the row: the new job gets the row without the old job\'s cells', async () => {
  const scene = sceneId('resend-gen');
  const title = await newSheet([row({ scene_id: scene, prompt: 'p', variants: 1, status_img: 'generating (0/1)', job_id: 'job_first' })]);
  await canned.configure({ routes: batchRoutes([scene], ['job_second']) });
  const h = harness(title, ['A2:I2']);
  // While the batch is sent, the first job finishes and the pipeline writes its row.
  h.duringFetch(isLive, () => {
    h.asAnother.write('E2:I2', [['completed', image('https://example.com/first1.jpg'), '', '', 'job_first']]);
  });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /^Batch bat_owner accepted/);
  const [now] = await rowsOf(title, 2);
  assert.equal(now.job_id, 'job_second', 'the newest job sent owns the row');
  assert.equal(now.status_img, 'queued', 'the first job\'s status does not stand for the second');
  assert.equal(now.nano_img_1, '', 'nor its image');
});

test('rows deleted while the script waits are skipped and counted', async () => {
  const a = sceneId('del-a');
  const b = sceneId('del-b');
  const title = await newSheet([
    row({ scene_id: a, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_del_a' }),
    row({ scene_id: b, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_del_b' }),
  ]);
  await canned.configure({
    routes: [
      statusRoute(view('job_del_a', a, 'completed', 'completed', [[1, 'done', 'https://example.com/da.jpg']])),
      statusRoute(view('job_del_b', b, 'completed', 'completed', [[1, 'done', 'https://example.com/db.jpg']])),
    ],
  });
  const h = harness(title, ['A2:I3']);
  h.duringFetch(isStatus, () => h.asAnother.deleteRows(2, 1));
  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [first, second] = await rowsOf(title, 3);
  assert.equal(first.scene_id, b);
  assert.equal(first.nano_img_1, image('https://example.com/db.jpg'), 'b\'s row shows b\'s image');
  assert.deepEqual(Object.values(second).filter((v) => v !== ''), [], 'nothing is written below the data');
  const text = run.lastDialog ? run.lastDialog.text : run.toasts[0].message;
  assert.match(text, /1 row updated\. 1 row skipped: its scene_id is no longer in the sheet\./);

  // Generate: a row deleted while the batch is sent is named in the final message.
  const c = sceneId('del-c');
  const d = sceneId('del-d');
  h.asAnother.write('A3:D4', [[c, 'p', '', 1], [d, 'p', '', 1]]);
  await canned.configure({ routes: batchRoutes([c, d], ['job_del_c', 'job_del_d']) });
  h.select('A3:I4');
  h.duringFetch(isLive, () => h.asAnother.deleteRows(3, 1));
  h.answer('YES');
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.match(generate.lastDialog.text, new RegExp(`Rows no longer in the sheet[^\\n]*:\\n {2}• Row 3 \\(${c}\\): no longer in the sheet, so its job job_del_c was not written\\.`));
  const after = await rowsOf(title, 4);
  assert.equal(after[1].scene_id, d);
  assert.equal(after[1].job_id, 'job_del_d');
  assert.equal(after[2].job_id, '', 'nothing is written below the data');
});

test('a row inserted while Refresh waits for /status: each status lands on its own scene', async () => {
  const a = sceneId('ins-ref-a');
  const b = sceneId('ins-ref-b');
  const title = await newSheet([
    row({ scene_id: a, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_ref_a' }),
    row({ scene_id: b, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_ref_b' }),
  ]);
  await canned.configure({
    routes: [
      statusRoute(view('job_ref_a', a, 'completed', 'completed', [[1, 'done', 'https://example.com/a1.jpg']])),
      statusRoute(view('job_ref_b', b, 'generating', 'generating (0/1)', [[1, 'generating']])),
    ],
  });
  const h = harness(title, ['A2:I3']);
  h.duringFetch(isStatus, () => h.asAnother.insertRows(2, 1));
  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [inserted, first, second] = await rowsOf(title, 4);
  assert.equal(inserted.status_img, '', 'nothing is written into the inserted row');
  assert.equal(inserted.nano_img_1, '');
  assert.equal(first.scene_id, a);
  assert.equal(first.status_img, 'completed');
  assert.equal(first.nano_img_1, image('https://example.com/a1.jpg'));
  assert.equal(second.scene_id, b);
  assert.equal(second.status_img, 'generating (0/1)');
  assert.equal(second.nano_img_1, '');
});

test('a sort while Refresh waits for /status: each scene\'s row shows its own job\'s image', async () => {
  const tag = sceneId('sort');
  const late = `z-${tag}`;
  const early = `a-${tag}`;
  const title = await newSheet([
    row({ scene_id: late, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_sort_z' }),
    row({ scene_id: early, prompt: 'p', variants: 1, status_img: 'queued', job_id: 'job_sort_a' }),
  ]);
  await canned.configure({
    routes: [
      statusRoute(view('job_sort_z', late, 'completed', 'completed', [[1, 'done', 'https://example.com/z1.jpg']])),
      statusRoute(view('job_sort_a', early, 'completed', 'completed', [[1, 'done', 'https://example.com/a1.jpg']])),
    ],
  });
  const h = harness(title, ['A2:I3']);
  // Someone sorts the rows by scene_id (A → Z) meanwhile.
  h.duringFetch(isStatus, () => h.asAnother.sortRows(2, 3, (x, y) => String(x[COL.scene_id]).localeCompare(String(y[COL.scene_id]))));
  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  const [first, second] = await rowsOf(title, 3);
  assert.equal(first.scene_id, early);
  assert.equal(first.job_id, 'job_sort_a');
  assert.equal(first.nano_img_1, image('https://example.com/a1.jpg'));
  assert.equal(second.scene_id, late);
  assert.equal(second.job_id, 'job_sort_z');
  assert.equal(second.nano_img_1, image('https://example.com/z1.jpg'));
});

test('number-like scene ids are what the cell shows, as the server reads them', async () => {
  // Typed in, these are numbers: Sheets shows 15 significant digits of the first
  // (the server matches rows by what the cell shows), and "12" as 12.
  const title = await newSheet([
    row({ scene_id: '3.14159265358979323846', prompt: 'p', variants: 1 }),
    row({ scene_id: '12', prompt: 'p', variants: 1 }),
    row({ scene_id: "'007", prompt: 'p', variants: 1 }),
  ]);
  const shown = ['3.14159265358979', '12', '007'];
  const jobs = ['job_num_pi', 'job_num_12', 'job_num_007'];
  await canned.configure({
    routes: [
      ...batchRoutes(shown, jobs),
      statusRoute(view(jobs[0], shown[0], 'completed', 'completed', [[1, 'done', 'https://example.com/pi.jpg']])),
      statusRoute(view(jobs[1], shown[1], 'completed', 'completed', [[1, 'done', 'https://example.com/12.jpg']])),
      statusRoute(view(jobs[2], shown[2], 'completed', 'completed', [[1, 'done', 'https://example.com/007.jpg']])),
    ],
  });
  const h = harness(title, ['A2:I4']);
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  const sent = withoutLimits(run.fetches).map((f) => f.json.items.map((item) => item.scene_id));
  assert.deepEqual(sent, [shown, shown], 'the scene ids sent are the ones the sheet shows');
  let now = await rowsOf(title, 4);
  assert.deepEqual(now.map((r) => r.job_id), jobs, 'each job id lands on its row');

  const refresh = h.run('refreshStatus');
  assert.equal(refresh.thrown, null);
  now = await rowsOf(title, 4);
  assert.deepEqual(now.map((r) => r.nano_img_1), ['pi', '12', '007'].map((n) => image(`https://example.com/${n}.jpg`)));
});

test('a number Sheets shows in scientific notation is refused before anything is sent', async () => {
  // The server would look for a row showing "1.23456789012346E+19" and find none.
  const title = await newSheet([row({ scene_id: '12345678901234567890', prompt: 'p', variants: 1 })]);
  await canned.configure({ routes: batchRoutes(['12345678901234567000'], ['job_never']) });
  const h = harness(title, ['A2:I2']);
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.deepEqual(run.unexpected, []);
  assert.match(run.lastDialog.text, /Row 2: scene_id "1\.23456789012346E\+19" is not valid/);
  assert.deepEqual(withoutLimits(run.fetches), []);
});
