'use strict';
/**
 * Server errors become messages for people: the server's message, field
 * details named by row, what to do next; never a stack trace. A refused live
 * batch puts the rows back as they were.
 *
 * 401 and 400 come from the real local API; 429 and 5xx from a tiny local
 * server that answers with the API's JSON error bodies.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./servers');
const {
  stackEnv, sceneId, addScenes, readRows, writeCells, rowsA1, harnessFor, isLimitsRequest,
} = require('./stack');

let env;
let canned;

test.before(async () => {
  env = stackEnv();
  canned = await startServer({ routes: [] });
});

test.after(async () => {
  await canned.close();
});

function noStackTrace(text) {
  assert.doesNotMatch(text, /\n\s+at .+:\d+/, `a stack trace was shown:\n${text}`);
}

function planFor(scenes, runMode = 'dry_run') {
  const images = scenes.reduce((n, s) => n + s.variants, 0);
  return {
    runMode,
    model: 'gemini-3.1-flash-image',
    price_per_image_usd: '0.0670',
    job_count: scenes.length,
    image_count: images,
    estimated_cost_usd: (0.067 * images).toFixed(4),
    jobs: scenes.map((s) => ({ scene_id: s.scene_id, variants: s.variants, estimated_cost_usd: (0.067 * s.variants).toFixed(4) })),
  };
}

const BUDGET = {
  day: '2025-11-25',
  images_limit: 1000,
  images_used: 998,
  images_requested: 3,
  images_remaining: 2,
  cost_limit_usd: '100.0000',
  cost_used_usd: '66.8660',
  cost_requested_usd: '0.2010',
  cost_remaining_usd: '33.1340',
};

test('401: a wrong API key says to check the key / sign-in in Settings', async () => {
  const scenes = [{ scene_id: sceneId('401'), prompt: 'x', variants: 1 }];
  const rows = await addScenes(env, scenes);
  const before = await readRows(env, rows);
  const h = harnessFor(env, { apiKey: 'not-the-key', harness: { selection: [rowsA1(rows[0])] } });
  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    // The first request of a run is GET /limits, authenticated like every route.
    const run = h.run(action);
    assert.equal(run.thrown, null);
    const text = run.lastDialog.text;
    noStackTrace(text);
    assert.match(text, /^Could not read the limits of the image service \(GET \/limits\), which the selected rows are checked against, so nothing was sent\.\n\nThe server did not accept your sign-in \(HTTP 401 unauthenticated\): /);
    assert.match(text, /Check the API key \/ sign-in in AI images → Settings\./);
    assert.equal(run.fetches.length, 1, 'a refused GET /limits is not cached, and nothing else is sent');
    assert.ok(isLimitsRequest(run.fetches[0]));
    assert.equal(run.fetches[0].status, 401);
  }
  assert.deepEqual(await readRows(env, rows), before);

  // Refresh too: every /status call is refused, so one clear message.
  await writeCells(env, `I${rows[0]}`, [['job_doesnotexist']]);
  const refresh = h.run('refreshStatus');
  assert.match(refresh.lastDialog.text, /^The server did not accept your sign-in \(HTTP 401/);
});

test('400 from the server: its field details are named by row', async () => {
  // A gs:// path passes the script's check (it cannot know the images bucket);
  // the server only reads objects of its own bucket.
  const scenes = [
    { scene_id: sceneId('ok'), prompt: 'Short', variants: 1 },
    { scene_id: sceneId('gs'), prompt: 'Elsewhere', variants: 1, ref_pack_public_url: 'gs://someone-elses-bucket/pack.png' },
  ];
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { harness: { selection: [rowsA1(rows[0], rows[1])] } });
  const run = h.run('estimateSelectedRows');
  const text = run.lastDialog.text;
  noStackTrace(text);
  const batch = run.fetches.find((f) => !isLimitsRequest(f));
  assert.equal(batch.status, 400);
  assert.match(text, /^The server refused the request \(HTTP 400 invalid_request\): the batch is invalid/);
  assert.match(text, new RegExp(`Row ${rows[1]} \\(scene_id "${scenes[1].scene_id}"\\): ref_pack_public_url must be `));
  assert.ok(!text.includes(`Row ${rows[0]} `), text);
});

test('429 budget_exceeded: the budget figures are shown, and refused rows are put back', async () => {
  const scenes = [
    { scene_id: sceneId('budget'), prompt: 'Expensive', variants: 2 },
    { scene_id: sceneId('budget'), prompt: 'Also expensive', variants: 1 },
  ];
  const rows = await addScenes(env, scenes);
  // The first row holds an earlier job's result: it must survive the refusal.
  await writeCells(env, `E${rows[0]}:I${rows[0]}`, [['completed', '=IMAGE("https://example.com/old.png")', '', '', 'job_old']]);
  const before = await readRows(env, rows);
  const budgetError = {
    error: 'budget_exceeded',
    message: 'this batch needs 3 images ($0.2010); today 2 images and $33.1340 remain',
    budget: BUDGET,
  };
  await canned.configure({
    routes: [
      { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: { ...planFor(scenes), budget: BUDGET, warnings: [{ message: 'gemini-3.1-flash-image is deprecated (no shutdown date is announced yet); move to gemini-nano-banana-2.1' }, { scene_id: scenes[1].scene_id, message: 'job job_x for this scene is still generating' }] } },
      { method: 'POST', path: '/batch/images', runMode: 'live', status: 429, body: budgetError },
    ],
  });
  const h = harnessFor(env, { apiUrl: canned.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });

  const estimate = h.run('estimateSelectedRows');
  assert.match(estimate.lastDialog.text, /Budget:\n {2}Images today \(2025-11-25\): 998 of 1000 used, 2 left\n {2}Spend today \(2025-11-25\): \$66\.8660 of \$100\.0000 used, \$33\.1340 left\n {2}This batch: 3 images, \$0\.2010/);
  assert.match(estimate.lastDialog.text, /This batch: 3 images, \$0\.2010\n {2}⚠ This is more than what is left for today: the server will refuse it\./);
  // A warning about the whole batch (its model going away) has no row.
  assert.match(estimate.lastDialog.text, /Warnings:\n {2}• gemini-3\.1-flash-image is deprecated \(no shutdown date is announced yet\); move to gemini-nano-banana-2\.1\n/);
  assert.match(estimate.lastDialog.text, new RegExp(`\n {2}• Row ${rows[1]} \\(${scenes[1].scene_id}\\): job job_x for this scene is still generating`));

  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  const text = run.lastDialog.text;
  noStackTrace(text);
  assert.match(text, /^The budget does not allow this batch \(HTTP 429 budget_exceeded\): this batch needs 3 images \(\$0\.2010\); today 2 images and \$33\.1340 remain/);
  assert.match(text, /Images today \(2025-11-25\): 998 of 1000 used, 2 left/);
  assert.match(text, /Nothing was sent; the rows are as they were\.$/);
  // They were marked queued before the request, then put back.
  const writes = run.events.filter((e) => e.type === 'sheet-write');
  assert.equal(writes.length, 2);
  assert.ok(JSON.stringify(writes[0].data).includes('"queued"'));
  assert.deepEqual(await readRows(env, rows), before);
  assert.deepEqual(h.documentProps.getKeys().filter((k) => k.startsWith('AI_IMAGES_SUBMISSION_')), [], 'a refused batch leaves no record');
});

test('429 rate limited: wait and try again, with Retry-After', async () => {
  const scenes = [{ scene_id: sceneId('rate'), prompt: 'x', variants: 1 }];
  const rows = await addScenes(env, scenes);
  await canned.configure({
    routes: [{ method: 'POST', path: '/batch/images', status: 429, headers: { 'Retry-After': '30' }, body: { error: 'rate_limited', message: 'too many requests from this caller' } }],
  });
  const h = harnessFor(env, { apiUrl: canned.url, harness: { selection: [rowsA1(rows[0])] } });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.lastDialog.text,
    'Too many requests right now (HTTP 429 rate_limited): too many requests from this caller\n\nWait 30 seconds and try again.');
});

test('5xx on the live request: rows stay queued, and the next click reuses the same key', async () => {
  const scenes = [{ scene_id: sceneId('5xx'), prompt: 'x', variants: 1 }];
  const rows = await addScenes(env, scenes);
  await canned.configure({
    routes: [
      { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: planFor(scenes) },
      { method: 'POST', path: '/batch/images', runMode: 'live', status: 503, contentType: 'text/html', body: '<html><body>Service Unavailable</body></html>' },
    ],
  });
  const h = harnessFor(env, { apiUrl: canned.url, harness: { selection: [rowsA1(rows[0])] } });
  h.answer('YES');
  const first = h.run('generateSelectedRows');
  const text = first.lastDialog.text;
  noStackTrace(text);
  assert.match(text, /^The image service had a problem \(HTTP 503\): <html><body>Service Unavailable<\/body><\/html>/);
  assert.match(text, /the rows stay marked "queued"/);
  assert.equal((await readRows(env, rows))[0].status_img, 'queued');

  const replayAnswer = { ...planFor(scenes, 'live'), batch_id: 'bat_canned', unpublished: [], jobs: [{ scene_id: scenes[0].scene_id, job_id: 'job_canned', variants: 1, state: 'queued' }] };
  await canned.configure({
    routes: [
      { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: planFor(scenes) },
      { method: 'POST', path: '/batch/images', runMode: 'live', status: 202, body: replayAnswer },
    ],
  });
  h.answer({ button: 'YES', expect: /got no answer/ });
  const second = h.run('generateSelectedRows');
  assert.match(second.lastDialog.text, /^Batch bat_canned accepted/);
  // The first click asked twice (once more by itself), the second once: one key.
  const lives = (await canned.batches('live')).filter((e) => e.scenes.includes(scenes[0].scene_id));
  assert.equal(lives.length, 3);
  assert.equal(new Set(lives.map((e) => e.headers['idempotency-key'])).size, 1);
  assert.equal((await readRows(env, rows))[0].job_id, 'job_canned');
});

test('a failed job in the 202 answer is shown in its row', async () => {
  const scenes = [
    { scene_id: sceneId('pubfail'), prompt: 'x', variants: 1 },
    { scene_id: sceneId('pubok'), prompt: 'y', variants: 1 },
  ];
  const rows = await addScenes(env, scenes);
  const answer = {
    ...planFor(scenes, 'live'),
    batch_id: 'bat_partial',
    unpublished: ['job_f'],
    jobs: [
      { scene_id: scenes[0].scene_id, job_id: 'job_f', variants: 1, state: 'failed', error: 'could not be queued: publish timeout' },
      { scene_id: scenes[1].scene_id, job_id: 'job_ok', variants: 1, state: 'queued' },
    ],
  };
  await canned.configure({
    routes: [
      { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: planFor(scenes) },
      { method: 'POST', path: '/batch/images', runMode: 'live', status: 202, body: answer },
    ],
  });
  const h = harnessFor(env, { apiUrl: canned.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.match(run.lastDialog.text, new RegExp(`Could not be queued:\n {2}• Row ${rows[0]} \\(${scenes[0].scene_id}\\): could not be queued: publish timeout`));
  const current = await readRows(env, rows);
  assert.deepEqual(current.map((r) => [r.status_img, r.job_id]), [
    ['failed: could not be queued: publish timeout', 'job_f'],
    ['queued', 'job_ok'],
  ]);
});

test('an unreachable API URL is reported, not thrown', async () => {
  const [row] = await addScenes(env, [{ scene_id: sceneId('down'), prompt: 'x', variants: 1 }]);
  const h = harnessFor(env, { apiUrl: 'http://127.0.0.1:9', harness: { selection: [rowsA1(row)] } });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /^Could not read the limits of the image service \(GET \/limits\)[\s\S]*nothing was sent\.\n\nCould not reach the image service at http:\/\/127\.0\.0\.1:9: [\s\S]*Check the API URL in AI images → Settings/);
});

test('Google sign-in mode sends the identity token as a Bearer token, not the key', async () => {
  const [row] = await addScenes(env, [{ scene_id: sceneId('idtoken'), prompt: 'x', variants: 1 }]);
  const scenes = [{ scene_id: (await readRows(env, [row]))[0].scene_id, variants: 1 }];
  await canned.configure({ routes: [{ method: 'POST', path: '/batch/images', status: 200, body: planFor(scenes) }] });
  const h = harnessFor(env, {
    apiUrl: canned.url,
    authMode: 'google',
    harness: { selection: [rowsA1(row)], identityToken: 'header.payload.signature' },
  });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /1 scene \(row \d+\), 1 image/);
  const seen = (await canned.log()).filter((e) => e.scenes && e.scenes.includes(scenes[0].scene_id));
  assert.equal(seen[0].headers.authorization, 'Bearer header.payload.signature');
  assert.equal(seen[0].headers['x-api-key'], undefined);
  const [asked] = (await canned.limitsRequests()).slice(-1);
  assert.equal(asked.headers.authorization, 'Bearer header.payload.signature', 'GET /limits signs in the same way');
  assert.equal(asked.headers['x-api-key'], undefined);

  // Without a token (scope not granted): a message, no request.
  h.identityToken = null;
  const none = h.run('estimateSelectedRows');
  assert.match(none.lastDialog.text, /^Could not get your Google sign-in token/);
  assert.deepEqual(none.fetches, []);
});
