'use strict';
/**
 * A double click must never run a batch twice.
 *
 * In Apps Script a double click is two executions, each with its own
 * confirmation dialog, running side by side. The script guards with the
 * document lock plus a record in the Document Properties, and sends an
 * Idempotency-Key so that the server replays the first answer when the
 * client could not know the first request arrived.
 *
 * A counting proxy in front of the real API tells what the server saw.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer } = require('./servers');
const {
  stackEnv, sceneId, addScenes, readRows, rowsA1, harnessFor, sleep, withoutLimits, runExecution,
} = require('./stack');

let env;
let proxy;

test.before(async () => {
  env = stackEnv();
  proxy = await startServer({ upstream: env.API_URL });
});

test.after(async () => {
  await proxy.close();
});

async function livesFor(sceneIds) {
  return (await proxy.batches('live')).filter((e) => e.scenes && e.scenes.some((s) => sceneIds.includes(s)));
}

async function waitCompleted(h, rows, timeoutS = 120) {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    h.run('refreshStatus');
    const current = await readRows(env, rows);
    if (current.every((r) => r.status_img === 'completed')) return current;
    assert.ok(Date.now() < deadline, `rows not completed: ${JSON.stringify(current)}`);
    await sleep(1000);
  }
}

test('a second click on the same rows asks before sending again; No keeps one batch', async () => {
  const scenes = [
    { scene_id: sceneId('again'), prompt: 'A paper boat', variants: 1 },
    { scene_id: sceneId('again'), prompt: 'A paper plane', variants: 1 },
  ];
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });

  h.answer('YES');
  const first = h.run('generateSelectedRows');
  assert.equal(first.thrown, null);
  const batchId = /Batch (\S+) accepted/.exec(first.lastDialog.text)[1];
  const jobIds = (await readRows(env, rows)).map((r) => r.job_id);

  h.answer({ button: 'NO', expect: new RegExp(`already sent [\\s\\S]*\\(batch ${batchId}\\)[\\s\\S]*AGAIN`) });
  const second = h.run('generateSelectedRows');
  assert.equal(second.thrown, null);
  assert.deepEqual(second.unexpected, []);
  assert.equal(second.lastDialog.text, 'Nothing was sent.');
  assert.deepEqual(withoutLimits(second.fetches).map((f) => f.json.runMode), ['dry_run']);

  const lives = await livesFor(ids);
  assert.equal(lives.length, 1, 'one live request reached the server');
  assert.deepEqual((await readRows(env, rows)).map((r) => r.job_id), jobIds);

  // Saying yes on purpose makes a new batch, with a new key.
  h.answer({ button: 'YES', expect: /AGAIN/ });
  const third = h.run('generateSelectedRows');
  const newBatch = /Batch (\S+) accepted/.exec(third.lastDialog.text)[1];
  assert.notEqual(newBatch, batchId);
  const allLives = await livesFor(ids);
  assert.equal(allLives.length, 2);
  assert.notEqual(allLives[0].headers['idempotency-key'], allLives[1].headers['idempotency-key']);
  await waitCompleted(h, rows);
});


test('two Generate executions racing on the same rows make one batch', { timeout: 120000 }, async () => {
  const scenes = [
    { scene_id: sceneId('race'), prompt: 'Two clicks, one kite', variants: 1 },
    { scene_id: sceneId('race'), prompt: 'Two clicks, one boat', variants: 2 },
  ];
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'apps-script-race-'));
  try {
    // Both executions answer "Yes" only once both have shown their question,
    // so both pass the confirmation before either one sends.
    const job = {
      env,
      fn: 'generateSelectedRows',
      selection: [rowsA1(rows[0], rows[1])],
      sharedDir: path.join(shared, 'document'),
      scriptProperties: { AI_IMAGES_API_URL: proxy.url, AI_IMAGES_AUTH_MODE: 'api_key' },
      userProperties: { AI_IMAGES_API_KEY: env.API_KEY },
      answers: [{ button: 'YES', barrier: { dir: path.join(shared, 'barrier'), parties: 2 } }],
    };
    const results = await Promise.all([runExecution(job), runExecution(job)]);
    for (const r of results) {
      assert.equal(r.thrown, null);
      assert.deepEqual(r.unexpected, []);
    }
    const finals = results.map((r) => r.dialogs[r.dialogs.length - 1].text);
    const sender = finals.findIndex((t) => /^Batch \S+ accepted/.test(t));
    assert.ok(sender >= 0, `one execution sends: ${finals.join('\n---\n')}`);
    const batchId = /^Batch (\S+) accepted/.exec(finals[sender])[1];
    const other = finals[1 - sender];
    assert.match(other, new RegExp(`already sent .*\\(batch ${batchId}\\), by another click on Generate, so nothing was sent again`));
    assert.deepEqual(withoutLimits(results[1 - sender].fetches).map((f) => f.runMode), ['dry_run']);

    const lives = await livesFor(ids);
    assert.equal(lives.length, 1, 'the server saw one live request');
    assert.equal(lives[0].response.batch_id, batchId);
    const jobOf = Object.fromEntries(lives[0].response.jobs.map((j) => [j.scene_id, j.job_id]));
    const current = await readRows(env, rows);
    assert.deepEqual(current.map((r) => r.job_id), ids.map((id) => jobOf[id]));
  } finally {
    fs.rmSync(shared, { recursive: true, force: true });
  }
});

test('a lost answer: asked again at once, then by clicking again, with the same Idempotency-Key; the server replays the batch', { timeout: 180000 }, async () => {
  // Needs the server's Idempotency-Key support (replay with Idempotent-Replay: true).
  const scenes = [
    { scene_id: sceneId('lost'), prompt: 'A message in a bottle', variants: 2 },
    { scene_id: sceneId('lost'), prompt: 'A lighthouse at dusk', variants: 1 },
  ];
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });

  // The script asks once more by itself (same key); both answers are lost here.
  await proxy.configure({ dropLiveAnswers: 2 });
  h.answer('YES');
  const first = h.run('generateSelectedRows');
  assert.equal(first.thrown, null);
  const text = first.lastDialog.text;
  assert.match(text, /^Could not reach the image service/);
  assert.match(text, /It is not known whether the batch arrived; the rows stay marked "queued"\. Choose "Generate selected rows" again within 23 hours/);
  let lives = await livesFor(ids);
  assert.equal(lives.length, 2, 'sent, and asked once more with the same key');
  assert.ok(lives[0].dropped && lives[1].dropped, 'the proxy forwarded the batch and cut the answer');
  assert.equal(lives[1].headers['idempotency-key'], lives[0].headers['idempotency-key']);
  const firstBatch = lives[0].response.batch_id;
  assert.ok(firstBatch, 'the server accepted the first request');
  assert.equal(lives[1].response.batch_id, firstBatch);
  assert.equal(lives[1].replay, 'true');

  h.answer({ button: 'YES', expect: /earlier attempt to send these rows .* got no answer/ });
  const second = h.run('generateSelectedRows');
  assert.equal(second.thrown, null);
  assert.deepEqual(second.unexpected, []);
  lives = await livesFor(ids);
  assert.equal(lives.length, 3);
  assert.equal(lives[2].headers['idempotency-key'], lives[0].headers['idempotency-key'], 'the same key is sent again');
  assert.equal(lives[2].response.batch_id, firstBatch, 'the server replays the first batch instead of running a second one');
  assert.equal(lives[2].replay, 'true');
  assert.match(second.lastDialog.text, new RegExp(`^Batch ${firstBatch} accepted[\\s\\S]*already arrived from an earlier attempt; it was not run twice`));

  const jobOf = Object.fromEntries(lives[0].response.jobs.map((j) => [j.scene_id, j.job_id]));
  const done = await waitCompleted(h, rows);
  assert.deepEqual(done.map((r) => r.job_id), ids.map((id) => jobOf[id]));
  assert.match(done[0].nano_img_2, /^=IMAGE\(".+\/assets\/.+\/2\?size=thumb&sig=/);
});

test('a server error after the batch arrived: clicking again sends the same key and makes no second batch', { timeout: 180000 }, async () => {
  const scenes = [{ scene_id: sceneId('fivexx'), prompt: 'A kite over the dunes', variants: 1 }];
  const ids = scenes.map((s) => s.scene_id);
  const rows = await addScenes(env, scenes);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0], rows[0])] } });

  // The server records the batch; the client gets a 503 (its instance died after
  // the work, say), so it cannot know the batch arrived.
  await proxy.configure({ failLiveAnswers: 2 });
  h.answer('YES');
  const first = h.run('generateSelectedRows');
  assert.equal(first.thrown, null);
  const text = first.lastDialog.text;
  assert.match(text, /^The image service had a problem \(HTTP 503 unavailable\)/);
  assert.match(text, /the same request is sent again and the server does not run it twice/);
  let lives = await livesFor(ids);
  assert.equal(lives.length, 2, 'sent, and asked once more with the same key');
  assert.ok(lives[0].failed && lives[0].response.batch_id, 'the server accepted the first request');
  const firstBatch = lives[0].response.batch_id;
  assert.equal(lives[1].response.batch_id, firstBatch);

  h.answer({ button: 'YES', expect: /earlier attempt to send these rows .* got no answer/ });
  const second = h.run('generateSelectedRows');
  assert.equal(second.thrown, null);
  assert.deepEqual(second.unexpected, []);
  lives = await livesFor(ids);
  assert.equal(lives.length, 3);
  assert.equal(lives[2].headers['idempotency-key'], lives[0].headers['idempotency-key']);
  assert.equal(lives[2].response.batch_id, firstBatch, 'no second batch: the first is answered again');
  assert.equal(lives[2].replay, 'true');
  assert.match(second.lastDialog.text, /already arrived from an earlier attempt; it was not run twice/);
  const done = await waitCompleted(h, rows);
  assert.deepEqual(done.map((r) => r.job_id), lives[0].response.jobs.map((j) => j.job_id));
});
