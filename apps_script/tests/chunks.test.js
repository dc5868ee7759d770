'use strict';
/**
 * Chunked sends: a selection larger than one request may carry (the deployment's
 * max_body_bytes and max_items_per_batch, GET /limits) is estimated and sent as
 * several requests, one after the other, each a batch of its own, and no retry
 * (a lost answer, a 503, an execution stopped half-way, a refused chunk and a
 * Generate run again) ever makes a row's images twice.
 *
 * Against the real local API, through a stand-in (servers.js) that answers GET
 * /limits with the stack's own limits but a small max_body_bytes (or
 * max_items_per_batch), refuses a larger body with 413 as the API does, and
 * forwards everything else. One image per variant is checked where it is made:
 * the Gemini stub's count of generated images per prompt (each prompt names its row).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer } = require('./servers');
const {
  stackEnv, sceneId, addScenes, readRows, writeCells, rowsA1, harnessFor, sleep, withoutLimits,
  spawnExecution,
} = require('./stack');

/** A small body limit: two of the rows below fit one request, three do not. */
const SMALL_BODY = 6000;
const SLACKED = Math.floor(SMALL_BODY * 0.95);

let env;
let realLimits;
const servers = [];

test.before(async () => {
  env = stackEnv();
  const res = await fetch(`${env.API_URL}/limits`, { headers: { 'X-API-Key': env.API_KEY } });
  assert.equal(res.status, 200);
  realLimits = await res.json();
});

test.after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

/** The stand-in deployment: the real API with other limits (`changes`), enforced. */
async function deployment(changes, extra = {}) {
  const limits = { ...realLimits, ...changes };
  const server = await startServer({
    upstream: env.API_URL,
    maxBodyBytes: limits.max_body_bytes,
    routes: [{ method: 'GET', path: '/limits', status: 200, body: limits }],
    ...extra,
  });
  servers.push(server);
  return server;
}

/**
 * Rows whose prompt is ~2 KB in UTF-8 but 1,000-odd characters: measured in
 * characters, five would seem to fit one request of SMALL_BODY bytes.
 */
function bigScenes(name, variants) {
  return variants.map((n) => {
    const id = sceneId(name);
    return { scene_id: id, prompt: `${id} at dawn ${'é'.repeat(1000)}`, variants: n };
  });
}

async function livesFor(server, ids) {
  return (await server.batches('live')).filter((e) => e.scenes && e.scenes.some((s) => ids.includes(s)));
}

async function stubStats() {
  const res = await fetch(`${process.env.GEMINI_STUB_URL}/_stub/stats`);
  assert.equal(res.status, 200);
  return res.json();
}

/** Refresh until every row is completed; returns the rows. */
async function waitCompleted(h, rows, timeoutS = 120) {
  const deadline = Date.now() + timeoutS * 1000;
  h.select(rows.map((row) => rowsA1(row)));
  for (;;) {
    h.run('refreshStatus');
    const current = await readRows(env, rows);
    if (current.every((r) => r.status_img === 'completed')) return current;
    assert.ok(Date.now() < deadline, `rows not completed: ${JSON.stringify(current.map((r) => r.status_img))}`);
    await sleep(1000);
  }
}

/** Each row completed with one job, and Gemini made exactly one image per variant of it. */
async function assertOneImagePerVariant(h, rows, scenes) {
  const done = await waitCompleted(h, rows);
  assert.equal(new Set(done.map((r) => r.job_id)).size, scenes.length, 'one job per row');
  const stats = (await stubStats()).by_prompt;
  for (const scene of scenes) {
    const made = stats[scene.prompt];
    assert.ok(made, `Gemini never saw the prompt of ${scene.scene_id}`);
    assert.equal(made.generated, scene.variants, `${scene.scene_id}: one image per variant, made once`);
  }
  return done;
}

/** The jobs each scene got from the live answers the server produced (not replays). */
function jobsByScene(lives) {
  const jobs = {};
  for (const live of lives) {
    if (!live.response || !live.response.jobs || live.replay === 'true') continue;
    for (const job of live.response.jobs) (jobs[job.scene_id] = jobs[job.scene_id] || new Set()).add(job.job_id);
  }
  return jobs;
}

test('a selection over max_body_bytes is estimated and sent in chunks under the limit; each row gets one job, one image per variant', { timeout: 180000 }, async () => {
  const api = await deployment({ max_body_bytes: SMALL_BODY });
  const scenes = bigScenes('chunk', [1, 2, 1, 2, 1, 1]);
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[5])] } });

  // The estimate: one dry run per chunk, summed.
  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  const dries = (await api.batches('dry_run')).filter((e) => ids.includes(e.scenes[0]));
  assert.deepEqual(dries.map((e) => e.scenes), [ids.slice(0, 2), ids.slice(2, 4), ids.slice(4)]);
  for (const dry of dries) {
    assert.equal(dry.status, 200);
    assert.ok(dry.bytes <= SLACKED, `a dry run of ${dry.bytes} bytes`);
  }
  const cost = dries.reduce((n, e) => n + Math.round(Number(e.response.estimated_cost_usd) * 10000), 0);
  const text = estimate.lastDialog.text;
  assert.match(text, new RegExp(`^6 scenes \\(rows ${rows[0]}-${rows[5]}\\), 8 images\\nEstimated cost: \\$${(cost / 10000).toFixed(4).replace('.', '\\.')} `));
  assert.match(text, /\nSent in 3 chunks, one after the other, each a batch of its own/);
  assert.match(text, /This batch: 8 images/);

  // Generate: three live requests, each under the limit, in row order, each with its own key.
  h.answer({ button: 'YES', expect: /^Generate 8 images for 6 scenes\?/ });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.deepEqual(run.unexpected, []);
  const lives = await livesFor(api, ids);
  assert.deepEqual(lives.map((e) => e.scenes), [ids.slice(0, 2), ids.slice(2, 4), ids.slice(4)]);
  for (const live of lives) {
    assert.equal(live.status, 202);
    assert.ok(live.bytes <= SLACKED, `a chunk of ${live.bytes} bytes`);
    assert.equal(live.replay, null);
  }
  const keys = lives.map((e) => e.headers['idempotency-key']);
  const base = keys[0].replace(/-1of3$/, '');
  assert.match(base, /^sheets-[0-9a-f]{64}$/);
  assert.deepEqual(keys, [`${base}-1of3`, `${base}-2of3`, `${base}-3of3`]);
  assert.equal(new Set(lives.map((e) => e.response.batch_id)).size, 3, 'each chunk is a batch of its own');

  // Progress, chunk by chunk.
  assert.deepEqual(run.toasts.map((t) => t.message), [
    'Sending 8 images in 3 chunks…',
    'Sent 1 of 3 chunks (3 of 8 images).',
    'Sent 2 of 3 chunks (6 of 8 images).',
    'Sent 3 of 3 chunks (8 of 8 images).',
  ]);
  const done = run.lastDialog.text;
  assert.match(done, /^All 3 chunks accepted, each a batch of its own: 6 scenes, 8 images, estimated \$\d+\.\d{4}\./);
  lives.forEach((live, i) => {
    assert.match(done, new RegExp(`\\n {2}• chunk ${i + 1}, rows ${rows[2 * i]}-${rows[2 * i + 1]}: batch ${live.response.batch_id}\\n`));
  });

  // The job ids are the answers', row by row; every image is made once.
  const jobOf = Object.fromEntries(lives.flatMap((e) => e.response.jobs.map((j) => [j.scene_id, j.job_id])));
  assert.deepEqual((await readRows(env, rows)).map((r) => r.job_id), ids.map((id) => jobOf[id]));
  await assertOneImagePerVariant(h, rows, scenes);

  // A second click sees the whole send and sends nothing.
  h.answer({ button: 'NO', expect: /already sent .* \(3 batches: / });
  const again = h.run('generateSelectedRows');
  assert.equal(again.lastDialog.text, 'Nothing was sent.');
  assert.equal((await livesFor(api, ids)).length, 3);
});

test('max_items_per_batch binds too: more rows than a batch holds go in chunks of that many', async () => {
  const api = await deployment({ max_items_per_batch: 2 });
  const scenes = [1, 2, 3, 4, 5].map((n) => ({ scene_id: sceneId('items'), prompt: `A lantern number ${n}`, variants: 1 }));
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[4])] } });
  h.answer({ button: 'YES', expect: /^Generate 5 images for 5 scenes\?/ });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  const lives = await livesFor(api, ids);
  assert.deepEqual(lives.map((e) => e.scenes), [ids.slice(0, 2), ids.slice(2, 4), ids.slice(4)]);
  assert.match(run.lastDialog.text, /^All 3 chunks accepted/);
  const jobOf = Object.fromEntries(lives.flatMap((e) => e.response.jobs.map((j) => [j.scene_id, j.job_id])));
  assert.deepEqual((await readRows(env, rows)).map((r) => r.job_id), ids.map((id) => jobOf[id]));
});

test('a chunk whose answer is lost, or answered 503, is asked again with its key: the server replays it, one image per variant', { timeout: 180000 }, async () => {
  const scenes = bigScenes('retry', [2, 1, 1, 2, 1, 1]);
  const ids = scenes.map((s) => s.scene_id);
  // Chunk 2's answer is cut after the server made its batch; chunk 3's becomes a 503.
  const api = await deployment({ max_body_bytes: SMALL_BODY }, {
    faults: [{ scene: ids[2], kind: 'drop' }, { scene: ids[4], kind: 'fail' }],
  });
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[5])] } });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.deepEqual(run.unexpected, []);

  const lives = await livesFor(api, ids);
  assert.deepEqual(lives.map((e) => [e.scenes[0], !!e.dropped, !!e.failed, e.replay]), [
    [ids[0], false, false, null],
    [ids[2], true, false, null],
    [ids[2], false, false, 'true'],
    [ids[4], false, true, null],
    [ids[4], false, false, 'true'],
  ]);
  // Each retry carries its chunk's key and gets the batch the first attempt made.
  for (const [first, retry] of [[1, 2], [3, 4]]) {
    assert.equal(lives[retry].headers['idempotency-key'], lives[first].headers['idempotency-key']);
    assert.equal(lives[retry].response.batch_id, lives[first].response.batch_id);
  }
  const jobs = jobsByScene(lives);
  for (const id of ids) assert.equal(jobs[id].size, 1, `${id}: one job on the server`);
  const text = run.lastDialog.text;
  assert.match(text, /^All 3 chunks accepted/);
  assert.match(text, / {2}• chunk 2, rows \d+-\d+: batch \S+ \(had already arrived: replayed\)/);
  assert.match(text, /Chunks 2-3 had already arrived from an earlier attempt; they were not run twice\./);
  assert.equal(run.toasts.length, 4);

  const done = await assertOneImagePerVariant(h, rows, scenes);
  assert.deepEqual(done.map((r) => r.job_id), ids.map((id) => [...jobs[id]][0]));
});

test('a chunk that still gets no answer stops the send: its rows stay queued, later rows untouched; Generate again replays it and sends the rest', { timeout: 60000 }, async () => {
  const scenes = bigScenes('unknown', [1, 1, 1, 2, 1, 1]);
  const ids = scenes.map((s) => s.scene_id);
  // Both attempts of chunk 2 lose their answer (the server made its batch the first time).
  const api = await deployment({ max_body_bytes: SMALL_BODY }, { faults: [{ scene: ids[2], kind: 'drop', times: 2 }] });
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[5])] } });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  const text = run.lastDialog.text;
  assert.equal(text.split('\n\n')[0], `Chunk 2 of 3 (rows ${rows[2]}-${rows[3]}) got no answer, so the send stopped there.`);
  assert.match(text, /\n\nCould not reach the image service at /);
  assert.match(text, new RegExp(`\\nSent: rows ${rows[0]}-${rows[1]} \\(chunk 1, batch bat_\\w+\\)`));
  assert.match(text, new RegExp(`\\nNot known: rows ${rows[2]}-${rows[3]} \\(chunk 2\\): it is not known whether it arrived; its rows stay marked "queued"\\.`));
  assert.match(text, new RegExp(`\\nNot sent: rows ${rows[4]}-${rows[5]} \\(chunk 3\\); these rows are as they were\\.`));
  assert.match(text, /Choose "Generate selected rows" again on the same rows within 23 hours: the rows already sent are not sent again, chunk 2 is sent again with the same key/);
  let lives = await livesFor(api, ids);
  assert.deepEqual(lives.map((e) => [e.scenes[0], !!e.dropped]), [[ids[0], false], [ids[2], true], [ids[2], true]]);
  // Chunk 2's rows were marked "queued" (the pipeline may have written its jobs there
  // since); chunk 3's were never touched.
  const current = await readRows(env, rows);
  const inFlight = Object.fromEntries(lives[1].response.jobs.map((j) => [j.scene_id, j.job_id]));
  current.slice(2, 4).forEach((r, i) => assert.ok(
    (r.status_img === 'queued' && r.job_id === '') || r.job_id === inFlight[ids[2 + i]], JSON.stringify(r)));
  assert.deepEqual(current.slice(4).map((r) => [r.status_img, r.job_id]), [['', ''], ['', '']]);

  h.answer({ button: 'YES', expect: /stopped part-way: 1 of 3 chunks were accepted/ });
  const again = h.run('generateSelectedRows');
  assert.equal(again.thrown, null);
  assert.deepEqual(again.unexpected, []);
  lives = await livesFor(api, ids);
  assert.deepEqual(lives.slice(3).map((e) => [e.scenes[0], e.replay]), [[ids[2], 'true'], [ids[4], null]]);
  assert.equal(new Set(lives.slice(1, 4).map((e) => e.headers['idempotency-key'])).size, 1, 'chunk 2 keeps its key');
  assert.equal(lives[3].response.batch_id, lives[1].response.batch_id);
  const jobs = jobsByScene(lives);
  for (const id of ids) assert.equal(jobs[id].size, 1, `${id}: one job on the server`);
  const jobOf = Object.fromEntries(Object.entries(jobs).map(([id, set]) => [id, [...set][0]]));
  assert.deepEqual((await readRows(env, rows)).map((r) => r.job_id), ids.map((id) => jobOf[id]));
});


test('an execution stopped half-way: Generate again on the same rows sends only the rest, the chunk in flight with its key', { timeout: 180000 }, async () => {
  const api = await deployment({ max_body_bytes: SMALL_BODY });
  const scenes = bigScenes('killed', [1, 2, 2, 1, 1, 1]);
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'apps-script-chunks-'));
  try {
    // Stopped as chunk 2's answer arrives: the server made its batch, the script never saw it.
    const killed = await spawnExecution({
      env,
      fn: 'generateSelectedRows',
      selection: [rowsA1(rows[0], rows[5])],
      sharedDir: shared,
      scriptProperties: { AI_IMAGES_API_URL: api.url, AI_IMAGES_AUTH_MODE: 'api_key' },
      userProperties: { AI_IMAGES_API_KEY: env.API_KEY },
      answers: ['YES'],
      dieAfterLiveAnswers: 2,
    });
    assert.equal(killed.code, 137, killed.err);
    // Apps Script lets go of a dead execution's lock.
    fs.rmdirSync(path.join(shared, 'document.lock'));

    let lives = await livesFor(api, ids);
    assert.deepEqual(lives.map((e) => e.scenes), [ids.slice(0, 2), ids.slice(2, 4)]);
    const after = await readRows(env, rows);
    const first = Object.fromEntries(lives[0].response.jobs.map((j) => [j.scene_id, j.job_id]));
    assert.deepEqual(after.slice(0, 2).map((r) => r.job_id), ids.slice(0, 2).map((id) => first[id]), 'chunk 1 has its job ids');
    // Chunk 2 was marked "queued" and its answer never written by the script (the
    // pipeline may have written its jobs there since); chunk 3 was never touched.
    const inFlight = Object.fromEntries(lives[1].response.jobs.map((j) => [j.scene_id, j.job_id]));
    after.slice(2, 4).forEach((r, i) => assert.ok(
      (r.status_img === 'queued' && r.job_id === '') || r.job_id === inFlight[ids[2 + i]], JSON.stringify(r)));
    assert.deepEqual(after.slice(4).map((r) => [r.status_img, r.job_id]), [['', ''], ['', '']], 'chunk 3 was never marked');

    // Generate again, same rows: the question says what was sent and estimates the rest.
    const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[5])], sharedDir: shared } });
    h.answer({
      button: 'YES',
      expect: new RegExp(`stopped part-way: 1 of 3 chunks were accepted \\(rows ${rows[0]}-${rows[1]}, batch ${lives[0].response.batch_id}\\)[\\s\\S]*Generate 5 images for 4 scenes \\(the rows not sent yet\\)\\?[\\s\\S]*4 scenes \\(rows ${rows[2]}-${rows[5]}\\), 5 images`),
    });
    const run = h.run('generateSelectedRows');
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, []);
    assert.deepEqual(withoutLimits(run.fetches).filter((f) => f.json && f.json.runMode === 'dry_run')
      .map((f) => f.json.items.map((i) => i.scene_id)), [ids.slice(2, 4), ids.slice(4)], 'only the rest is estimated');

    lives = await livesFor(api, ids);
    assert.deepEqual(lives.map((e) => [e.scenes, e.replay]), [
      [ids.slice(0, 2), null],
      [ids.slice(2, 4), null],
      [ids.slice(2, 4), 'true'],
      [ids.slice(4), null],
    ], 'chunk 1 is not sent again; chunk 2 is replayed; chunk 3 is sent');
    assert.equal(lives[2].headers['idempotency-key'], lives[1].headers['idempotency-key']);
    assert.equal(lives[2].response.batch_id, lives[1].response.batch_id);
    const text = run.lastDialog.text;
    assert.match(text, /^All 3 chunks accepted, each a batch of its own: 6 scenes, 8 images, estimated \$\d+\.\d{4} for the 2 chunks sent now\./);
    assert.match(text, / {2}• chunk 1, rows \d+-\d+: batch \S+ \(sent earlier\)/);
    assert.match(text, /Chunk 2 had already arrived from an earlier attempt; it was not run twice\./);
    assert.deepEqual(run.toasts.map((t) => t.message), [
      'Sending 8 images in 3 chunks (1 sent earlier)…',
      'Sent 2 of 3 chunks (6 of 8 images).',
      'Sent 3 of 3 chunks (8 of 8 images).',
    ]);

    const jobs = jobsByScene(lives);
    for (const id of ids) assert.equal(jobs[id].size, 1, `${id}: one job on the server`);
    await assertOneImagePerVariant(h, rows, scenes);
  } finally {
    fs.rmSync(shared, { recursive: true, force: true });
  }
});

test('a chunk refused in the middle (budget): earlier rows keep their jobs, the rest are put back and named; Generate again sends only them', { timeout: 180000 }, async () => {
  const scenes = bigScenes('refused', [1, 1, 2, 1, 1, 1]);
  const ids = scenes.map((s) => s.scene_id);
  const budget = {
    day: '2025-11-25', images_limit: 1000, images_used: 999, images_requested: 3, images_remaining: 1,
    cost_limit_usd: '100.0000', cost_used_usd: '12.0000', cost_requested_usd: '0.2010', cost_remaining_usd: '88.0000',
  };
  const api = await deployment({ max_body_bytes: SMALL_BODY }, {
    faults: [{
      scene: ids[2],
      kind: 'refuse',
      status: 429,
      body: { error: 'budget_exceeded', message: 'this batch needs 3 images ($0.2010); today 1 image and $88.0000 remain', budget },
    }],
  });
  const rows = await addScenes(env, scenes);
  // Rows of the refused chunk hold an earlier job's result: it must survive.
  await writeCells(env, `E${rows[2]}:I${rows[2]}`, [['completed', '=IMAGE("https://example.com/old.png")', '', '', 'job_old']]);
  const before = await readRows(env, rows);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[5])] } });
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  let lives = await livesFor(api, ids);
  assert.deepEqual(lives.map((e) => [e.scenes, e.status]), [[ids.slice(0, 2), 202], [ids.slice(2, 4), 429]], 'chunk 3 is never sent');
  const batchId = lives[0].response.batch_id;

  const text = run.lastDialog.text;
  assert.equal(text.split('\n\n')[0], `Chunk 2 of 3 (rows ${rows[2]}-${rows[3]}) was refused, so the send stopped there.`);
  assert.match(text, /\n\nThe budget does not allow this batch \(HTTP 429 budget_exceeded\): this batch needs 3 images/);
  assert.match(text, /Images today \(2025-11-25\): 999 of 1000 used, 1 left/);
  assert.match(text, new RegExp(`\\nSent: rows ${rows[0]}-${rows[1]} \\(chunk 1, batch ${batchId}\\): these rows have their job ids`));
  assert.match(text, new RegExp(`\\nNot sent: rows ${rows[2]}-${rows[5]} \\(chunks 2-3\\); these rows are as they were\\.`));
  assert.match(text, /select the same rows and choose "Generate selected rows" again within 23 hours/);

  const current = await readRows(env, rows);
  const jobOf = Object.fromEntries(lives[0].response.jobs.map((j) => [j.scene_id, j.job_id]));
  assert.deepEqual(current.slice(0, 2).map((r) => r.job_id), ids.slice(0, 2).map((id) => jobOf[id]));
  assert.deepEqual(current.slice(2), before.slice(2), 'the refused and unsent rows are as they were');

  // The budget allows it now: the same rows again send only chunks 2 and 3.
  h.answer({ button: 'YES', expect: /stopped part-way: 1 of 3 chunks were accepted[\s\S]*Generate 5 images for 4 scenes \(the rows not sent yet\)\?/ });
  const again = h.run('generateSelectedRows');
  assert.equal(again.thrown, null);
  assert.deepEqual(again.unexpected, []);
  lives = await livesFor(api, ids);
  assert.deepEqual(lives.slice(2).map((e) => [e.scenes, e.status, e.replay]), [
    [ids.slice(2, 4), 202, null],
    [ids.slice(4), 202, null],
  ]);
  assert.equal(lives[2].headers['idempotency-key'], lives[1].headers['idempotency-key'], 'the refused chunk keeps its key');
  assert.match(again.lastDialog.text, /^All 3 chunks accepted/);
  const jobs = jobsByScene(lives);
  for (const id of ids) assert.equal(jobs[id].size, 1, `${id}: one job on the server`);
  await assertOneImagePerVariant(h, rows, scenes);
});

test('a row too large for one request on its own is refused by row, and nothing is sent', async () => {
  const api = await deployment({ max_body_bytes: SMALL_BODY });
  const [small, big] = [
    { scene_id: sceneId('fits'), prompt: 'A small lantern', variants: 1 },
    { scene_id: sceneId('huge'), prompt: '€'.repeat(2000), variants: 1 },
  ];
  const rows = await addScenes(env, [small, big]);
  const h = harnessFor(env, { apiUrl: api.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, new RegExp(`^Nothing was sent: 1 problem in the selected rows\\.\\n\\nRow ${rows[1]}: the row is 6,\\d{3} bytes as sent \\(its prompt and other columns\\); one request to the image service may hold at most 6,000 bytes`));
  assert.deepEqual(withoutLimits(await api.log()), []);
});
