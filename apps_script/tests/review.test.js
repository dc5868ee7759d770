'use strict';
/**
 * Pick (issue 24), against the local stack: Approve selected images, Reject
 * selected images and Mark selected image as final record the decision on the
 * server for the version each cell shows (GET /status shows it) and bring the row's
 * "review" cell in line; Send reviews of selected rows sends the decisions typed in
 * that cell, and refuses bad tokens by row; a decision on an image still being made
 * is refused by the server and said so by row. Deliver to Drive… is refused by the
 * real API while nothing is approved.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { stackEnv, sceneId, harnessFor, addSheet, rowsOf, readRows, sleep } = require('./stack');

const TIMEOUT_MS = 120000;
// A..K: the image cells are F, G, H; job_id I; review J; a column of the team's own, K.
const HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img',
  'nano_img_1', 'nano_img_2', 'nano_img_3', 'job_id', 'review', 'Subject',
];
const IMAGE = { 1: 'F', 2: 'G', 3: 'H' };

let env;

test.before(() => {
  env = stackEnv();
});

async function status(jobId) {
  const url = `${env.API_URL}/status/${encodeURIComponent(jobId)}`;
  const get = () => fetch(url, { headers: { 'X-API-Key': env.API_KEY } });
  // Once more if a kept-alive connection was closed by the server meanwhile.
  const res = await get().catch(get);
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

function versionOf(view, n, k = 1) {
  const variant = view.variants.find((v) => v.variant === n);
  return variant.versions.find((v) => v.version === k);
}

/** A folder of the local Drive stub, shared with the pipeline as a team's would be. */
function driveStub() {
  assert.ok(process.env.DRIVE_STUB_URL, 'DRIVE_STUB_URL: the local stack\'s Drive stub');
  return process.env.DRIVE_STUB_URL;
}

async function driveFolder(name) {
  const post = () => fetch(`${driveStub()}/_folders`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }),
  });
  const res = await post().catch(post);
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).id;
}

async function driveFiles(folder) {
  const url = `${driveStub()}/_files`;
  const all = (await (await fetch(url).catch(() => fetch(url))).json()).files;
  return all.filter((f) => (f.parents || []).includes(folder) && !f.trashed);
}

async function row(title, n) {
  return (await readRows(env, [n], 'FORMULA', title))[0];
}

/** Refresh status on the rows until `done` holds for each, bounded. */
async function refreshUntil(h, title, rows, done, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    h.select(rows.map((n) => `A${n}:J${n}`));
    const run = h.run('refreshStatus');
    assert.equal(run.thrown, null);
    const current = await readRows(env, rows, 'FORMULA', title);
    if (current.every(done)) return current;
    assert.ok(Date.now() < deadline, `${what} not reached: ${JSON.stringify(current)}`);
    await sleep(1000);
  }
}

/** The review and final requests a run sent, as [path tail, body, status]. */
function decisions(run) {
  return run.fetches
    .filter((f) => f.method === 'POST' && /(:review|:final)$/.test(f.url))
    .map((f) => [new URL(f.url).pathname.replace(/^\/jobs\/[^/:]+/, ''), f.json, f.status]);
}

test('Approve, Reject and Mark as final record the decision for the version each cell shows, and keep the review cell in line', { timeout: 240000 }, async () => {
  const scene = sceneId('review');
  const other = sceneId('review-bad');
  const title = await addSheet(env, 'Review', [HEADER, ...rowsOf(HEADER, [
    { scene_id: scene, prompt: `Three paper boats ${scene}`, variants: 3, Subject: 'boats' },
    // Never sent: its job id is made up, and nothing of it may reach the server.
    { scene_id: other, prompt: 'not sent', variants: 1, job_id: 'job_never_sent', review: '✓1 ok ✓9' },
  ])]);
  const h = harnessFor(env, { harness: { sheetTitle: title } });
  h.select('A2:J2');
  h.answer({ button: 'YES', expect: /Generate 3 images for 1 scene\?/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  await refreshUntil(h, title, [2], (r) => r.status_img === 'completed', 'a completed row');
  const jobId = (await row(title, 2)).job_id;
  assert.ok(jobId);

  // Deliver before anything is approved: the real API refuses it, naming "only".
  h.select('A2:J2');
  h.answer(
    { button: 'OK', text: 'https://drive.google.com/drive/folders/folder_Review1?usp=sharing', expect: /Step 1 of 3/ },
    { button: 'OK', text: '', expect: /Current: \{scene_id\}_\{variant\}_\{version\}/ },
    { button: 'YES', expect: /Yes: the approved images/ },
  );
  const early = h.run('deliverToDrive');
  assert.equal(early.thrown, null);
  assert.deepEqual(early.unexpected, []);
  const exported = early.fetches.filter((f) => /:export$/.test(f.url));
  assert.equal(exported.length, 1);
  assert.deepEqual(exported[0].json, {
    only: 'approved', name_template: '{scene_id}_{variant}_{version}', destination: 'drive', drive_folder_id: 'folder_Review1',
  });
  assert.equal(exported[0].status, 400, exported[0].response);
  assert.match(early.lastDialog.text, /^The server refused the delivery of batch \S+:\n\n {2}• Which images \(only\): no image of batch \S+ is approved yet/);
  assert.equal(h.documentProps.getProperty('AI_IMAGES_DRIVE_FOLDER'), null, 'a refused delivery is not remembered');

  // Approve images 1 and 3 (two cells of one selection).
  h.select('F2', 'H2');
  const approve = h.run('approveSelectedImages');
  assert.equal(approve.thrown, null);
  assert.deepEqual(decisions(approve), [
    ['/variants/1:review', { decision: 'approved', version: 1 }, 200],
    ['/variants/3:review', { decision: 'approved', version: 1 }, 200],
  ]);
  assert.equal(approve.lastDialog.text,
    `Row 2 (${scene}), image 1: approved.\nRow 2 (${scene}), image 3: approved.`);
  assert.equal((await row(title, 2)).review, '✓1 ✓3');
  let view = await status(jobId);
  for (const n of [1, 3]) {
    assert.equal(versionOf(view, n).review.decision, 'approved');
    assert.ok(versionOf(view, n).review.by, 'the server says who decided');
  }
  assert.equal(versionOf(view, 2).review ?? null, null, 'no decision on image 2 yet');

  // Reject image 2.
  h.select('G2');
  const reject = h.run('rejectSelectedImages');
  assert.deepEqual(decisions(reject), [['/variants/2:review', { decision: 'rejected', version: 1 }, 200]]);
  assert.equal((await row(title, 2)).review, '✓1 ✓3 ✗2');

  // Image 3 is the final one.
  h.select('H2');
  const final = h.run('markSelectedImageFinal');
  assert.equal(final.thrown, null);
  assert.deepEqual(decisions(final), [[':final', { variant: 3, version: 1 }, 200]]);
  assert.match(final.lastDialog.text, /image 3: the scene's final image \(approved\)\.$/);
  assert.equal((await row(title, 2)).review, '✓1 ✓3 ✗2 ★3');
  view = await status(jobId);
  assert.deepEqual([view.final.variant, view.final.version], [3, 1]);
  assert.ok(view.final.by);

  // Two cells of one row cannot both be final: nothing is sent.
  h.select('F2:G2');
  const two = h.run('markSelectedImageFinal');
  assert.deepEqual(decisions(two), []);
  assert.match(two.lastDialog.text, /A scene has one final image, but row 2 has 2 image cells selected/);

  // Rejecting the final image clears the pick: the cell loses its star.
  h.select('H2');
  const unpick = h.run('rejectSelectedImages');
  assert.deepEqual(decisions(unpick), [['/variants/3:review', { decision: 'rejected', version: 1 }, 200]]);
  assert.equal((await row(title, 2)).review, '✓1 ✗2 ✗3');
  view = await status(jobId);
  assert.equal(view.final ?? null, null);
  assert.equal(versionOf(view, 3).review.decision, 'rejected');

  // A hand-typed review cell, with the typed marks: approve 3, image 1 final.
  h.asAnother.write('J2', [['+3 *1']], title);
  h.select('A2:J2');
  const typed = h.run('sendReviewsOfSelectedRows');
  assert.equal(typed.thrown, null);
  assert.deepEqual(decisions(typed), [
    ['/variants/3:review', { decision: 'approved', version: 1 }, 200],
    [':final', { variant: 1, version: 1 }, 200],
  ]);
  assert.equal((await row(title, 2)).review, '✓1 ✓3 ★1', 'rewritten with the marks the script writes');
  view = await status(jobId);
  assert.deepEqual([view.final.variant, view.final.version], [1, 1]);
  assert.equal(versionOf(view, 3).review.decision, 'approved');

  // "+2 -3" typed in Sheets becomes the formula =+2 -3: read as typed.
  h.asAnother.write('J2', [['=+2 -3']], title);
  h.select('A2:J2');
  const formula = h.run('sendReviewsOfSelectedRows');
  assert.equal(formula.thrown, null);
  assert.deepEqual(decisions(formula), [
    ['/variants/3:review', { decision: 'rejected', version: 1 }, 200],
    ['/variants/2:review', { decision: 'approved', version: 1 }, 200],
  ]);
  assert.equal((await row(title, 2)).review, '✓1 ✓2 ✗3 ★1', 'the final pick stays (the server\'s answer)');

  // Deliver the approved images (1, the final one, and 2) to a Drive folder of the
  // local Drive stub, named with a column of the row.
  const folder = await driveFolder(`Review ${scene}`);
  h.select('A2:K2');
  h.answer(
    { button: 'OK', text: `https://drive.google.com/drive/folders/${folder}` },
    { button: 'OK', text: '{Subject}_{scene_id}_{variant}_v{version}' },
    { button: 'YES' },
  );
  const deliver = h.run('deliverToDrive');
  assert.equal(deliver.thrown, null);
  assert.deepEqual(deliver.unexpected, []);
  assert.deepEqual(deliver.fetches.find((f) => /:export$/.test(f.url)).json, {
    only: 'approved', name_template: '{Subject}_{scene_id}_{variant}_v{version}', destination: 'drive', drive_folder_id: folder,
  });
  const batchId = (await status(jobId)).batch_id;
  assert.match(deliver.lastDialog.text, new RegExp(`^Batch ${batchId}: 2 approved images delivered to https://drive\.google\.com/drive/folders/${folder}\n {2}2 files added, 0 files already there\.`));
  const names = (await driveFiles(folder)).map((f) => f.name).sort();
  assert.deepEqual(names.filter((n) => !n.startsWith('manifest_')), [`boats_${scene}_1_v1.png`, `boats_${scene}_2_v1.png`]);
  assert.equal(names.filter((n) => n.startsWith('manifest_')).length, 2, 'a manifest as CSV and JSON');

  // Again, the final image only (folder and names kept): it is there already.
  h.answer({ button: 'OK', text: '' }, { button: 'OK', text: '' }, { button: 'NO' });
  const finalOnly = h.run('deliverToDrive');
  assert.equal(finalOnly.thrown, null);
  assert.match(finalOnly.lastDialog.text, /: 1 final image delivered to .+\n {2}0 files added, 1 file already there\./);
  assert.equal((await driveFiles(folder)).filter((f) => !f.name.startsWith('manifest_')).length, 2);

  // Bad tokens are refused by row before anything is sent; so is a typed "+2" that
  // Sheets turned into the number 2.
  h.asAnother.write('J2', [['+2']], title);
  h.select('A2:K3');
  const bad = h.run('sendReviewsOfSelectedRows');
  assert.equal(bad.thrown, null);
  assert.deepEqual(bad.fetches, [], 'nothing reaches the server');
  assert.equal(bad.lastDialog.text.split('\n\nTokens:')[0], [
    'Nothing was sent: 3 problems in the review cells of the selected rows.',
    '',
    'Row 2: the review cell holds the number 2 (Sheets turns a typed "+2" into a number): write ✓2 instead, or type an apostrophe first (\'+2).',
    'Row 3: "ok" is not a review token.',
    'Row 3: "✓9": the sheet has no image column nano_img_9.',
  ].join('\n'));
  assert.equal((await row(title, 3)).review, '✓1 ok ✓9', 'the cell stays as typed');

  // Whole rows selected: the cells that show no image (row 3's) are skipped.
  h.asAnother.write('J2', [['']], title);
  h.select('F2:H3');
  const rows = h.run('approveSelectedImages');
  assert.equal(rows.thrown, null);
  assert.deepEqual(decisions(rows), [1, 2, 3].map((n) => [`/variants/${n}:review`, { decision: 'approved', version: 1 }, 200]));
  assert.ok(!rows.fetches.some((f) => f.url.includes('job_never_sent')));
  assert.equal(rows.lastDialog.text, [
    ...[1, 2, 3].map((n) => `Row 2 (${scene}), image ${n}: approved.`),
    ...[1, 2, 3].map((n) => `Row 3 (${other}), image ${n}: the cell shows no image; skipped.`),
  ].join('\n'));
  assert.equal((await row(title, 2)).review, '✓1 ✓2 ✓3 ★1');
});

test('a decision on an image still being made is refused by the server and said so by row', { timeout: 120000 }, async () => {
  const scene = sceneId('review-early');
  const title = await addSheet(env, 'Review', [HEADER, ...rowsOf(HEADER, [
    { scene_id: scene, prompt: `An overnight lantern ${scene}`, variants: 1 },
  ])]);
  const h = harnessFor(env, { harness: { sheetTitle: title } });
  // The economy lane: made in a Gemini batch, seconds away at the earliest.
  h.select('A2:J2');
  h.answer({ button: 'NO', expect: /No: economy lane/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.match(generate.lastDialog.text, /economy lane/);

  h.select(`${IMAGE[1]}2`);
  const approve = h.run('approveSelectedImages');
  assert.equal(approve.thrown, null);
  assert.deepEqual(decisions(approve), [['/variants/1:review', { decision: 'approved', version: 1 }, 409]]);
  assert.match(approve.lastDialog.text,
    new RegExp(`^Row 2 \\(${scene}\\), image 1: not recorded — version 1 of variant 1 has no finished image to review \\(\\w+\\)\\. An image that is still being made cannot be reviewed yet`));
  assert.equal((await row(title, 2)).review, '', 'nothing recorded, nothing written');

  // Typed in the review cell, the same.
  h.asAnother.write('J2', [['★1']], title);
  h.select('A2:J2');
  const typed = h.run('sendReviewsOfSelectedRows');
  assert.deepEqual(decisions(typed), [[':final', { variant: 1, version: 1 }, 409]]);
  assert.match(typed.lastDialog.text, /^Row 2 \(.+\), image 1: not recorded — version 1 of variant 1 has no finished image/);
  assert.equal((await row(title, 2)).review, '★1');
});
