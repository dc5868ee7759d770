'use strict';
/**
 * Rows are checked before anything is sent: each problem names its row and
 * field, and if any row is wrong no row reaches the server (a counting proxy
 * in front of the real API sees only GET /limits, which the rows are checked
 * against) and no row is written.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./servers');
const {
  stackEnv, sceneId, addScenes, appendRows, readRows, rowsA1, harnessFor, withoutLimits,
} = require('./stack');

let env;
let proxy;
let limits;

test.before(async () => {
  env = stackEnv();
  proxy = await startServer({ upstream: env.API_URL });
  // What the local API accepts: the messages name its limits, whatever they are.
  const res = await fetch(`${env.API_URL}/limits`, { headers: { 'X-API-Key': env.API_KEY } });
  assert.equal(res.status, 200);
  limits = await res.json();
});

test.after(async () => {
  await proxy.close();
});

function noStackTrace(text) {
  assert.doesNotMatch(text, /\n\s+at .+:\d+/, `a stack trace was shown:\n${text}`);
}

test('invalid rows are named by row and field, and nothing is sent', async () => {
  const good = sceneId('valid');
  const scenes = [
    { scene_id: good, prompt: 'A fine scene', variants: 1 },
    { scene_id: '', prompt: 'No id', variants: 1 },
    { scene_id: `bad id!${sceneId('x')}`, prompt: 'Spaces', variants: 1 },
    { scene_id: good, prompt: 'Same id again', variants: 1 },
    { scene_id: sceneId('noprompt'), prompt: '', variants: 1 },
    { scene_id: sceneId('toomany'), prompt: 'Too many', variants: limits.max_variants + 1 },
    { scene_id: sceneId('long'), prompt: 'x'.repeat(limits.max_prompt_chars + 1), variants: 1 },
    { scene_id: sceneId('word'), prompt: 'Not a number', variants: 'two' },
    { scene_id: sceneId('half'), prompt: 'Not whole', variants: 2.5 },
    { scene_id: sceneId('ftp'), prompt: 'Bad ref', variants: 1, ref_pack_public_url: 'ftp://refs/pack.zip' },
  ];
  const max = limits.max_variants;
  const rows = await addScenes(env, scenes);
  const before = await readRows(env, rows);
  const h = harnessFor(env, { apiUrl: proxy.url });
  h.select(rowsA1(rows[0], rows[rows.length - 1]));

  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    const run = h.run(action);
    assert.equal(run.thrown, null);
    assert.equal(run.alerts.length, 1);
    const text = run.alerts[0].text;
    noStackTrace(text);
    assert.match(text, /^Nothing was sent: 9 problems in the selected rows\./);
    const expected = [
      `Row ${rows[1]}: scene_id is empty.`,
      `Row ${rows[2]}: scene_id "bad id!`,
      `Row ${rows[3]}: scene_id "${good}" is also in row ${rows[0]} of the selection`,
      `Row ${rows[4]}: prompt is empty.`,
      `Row ${rows[5]}: variants must be a whole number from 1 to ${max} (found "${max + 1}").`,
      `Row ${rows[6]}: prompt is ${limits.max_prompt_chars + 1} characters long; the limit is ${limits.max_prompt_chars}.`,
      `Row ${rows[7]}: variants must be a whole number from 1 to ${max} (found "two").`,
      `Row ${rows[8]}: variants must be a whole number from 1 to ${max} (found "2.5").`,
      `Row ${rows[9]}: ref_pack_public_url must be an https:// link, a gs://bucket/object path, or an earlier image as scene:<scene_id>#<n> or job:<job_id>#<n> (found "ftp://refs/pack.zip").`,
    ];
    for (const line of expected) assert.ok(text.includes(line), `missing "${line}" in:\n${text}`);
    assert.ok(!text.includes(`Row ${rows[0]}:`), 'the valid row is not reported');
    assert.deepEqual(withoutLimits(run.fetches), [], 'the script asked for nothing but the limits');
    assert.equal(run.events.filter((e) => e.type === 'sheet-write').length, 0);
  }
  const seen = await proxy.log();
  assert.deepEqual(withoutLimits(seen), [], 'the server saw no request but GET /limits');
  assert.equal(seen.length, 1, 'the limits were asked once: the second run took them from the cache');
  assert.deepEqual(await readRows(env, rows), before, 'no row was changed');
});

test('a scene_id used by another row of the sheet is refused', async () => {
  const id = sceneId('twice');
  const [first] = await addScenes(env, [{ scene_id: id, prompt: 'First', variants: 1 }]);
  const [second] = await addScenes(env, [{ scene_id: id, prompt: 'Second', variants: 1 }]);
  const h = harnessFor(env, { apiUrl: proxy.url });
  h.select(rowsA1(second));
  const run = h.run('estimateSelectedRows');
  assert.match(run.lastDialog.text, new RegExp(`Row ${second}: scene_id "${id}" also appears in row ${first}; results go to the first row`));
  assert.deepEqual(withoutLimits(run.fetches), []);
});

test('no rows selected: a clear message and nothing sent', async () => {
  const [row] = await addScenes(env, [{ scene_id: sceneId('unselected'), prompt: 'x', variants: 1 }]);
  const h = harnessFor(env, { apiUrl: proxy.url });
  const cases = [
    [],                        // no selection at all
    ['A1:I1'],                 // only the header
    [`A${row + 5000}:I${row + 5001}`],  // below the data
  ];
  for (const selection of cases) {
    h.select(selection);
    for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
      const run = h.run(action);
      assert.equal(run.thrown, null);
      assert.match(run.lastDialog.text, /^No scene rows are selected\./, `selection ${selection}`);
      assert.deepEqual(run.fetches, [], 'not even the limits are asked');
    }
  }
  assert.deepEqual(withoutLimits(await proxy.log()), []);
});

test('rows without scene data inside the selection are skipped, empty variants mean 1', async () => {
  const id = sceneId('blank');
  // A row whose scene cells are empty (only a note in status_img): not a gap in the
  // shared sheet, which later appends would fill, but nothing to send either.
  const rows = await appendRows(env, [[id, 'Only one', '', ''], ['', '', '', '', 'a note']]);
  const [after] = await addScenes(env, [{ scene_id: sceneId('after'), prompt: 'After', variants: 2 }]);
  assert.equal(after, rows[1] + 1);
  const h = harnessFor(env, { apiUrl: proxy.url });
  h.select(rowsA1(rows[0], after));
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  const sent = withoutLimits(run.fetches);
  assert.equal(sent.length, 1);
  const items = sent[0].json.items;
  assert.equal(items.length, 2);
  assert.equal(items[0].scene_id, id);
  assert.equal(items[0].variants, 1);
  assert.ok(!('ref_pack_public_url' in items[0]), 'an empty ref is not sent');
  assert.match(run.lastDialog.text, new RegExp(`2 scenes \\(rows ${rows[0]}, ${after}\\), 3 images`));
});

test('a sheet without the scene columns is refused with the missing names', async () => {
  const title = `Notes ${sceneId('sheet')}`;
  const res = await fetch(`${env.SHEETS_API_URL}/v4/spreadsheets/${env.SPREADSHEET_ID}:batchUpdate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ requests: [{ addSheet: { properties: { title } } }] }),
  });
  assert.equal(res.status, 200);
  await fetch(`${env.SHEETS_API_URL}/v4/spreadsheets/${env.SPREADSHEET_ID}/values/${encodeURIComponent(`'${title}'!A1`)}?valueInputOption=RAW`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ values: [['scene_id', 'prompt', 'notes'], ['a', 'b', 'c']] }),
  });
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { sheetTitle: title, selection: ['A2:C2'] } });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, new RegExp(`The sheet "${title}" has no column "variants", "status_img", "job_id" in row 1`));
  assert.deepEqual(run.fetches, []);
});

test('missing settings say where to set them, before any request', async () => {
  const [row] = await addScenes(env, [{ scene_id: sceneId('nosettings'), prompt: 'x', variants: 1 }]);
  const noUrl = harnessFor(env, { harness: { selection: [rowsA1(row)] } });
  noUrl.scriptProps.deleteAllProperties();
  let run = noUrl.run('estimateSelectedRows');
  assert.match(run.lastDialog.text, /^The API URL is not set yet\.[\s\S]*AI images → Settings/);
  assert.deepEqual(run.fetches, []);

  const noKey = harnessFor(env, { apiUrl: proxy.url, apiKey: null, harness: { selection: [rowsA1(row)] } });
  run = noKey.run('generateSelectedRows');
  assert.match(run.lastDialog.text, /^No API key is set for you yet\.[\s\S]*AI images → Settings/);
  assert.deepEqual(run.fetches, []);
});

test('answering Cancel sends nothing and leaves the rows alone', async () => {
  const rows = await addScenes(env, [{ scene_id: sceneId('no'), prompt: 'x', variants: 1 }]);
  const before = await readRows(env, rows);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0])] } });
  h.answer({ button: 'CANCEL', expect: /Yes: live lane, \$[0-9.]+[\s\S]*No: economy lane, \$[0-9.]+ \(half price\)/ });
  const run = h.run('generateSelectedRows');
  assert.equal(run.lastDialog.text, 'Nothing was sent.');
  assert.deepEqual(withoutLimits(run.fetches).map((f) => f.json.runMode), ['dry_run']);
  assert.deepEqual(await readRows(env, rows), before);
  assert.deepEqual(await proxy.batches('live'), []);
});

test('while another Generate holds the document lock, nothing is marked or sent', async () => {
  const rows = await addScenes(env, [{ scene_id: sceneId('locked'), prompt: 'x', variants: 1 }]);
  const before = await readRows(env, rows);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0])] } });
  h.holdDocumentLock();
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.match(run.lastDialog.text, /Another "Generate" from this spreadsheet is still running[\s\S]*Nothing was sent\./);
  assert.deepEqual(withoutLimits(run.fetches).map((f) => f.json.runMode), ['dry_run']);
  assert.deepEqual(await readRows(env, rows), before);
  assert.deepEqual(await proxy.batches('live'), []);
});

// Last: it sends a batch, which the tests above check never happens.
test('answering No sends the rows in the economy lane', async () => {
  const rows = await addScenes(env, [{ scene_id: sceneId('eco'), prompt: 'x', variants: 2 }]);
  const h = harnessFor(env, { apiUrl: proxy.url, harness: { selection: [rowsA1(rows[0])] } });
  h.answer({ button: 'NO', expect: /No: economy lane/ });
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /in the economy lane \(results within 24 hours\)/);
  const live = await proxy.batches('live');
  assert.equal(live.length, 1);
  assert.equal(live[0].lane, 'economy');
  const [row] = await readRows(env, rows);
  assert.match(row.job_id, /^job_/);
});
