'use strict';
/**
 * Refresh status writes what a job's /status says, like the pipeline does,
 * but never moves a row backwards (the pipeline may have written a newer state
 * while /status was being asked).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./servers');
const { stackEnv, sceneId, appendRows, readRows, rowsA1, harnessFor } = require('./stack');

let env;
let canned;

test.before(async () => {
  env = stackEnv();
  canned = await startServer({ routes: [] });
});

test.after(async () => {
  await canned.close();
});

function view(jobId, sceneIdOf, state, statusText, variants) {
  const count = (s) => variants.filter(([, vstate]) => vstate === s).length;
  return {
    job_id: jobId, batch_id: 'bat_r', scene_id: sceneIdOf, state, status_text: statusText, error: null,
    progress: { done: count('done'), failed: count('failed'), total: variants.length },
    model: 'm', created_at: '2025-01-01T00:00:00+00:00',
    variants: variants.map(([n, vstate, thumb]) => ({ variant: n, state: vstate, error: null, thumbnail_url: thumb || null })),
  };
}

test('refresh writes status and images forward only, and names rows it cannot find', async () => {
  const tag = sceneId('refresh').replace(/[^A-Za-z0-9_-]/g, '_');
  const jobs = [`job_${tag}_a`, `job_${tag}_b`, `job_${tag}_c`, `job_${tag}_d`];
  const scenes = [sceneId('ra'), sceneId('rb'), sceneId('rc'), sceneId('rd')];
  const rows = await appendRows(env, [
    [scenes[0], 'p', '', 2, 'queued', '', '', '', jobs[0]],
    [scenes[1], 'p', '', 1, 'queued', '', '', '', jobs[1]],
    [scenes[2], 'p', '', 1, 'completed', '=IMAGE("https://example.com/c1.jpg")', '', '', jobs[2]],
    [scenes[3], 'p', '', 1, 'queued', '', '', '', jobs[3]],
  ]);
  await canned.configure({
    routes: [
      // The words are for people: progress comes from the machine-readable fields.
      { method: 'GET', path: `/status/${jobs[0]}`, status: 200, body: view(jobs[0], scenes[0], 'generating', 'generating, 1 image of 2 ready', [[1, 'done', 'https://example.com/a"1.jpg'], [2, 'generating']]) },
      { method: 'GET', path: `/status/${jobs[1]}`, status: 200, body: view(jobs[1], scenes[1], 'completed', 'completed', [[1, 'done', 'https://example.com/b1.jpg']]) },
      // Stale: the row already says completed; /status lags behind.
      { method: 'GET', path: `/status/${jobs[2]}`, status: 200, body: view(jobs[2], scenes[2], 'generating', 'generating (0/1)', [[1, 'generating']]) },
      { method: 'GET', path: `/status/${jobs[3]}`, status: 404, body: { error: 'not_found', message: `no job ${jobs[3]} for this caller` } },
    ],
  });
  const h = harnessFor(env, { apiUrl: canned.url, harness: { selection: [rowsA1(rows[0], rows[3])] } });
  const run = h.run('refreshStatus');
  assert.equal(run.thrown, null);
  assert.equal(run.fetches.length, 4);
  assert.ok(run.fetches.every((f) => f.method === 'GET' && f.headers['X-API-Key'] === env.API_KEY));
  const text = run.lastDialog.text;
  assert.match(text, /^Refreshed 4 rows \(selected rows\): completed 1, generating 2; 2 rows updated\./);
  assert.match(text, new RegExp(`Row ${rows[3]} \\(job ${jobs[3]}\\): not found for your sign-in`));

  const current = await readRows(env, rows);
  assert.equal(current[0].status_img, 'generating, 1 image of 2 ready');
  assert.equal(current[0].nano_img_1, '=IMAGE("https://example.com/a""1.jpg")', 'quotes doubled as in the pipeline');
  assert.equal(current[0].nano_img_2, '');
  assert.equal(current[1].status_img, 'completed');
  assert.equal(current[1].nano_img_1, '=IMAGE("https://example.com/b1.jpg")');
  assert.equal(current[2].status_img, 'completed', 'never moved backwards');
  assert.equal(current[2].nano_img_1, '=IMAGE("https://example.com/c1.jpg")');
  assert.equal(current[3].status_img, 'queued');

  // Nothing with a job selected: every unfinished row of the sheet is refreshed.
  h.select('A1:I1');
  const all = h.run('refreshStatus');
  const asked = all.fetches.map((f) => decodeURIComponent(f.url.split('/status/')[1]));
  assert.ok(asked.includes(jobs[0]) && asked.includes(jobs[3]), 'unfinished rows are asked for');
  assert.ok(!asked.includes(jobs[1]) && !asked.includes(jobs[2]), 'finished rows are not');
  assert.match(all.lastDialog.text, /\(unfinished rows\)/);
});
