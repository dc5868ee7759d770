'use strict';
/**
 * The whole path, as the creative team uses it: Settings, Estimate, Generate
 * and Refresh status on selected rows, against the running local stack. The
 * rows live in the local Sheets stub, where the pipeline writes too.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { createHarness } = require('./harness');
const { stackEnv, sceneId, addScenes, readRows, writeCells, rowsA1, sleep } = require('./stack');

const TIMEOUT_S = 120;

function noStackTrace(text) {
  assert.doesNotMatch(text, /\n\s+at .+:\d+/, `a stack trace was shown:\n${text}`);
}

test('Settings, Estimate, Generate and Refresh status take selected rows to completed images', { timeout: 240000 }, async () => {
  const env = stackEnv();
  const scenes = [
    { scene_id: sceneId('e2e'), prompt: 'A red kite over dunes', variants: 2 },
    { scene_id: sceneId('e2e'), prompt: 'A lantern in fog', variants: 1 },
    { scene_id: sceneId('e2e-skipped'), prompt: 'Not selected', variants: 1 },
    { scene_id: sceneId('e2e'), prompt: 'A quiet harbour at noon', variants: 3 },
  ];
  const rows = await addScenes(env, scenes);
  const chosen = [0, 1, 3];
  const h = createHarness({ env });

  // First run: the menu, then Settings (URL, sign-in mode, key).
  h.run('onOpen');
  assert.deepEqual(
    h.menus[0].items.filter((i) => !i.separator).map((i) => i.caption),
    [
      'Estimate selected rows', 'Generate selected rows', 'Generate drafts of selected rows',
      'Refresh status', 'Cancel selected rows', 'Re-roll selected image', 'Edit selected image…',
      'Promote selected image…', 'Approve selected images', 'Reject selected images',
      'Mark selected image as final', 'Send reviews of selected rows', 'Download batch',
      'Deliver to Drive…', 'Settings', 'Email me about my batches…',
    ],
  );
  h.answer({ button: 'OK', text: env.API_URL }, { button: 'OK', text: 'key' }, { button: 'OK', text: env.API_KEY });
  const settings = h.run('openSettings');
  assert.equal(settings.thrown, null);
  assert.match(settings.lastDialog.text, /^Saved\./);
  assert.equal(h.scriptProps.getProperty('AI_IMAGES_API_URL'), env.API_URL);
  assert.equal(h.userProps.getProperty('AI_IMAGES_API_KEY'), env.API_KEY);
  assert.equal(h.scriptProps.getProperty('AI_IMAGES_API_KEY'), null, 'the key never goes to Script Properties');

  // Two ranges: rows 0-1 and row 3; row 2 stays out.
  h.select(rowsA1(rows[0], rows[1]), rowsA1(rows[3]));

  // Estimate: a dry run, a dialog with image count and cost; nothing written.
  // First the deployment's limits (GET /limits), which the rows are checked against.
  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  assert.equal(estimate.fetches.length, 2);
  const [limits, dryRun] = estimate.fetches;
  assert.equal(limits.method, 'GET');
  assert.equal(limits.url, `${env.API_URL}/limits`);
  assert.equal(limits.status, 200, limits.response);
  assert.equal(limits.headers['X-API-Key'], env.API_KEY);
  assert.ok(JSON.parse(limits.response).max_variants >= 3);
  assert.equal(dryRun.json.runMode, 'dry_run');
  assert.deepEqual(dryRun.json.items.map((i) => i.scene_id), chosen.map((i) => scenes[i].scene_id));
  assert.equal(dryRun.headers['X-API-Key'], env.API_KEY);
  assert.equal(estimate.events.filter((e) => e.type === 'sheet-write').length, 0);
  const text = estimate.lastDialog.text;
  noStackTrace(text);
  assert.match(text, /3 scenes \(rows \d+-\d+, \d+\), 6 images/);
  const [, cost, price] = /Estimated cost: \$(\d+\.\d{4}) with .+ \(\$(\d+\.\d{4}) per image\)/.exec(text);
  assert.equal(Number(cost).toFixed(4), (Number(price) * 6).toFixed(4));
  assert.match(text, /Nothing has been sent/);

  // Generate: confirm with the estimate, mark queued, send, write job ids.
  h.answer({ button: 'YES', expect: /Generate 6 images for 3 scenes\?/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  noStackTrace(generate.lastDialog.text);
  const kinds = generate.events.map((e) =>
    e.type === 'fetch' ? `fetch:${e.json ? e.json.runMode : e.method}` : `write:${JSON.stringify(e.data.map((d) => d.values))}`);
  const queuedAt = kinds.findIndex((k) => k.startsWith('write:') && k.includes('"queued"'));
  const liveAt = kinds.indexOf('fetch:live');
  assert.ok(queuedAt >= 0 && liveAt > queuedAt, `rows must be marked queued before the live request: ${kinds}`);
  const live = generate.fetches.find((f) => f.json && f.json.runMode === 'live');
  assert.ok(live.headers['Idempotency-Key'] && live.headers['Idempotency-Key'].length <= 200);
  assert.equal(live.status, 202, live.response);
  const answer = JSON.parse(live.response);
  assert.match(generate.lastDialog.text, new RegExp(`Batch ${answer.batch_id} accepted: 3 scenes, 6 images`));
  const jobOf = Object.fromEntries(answer.jobs.map((j) => [j.scene_id, j.job_id]));

  const afterSubmit = await readRows(env, rows);
  for (const i of chosen) {
    assert.equal(afterSubmit[i].job_id, jobOf[scenes[i].scene_id]);
    assert.match(afterSubmit[i].status_img, /^(queued|generating|completed)/);
  }
  assert.equal(afterSubmit[2].status_img, '', 'an unselected row is not touched');
  assert.equal(afterSubmit[2].job_id, '');

  // Refresh status until every row is completed (bounded).
  const deadline = Date.now() + TIMEOUT_S * 1000;
  let current;
  for (;;) {
    const refresh = h.run('refreshStatus');
    assert.equal(refresh.thrown, null);
    assert.deepEqual(refresh.alerts, [], 'a clean refresh only shows a toast');
    current = await readRows(env, rows);
    if (chosen.every((i) => current[i].status_img === 'completed')) break;
    assert.ok(Date.now() < deadline, `rows not completed after ${TIMEOUT_S} s: ${JSON.stringify(current)}`);
    await sleep(1000);
  }

  for (const i of chosen) {
    const jobId = jobOf[scenes[i].scene_id];
    for (let n = 1; n <= 3; n++) {
      const cell = current[i][`nano_img_${n}`];
      if (n <= scenes[i].variants) {
        assert.match(cell, new RegExp(`^=IMAGE\\("${env.API_URL}/assets/${jobId}/${n}\\?size=thumb&sig=[0-9a-f]+"\\)$`));
      } else {
        assert.equal(cell, '');
      }
    }
  }

  // Refresh writes the same cells as the pipeline: wipe a row, refresh, it is back.
  const wiped = rows[0];
  const before = current[0];
  await writeCells(env, `E${wiped}:H${wiped}`, [['', '', '', '']]);
  h.select(rowsA1(wiped));
  const restore = h.run('refreshStatus');
  assert.equal(restore.thrown, null);
  assert.match(restore.toasts[0].message, /Refreshed 1 row \(selected rows\): completed 1; 1 row updated/);
  const [restored] = await readRows(env, [wiped]);
  assert.deepEqual(restored, before);

  // The sheet's links work: the durable link redirects to the thumbnail.
  const link = /=IMAGE\("(.+)"\)/.exec(restored.nano_img_1)[1];
  const image = await fetch(link);
  assert.equal(image.status, 200);
  assert.match(image.headers.get('content-type') || '', /^image\//);

  assert.deepEqual(h.answers, [], 'every scripted answer was used');
  assert.deepEqual(h.unexpected, []);
});
