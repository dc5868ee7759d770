'use strict';
/**
 * Promote (issue 24) and drafts, against the local stack through a counting proxy:
 * Estimate shows what one delivered image costs both ways (the plan's `delivered`),
 * "Generate drafts of selected rows" sends `drafts: true`, and "Promote selected
 * image…" offers the larger sizes of the image's model (a draft's final model) and
 * sends the size and the version the cell shows, with an Idempotency-Key.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer, batchAnswers } = require('./servers');
const { stackEnv, sceneId, harnessFor, addSheet, rowsOf, readRows, sleep, fieldsOf } = require('./stack');

const TIMEOUT_MS = 120000;
const HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img',
  'nano_img_1', 'nano_img_2', 'job_id', 'review',
];

let env;
let proxy;

test.before(async () => {
  env = stackEnv();
  proxy = await startServer({ upstream: env.API_URL });
});

test.after(async () => {
  await proxy.close();
});

async function status(jobId) {
  const url = `${env.API_URL}/status/${encodeURIComponent(jobId)}`;
  const get = () => fetch(url, { headers: { 'X-API-Key': env.API_KEY } });
  // Once more if a kept-alive connection was closed by the server meanwhile.
  const res = await get().catch(get);
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

async function refreshUntil(h, title, rows, done, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    h.select(rows.map((n) => `A${n}:I${n}`));
    const run = h.run('refreshStatus');
    assert.equal(run.thrown, null);
    const current = await readRows(env, rows, 'FORMULA', title);
    if (current.every(done)) return current;
    assert.ok(Date.now() < deadline, `${what} not reached: ${JSON.stringify(current)}`);
    await sleep(1000);
  }
}

function promotions(run) {
  return run.fetches.filter((f) => f.method === 'POST' && /:promote$/.test(f.url));
}

test('drafts: the Estimate shows both costs per delivered image, Generate drafts sends drafts: true, and a promotion sends the size and version with a key', { timeout: 300000 }, async () => {
  const plain = sceneId('promote');
  const draft = sceneId('draft');
  const title = await addSheet(env, 'Promote', [HEADER, ...rowsOf(HEADER, [
    { scene_id: plain, prompt: `A copper kettle ${plain}`, variants: 1 },
    { scene_id: draft, prompt: `A glass kettle ${draft}`, variants: 2 },
  ])]);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { sheetTitle: title } });

  // Estimate: what one delivered image costs, each way, as the server planned it.
  h.select('A2:I3');
  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  const plan = (await proxy.batches('dry_run')).pop().response;
  assert.ok(plan.delivered, JSON.stringify(plan));
  const { every_image_final_usd: every, drafts_then_promote_usd: drafted, saving } = plan.delivered;
  assert.ok(estimate.lastDialog.text.includes([
    'Per delivered image (one pick per scene):',
    `  every image made final: $${every}`,
    `  drafts, then the pick promoted: $${drafted} ` + (Number(drafted) < Number(every)
      ? `(saves ${saving})` : '(no saving for these rows: making every image final costs less)'),
  ].join('\n')), estimate.lastDialog.text);

  // Generate the first row as it is, the second as drafts.
  h.select('A2:I2');
  h.answer({ button: 'YES', expect: /^Generate 1 image for 1 scene\?/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  h.select('A3:I3');
  h.answer({ button: 'YES', expect: /^Generate 2 draft images for 1 scene\?\nDrafts are made at the cheapest model and size/ });
  const drafts = h.run('generateDraftsOfSelectedRows');
  assert.equal(drafts.thrown, null);
  assert.deepEqual(drafts.unexpected, []);
  const sent = drafts.fetches.filter((f) => f.json && f.json.runMode);
  assert.deepEqual(sent.map((f) => [f.json.runMode, f.json.drafts]), [['dry_run', true], ['live', true]]);
  assert.equal(sent[1].status, 202, sent[1].response);
  const plainSent = generate.fetches.filter((f) => f.json && f.json.runMode);
  assert.ok(plainSent.every((f) => !('drafts' in f.json)), 'plain Generate sends no drafts flag');
  const draftPlan = JSON.parse(sent[0].response);
  assert.match(drafts.lastDialog.text, /^Batch \S+ accepted: 1 scene, 2 draft images/);

  const [done] = await refreshUntil(h, title, [2, 3], (r) => r.status_img === 'completed', 'completed rows');
  const draftRow = (await readRows(env, [3], 'FORMULA', title))[0];
  const draftView = await status(draftRow.job_id);
  assert.equal(draftView.draft, true);
  assert.equal(draftView.final_model, draftPlan.jobs[0].final_model);
  assert.equal(draftView.model, draftPlan.jobs[0].model, 'made with the draft model');

  // Promote the plain image (1K with the deployment's model): larger sizes only.
  const limits = await (await fetch(`${env.API_URL}/limits`, { headers: { 'X-API-Key': env.API_KEY } })).json();
  const model = limits.default_model;
  const larger = limits.models[model].image_sizes.filter((s) => ['2K', '4K'].includes(s));
  assert.ok(larger.length, `${model} makes 2K or 4K`);
  h.select('F2');
  h.answer({ button: 'OK', text: larger[0].toLowerCase(), expect: new RegExp(`Type the size: ${larger.join(' or ')} \\(leave empty for ${larger[0]}\\)`) });
  const promote = h.run('promoteSelectedImage');
  assert.equal(promote.thrown, null);
  assert.deepEqual(promote.unexpected, []);
  const [asked] = promotions(promote);
  assert.deepEqual(asked.json, { image_size: larger[0], version: 1 });
  assert.ok(asked.headers['Idempotency-Key'], 'sent with an Idempotency-Key');
  assert.equal(asked.status, 202, asked.response);
  const accepted = JSON.parse(asked.response);
  assert.equal(accepted.kind, 'promote');
  assert.ok(promote.lastDialog.text.startsWith(`Version ${accepted.version} of image 1 of ${plain} ` +
    `(row 2) is being made at ${larger[0]} with ${model}, from version 1 ($${accepted.price_per_image_usd}).`),
  promote.lastDialog.text);

  // A second click right away sends nothing again.
  h.answer({ button: 'OK', text: larger[0] });
  const twice = h.run('promoteSelectedImage');
  assert.deepEqual(promotions(twice), []);
  assert.match(twice.lastDialog.text, /was just sent \(version 2/);

  // Promote the draft's second image: with the final model, at its final size by default.
  h.select('G3');
  h.answer({ button: 'OK', text: '', expect: new RegExp(`It is a draft .*made again with the final model, ${draftView.final_model}\\.[\\s\\S]*leave empty for ${draftView.final_size}\\)`) });
  const promoteDraft = h.run('promoteSelectedImage');
  assert.equal(promoteDraft.thrown, null);
  const [draftAsked] = promotions(promoteDraft);
  assert.deepEqual(draftAsked.json, { image_size: draftView.final_size, version: 1 });
  assert.equal(draftAsked.status, 202, draftAsked.response);

  // When made, the cells show the promoted versions, at their size and model.
  await refreshUntil(h, title, [2, 3], (r) => (r.scene_id === plain ? r.nano_img_1 : r.nano_img_2).includes('version=2'), 'promoted versions');
  const promoted = (await status(done.job_id)).variants[0].versions[1];
  assert.equal(promoted.kind, 'promote');
  assert.equal(promoted.image_size, larger[0]);
  const draftPromoted = (await status(draftRow.job_id)).variants[1].versions[1];
  assert.equal(draftPromoted.model, draftView.final_model);

  // The cell shows version 2 now: decisions are about it.
  h.select('F2');
  const approve = h.run('approveSelectedImages');
  const reviewed = approve.fetches.find((f) => /:review$/.test(f.url));
  assert.deepEqual(reviewed.json, { decision: 'approved', version: 2 });
  assert.equal(reviewed.status, 200, reviewed.response);
  assert.match(approve.lastDialog.text, /image 1 \(version 2\): approved\.$/);
  assert.equal((await readRows(env, [2], 'FORMULA', title))[0].review, '✓1', 'the version the cell shows');
  h.select('F2');
  const pick = h.run('markSelectedImageFinal');
  assert.deepEqual(pick.fetches.find((f) => /:final$/.test(f.url)).json, { variant: 1, version: 2 });
  let view = await status(done.job_id);
  assert.equal(view.variants[0].versions[1].review.decision, 'approved');
  assert.deepEqual([view.final.variant, view.final.version], [1, 2]);

  // Nothing larger than 4K: refused before anything is sent. Promoting the final
  // image moves the pick to the larger one once it is made.
  if (larger.includes('4K')) {
    h.select('F2');
    h.answer({ button: 'OK', text: '4K', expect: /Type the size: 4K \(leave empty for 4K\)/ });
    const top = h.run('promoteSelectedImage');
    assert.deepEqual(promotions(top).map((f) => [f.json, f.status]), [[{ image_size: '4K', version: 2 }, 202]]);
    await refreshUntil(h, title, [2], (r) => r.nano_img_1.includes('version=3'), 'the 4K version');
    view = await status(done.job_id);
    assert.deepEqual([view.final.variant, view.final.version], [1, 3], 'the final pick moved to the 4K image');
    h.select('F2');
    const last = h.run('promoteSelectedImage');
    assert.deepEqual(promotions(last), []);
    assert.match(last.lastDialog.text, /was made at 4K, the largest size .* makes/);
  }
});

test('the Estimate and Generate drafts show what drafts save per delivered image; only drafts send the flag', { timeout: 60000 }, async () => {
  const rows = [{ scene_id: sceneId('saving'), prompt: 'A tin robot', variants: 4 }];
  const title = await addSheet(env, 'Drafts', [HEADER, ...rowsOf(HEADER, rows)]);
  const items = [{ scene_id: rows[0].scene_id, prompt: rows[0].prompt, fields: fieldsOf(HEADER, rows[0]), variants: 4 }];
  const delivered = { every_image_final_usd: '0.1340', drafts_then_promote_usd: '0.0610', saving: '54 %' };
  const [dry, live] = batchAnswers(items, 'bat_drafts');
  const draftJobs = dry.body.jobs.map((job) => ({
    ...job, model: 'gemini-2.5-flash-image', image_size: '1K', final_model: 'gemini-3-pro-image', final_size: '2K',
  }));
  const canned = await startServer({
    routes: [
      { ...dry, body: { ...dry.body, delivered, jobs: draftJobs } },
      { ...live, body: { ...live.body, delivered } },
    ],
  });
  try {
    const h = harnessFor(env, { apiUrl: canned.url, harness: { sheetTitle: title, selection: ['A2:I2'] } });
    const estimate = h.run('estimateSelectedRows');
    assert.equal(estimate.thrown, null);
    const text = estimate.lastDialog.text;
    assert.ok(text.includes([
      '  • row 2, ' + rows[0].scene_id + ': 4 drafts, $' + dry.body.jobs[0].estimated_cost_usd +
        ' (gemini-2.5-flash-image 1K; picks promoted to gemini-3-pro-image 2K)',
      '',
      'Per delivered image (one pick per scene):',
      '  every image made final: $0.1340',
      '  drafts, then the pick promoted: $0.0610 (saves 54 %)',
    ].join('\n')), text);
    assert.match(text, /^1 scene \(row 2\), 4 images\nEstimated cost: \$\S+ as drafts/);

    h.answer({ button: 'YES', expect: /Generate 4 draft images for 1 scene\?[\s\S]*saves 54 %/ });
    const drafts = h.run('generateDraftsOfSelectedRows');
    assert.equal(drafts.thrown, null);
    assert.deepEqual(drafts.unexpected, []);
    const batches = await canned.batches();
    // Every row carries its columns (not those the pipeline or the script writes: review).
    for (const batch of batches) assert.deepEqual(batch.body.items, items);
    const sent = batches.map((b) => [b.runMode, b.body.drafts]);
    assert.deepEqual(sent, [['dry_run', undefined], ['dry_run', true], ['live', true]],
      'Estimate asks without the flag; Generate drafts sends it in its dry run and its batch');
    assert.match(drafts.lastDialog.text, /^Batch bat_drafts accepted: 1 scene, 4 draft images/);
  } finally {
    await canned.close();
  }
});
