'use strict';
/**
 * The iterate menu items end to end against the local stack: Cancel selected
 * rows, Re-roll selected image, Edit selected image…, Download batch, and the
 * batch's style references from the named range "style_refs".
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { stackEnv, sceneId, addScenes, readRows, rowsA1, harnessFor, sleep } = require('./stack');

const TIMEOUT_MS = 120000;

async function stub(path, body) {
  const res = await fetch(`${process.env.GEMINI_STUB_URL}/_stub/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, `stub ${path}: ${await res.text()}`);
}

/** Refresh status until every row passes `done`, bounded. */
async function refreshUntil(h, env, rows, done, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    h.select(rows.map((row) => rowsA1(row)));
    const run = h.run('refreshStatus');
    assert.equal(run.thrown, null);
    const current = await readRows(env, rows);
    if (current.every(done)) return current;
    assert.ok(Date.now() < deadline, `${what} not reached: ${JSON.stringify(current)}`);
    await sleep(1000);
  }
}

function generate(h, rows, images) {
  h.select(rows.map((row) => rowsA1(row)));
  h.answer({ button: 'YES', expect: new RegExp(`Generate ${images} images?`) });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.deepEqual(run.unexpected, []);
  return run;
}

test('Cancel selected rows stops their jobs; the rows read cancelled', { timeout: 240000 }, async () => {
  const env = stackEnv();
  const slow = `slow cancel ${sceneId('c')}`;
  await stub('script', { rules: [{ match: `^${slow}`, mode: 'timeout', timeout_s: 5 }] });
  try {
    const rows = await addScenes(env, [
      { scene_id: sceneId('cancel'), prompt: `${slow} one`, variants: 2 },
      { scene_id: sceneId('cancel'), prompt: `${slow} two`, variants: 2 },
    ]);
    const h = harnessFor(env);
    generate(h, rows, 4);

    h.select(rowsA1(rows[0], rows[1]));
    h.answer({ button: 'YES', expect: /Cancel the jobs of 2 rows/ });
    const run = h.run('cancelSelectedRows');
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, []);
    const cancels = run.fetches.filter((f) => f.method === 'POST' && /\/jobs\/[^/]+:cancel$/.test(f.url));
    assert.equal(cancels.length, 2);
    assert.ok(cancels.every((f) => f.status === 200 && f.headers['X-API-Key'] === env.API_KEY));
    assert.match(run.lastDialog.text, new RegExp(`^Row ${rows[0]}: cancel`));

    const done = await refreshUntil(h, env, rows, (r) => r.status_img.startsWith('cancelled'), 'cancelled rows');
    done.forEach((r) => assert.match(r.status_img, /^cancelled \(\d\/2 kept\)$/));

    // Cancelling again says so and changes nothing.
    h.answer({ button: 'YES' });
    const again = h.run('cancelSelectedRows');
    assert.match(again.lastDialog.text, /was already cancelled/);

    // "No" sends nothing.
    h.answer({ button: 'NO' });
    const no = h.run('cancelSelectedRows');
    assert.equal(no.fetches.length, 0);
    assert.match(no.lastDialog.text, /Nothing was cancelled/);
  } finally {
    await stub('script', { rules: [] });
  }
});

test('Re-roll and Edit the selected image make new versions; Download batch gives the zip; style_refs go with a batch', { timeout: 300000 }, async () => {
  const env = stackEnv();
  const scene = sceneId('iter');
  const [row] = await addScenes(env, [{ scene_id: scene, prompt: `A red kite ${scene}`, variants: 1 }]);
  const h = harnessFor(env);
  generate(h, [row], 1);
  await refreshUntil(h, env, [row], (r) => r.status_img === 'completed', 'a completed row');

  // Re-roll: the selection is the image cell.
  h.select(`F${row}`);
  h.answer({ button: 'YES', expect: /new version of image 1 of/ });
  const reroll = h.run('rerollSelectedImage');
  assert.equal(reroll.thrown, null);
  assert.deepEqual(reroll.unexpected, []);
  const sent = reroll.fetches.filter((f) => /\/variants\/1:reroll$/.test(f.url));
  assert.equal(sent.length, 1);
  assert.equal(sent[0].status, 202, sent[0].response);
  assert.ok(sent[0].headers['Idempotency-Key']);
  assert.deepEqual(sent[0].json, {});
  assert.match(reroll.lastDialog.text, /^Version 2 of image 1 of .+ is being made/);

  // A second click right away sends nothing again.
  h.answer({ button: 'YES' });
  const twice = h.run('rerollSelectedImage');
  assert.equal(twice.fetches.filter((f) => /:reroll$/.test(f.url)).length, 0);
  assert.match(twice.lastDialog.text, /was just sent \(version 2/);
  await refreshUntil(h, env, [row], (r) => r.nano_img_1.includes('version=2'), 'version 2 in the cell');

  // A cell that is not an image is refused before anything is sent.
  h.select(`B${row}`);
  const wrong = h.run('rerollSelectedImage');
  assert.equal(wrong.fetches.length, 0);
  assert.match(wrong.lastDialog.text, /not an image cell/);

  // Edit: the instruction goes with the current image.
  h.select(`F${row}`);
  h.answer({ button: 'OK', text: 'make it night', expect: /What should change in image 1/ });
  const edit = h.run('editSelectedImage');
  assert.equal(edit.thrown, null);
  const edited = edit.fetches.filter((f) => /\/variants\/1:reroll$/.test(f.url));
  assert.deepEqual(edited.map((f) => f.json), [{ instruction: 'make it night' }]);
  assert.match(edit.lastDialog.text, /^Version 3 of image 1/);
  await refreshUntil(h, env, [row], (r) => r.nano_img_1.includes('version=3'), 'version 3 in the cell');

  // Download batch: a link to the zip in a dialog; the link works.
  h.select(rowsA1(row));
  const download = h.run('downloadBatch');
  assert.equal(download.thrown, null);
  assert.deepEqual(download.unexpected, []);
  assert.ok(download.fetches.some((f) => f.method === 'POST' && /\/batches\/[^/]+:export$/.test(f.url)));
  const modal = download.dialogs.find((d) => d.kind === 'modal');
  assert.ok(modal, JSON.stringify(download.dialogs));
  assert.match(modal.text, /3 images at full size/);
  const link = /href="([^"]+)"/.exec(modal.text)[1].replace(/&amp;/g, '&');
  const zip = Buffer.from(await (await fetch(link)).arrayBuffer());
  assert.equal(zip.subarray(0, 2).toString(), 'PK');
  for (const name of [`${scene}/var_1.png`, `${scene}/var_1_v2.png`, `${scene}/var_1_v3.png`, 'manifest.csv']) {
    assert.ok(zip.includes(Buffer.from(name)), `the zip holds ${name}`);
  }

  // style_refs: a named range (here on another sheet) is sent with the batch.
  const refsSheet = `Refs ${scene}`;
  const base = `${env.SHEETS_API_URL}/v4/spreadsheets/${encodeURIComponent(env.SPREADSHEET_ID)}`;
  await fetch(`${base}:batchUpdate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ requests: [{ addSheet: { properties: { title: refsSheet } } }] }),
  });
  await fetch(`${base}/values/${encodeURIComponent(`'${refsSheet}'!A1`)}?valueInputOption=RAW`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ values: [[`scene:${scene}#1`]] }),
  });
  const [next] = await addScenes(env, [{ scene_id: sceneId('iter-styled'), prompt: `The kite again ${scene}`, variants: 1 }]);
  const styled = harnessFor(env, { harness: { namedRanges: { style_refs: `'${refsSheet}'!A1:A2` } } });
  const run = generate(styled, [next], 1);
  const live = run.fetches.find((f) => f.json && f.json.runMode === 'live');
  assert.deepEqual(live.json.style_refs, [`scene:${scene}#1`]);
  assert.equal(live.status, 202, live.response);
  await refreshUntil(styled, env, [next], (r) => r.status_img === 'completed', 'the styled row');
});
