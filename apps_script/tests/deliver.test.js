'use strict';
/**
 * Deliver to Drive… (issue 24: hand over) with a stand-in server: the export it
 * asks for (only, name_template, destination "drive", the folder from its link),
 * the counts it reports once GET /batches/{id}'s export is done, what it remembers
 * for the next delivery, and the server's refusals by field. (The real API's
 * refusal while nothing is approved is in review.test.js.)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer } = require('./servers');
const { stackEnv, sceneId, harnessFor, addSheet, rowsOf } = require('./stack');

const HEADER = [
  'scene_id', 'prompt', 'variants', 'status_img', 'nano_img_1', 'nano_img_2', 'job_id', 'Subject',
];
const BATCH = 'bat_deliver';

let env;
let server;

test.before(async () => {
  env = stackEnv();
  server = await startServer({ routes: [] });
});

test.after(async () => {
  await server.close();
});

/** The stand-in's answers: both jobs in BATCH; the export as `exported`, then as `done`. */
function routes(exported, done) {
  return [
    { method: 'GET', prefix: '/status/', status: 200, body: { job_id: 'job_x', batch_id: BATCH, scene_id: 'x', state: 'completed', variants: [] } },
    { method: 'POST', path: `/batches/${BATCH}:export`, ...exported },
    { method: 'GET', path: `/batches/${BATCH}`, status: 200, body: { batch_id: BATCH, export: done } },
  ];
}

const QUEUED = {
  status: 202,
  body: { export_id: 'exp_1', state: 'queued', requested_at: '2026-12-08T10:00:00+00:00', destination: 'drive' },
};

async function exports() {
  return (await server.log()).filter((e) => e.method === 'POST' && e.path.endsWith(':export'));
}

test('Deliver to Drive sends the export it was asked for and reports what was added and what was there', { timeout: 60000 }, async () => {
  const title = await addSheet(env, 'Deliver', [HEADER, ...rowsOf(HEADER, [
    { scene_id: sceneId('dlv'), prompt: 'a', variants: 2, job_id: 'job_dlv_1', Subject: 'fox' },
    { scene_id: sceneId('dlv'), prompt: 'b', variants: 1, job_id: 'job_dlv_2', Subject: 'owl' },
  ])]);
  const h = harnessFor(env, { apiUrl: server.url, harness: { sheetTitle: title, selection: ['A2:H3'] } });

  await server.configure({ routes: routes(QUEUED, { export_id: 'exp_1', state: 'done', images: 3, added: 2, present: 1, destination: 'drive' }) });
  h.answer(
    { button: 'OK', text: ' https://drive.google.com/drive/folders/1FolderAbc_-9?usp=drive_link ', expect: /Step 1 of 3 — the Google Drive folder for batch bat_deliver[\s\S]*Share the folder with the pipeline's service account/ },
    { button: 'OK', text: '{scene_id}-{Subject}-v{version}', expect: /Step 2 of 3 — file names[\s\S]*Current: \{scene_id\}_\{variant\}_\{version\}/ },
    { button: 'YES', expect: /Step 3 of 3/ },
  );
  const first = h.run('deliverToDrive');
  assert.equal(first.thrown, null);
  assert.deepEqual(first.unexpected, []);
  let sent = await exports();
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].body, {
    only: 'approved', name_template: '{scene_id}-{Subject}-v{version}', destination: 'drive', drive_folder_id: '1FolderAbc_-9',
  });
  assert.equal(sent[0].headers['x-api-key'], env.API_KEY);
  assert.ok(first.fetches.some((f) => f.method === 'GET' && f.url.endsWith(`/batches/${BATCH}`)), 'it waited on GET /batches/{id}');
  assert.equal(first.lastDialog.text, [
    `Batch ${BATCH}: 3 approved images delivered to https://drive.google.com/drive/folders/1FolderAbc_-9`,
    '  2 files added, 1 file already there.',
    '',
    'Named {scene_id}-{Subject}-v{version}; with a manifest (CSV and JSON) of what each file is.',
  ].join('\n'));
  assert.equal(h.documentProps.getProperty('AI_IMAGES_DRIVE_FOLDER'), '1FolderAbc_-9');
  assert.equal(h.documentProps.getProperty('AI_IMAGES_NAME_TEMPLATE'), '{scene_id}-{Subject}-v{version}');

  // Next time the folder and names are kept; No: the final images only.
  await server.configure({ routes: routes(QUEUED, { export_id: 'exp_1', state: 'done', images: 2, added: 0, present: 2, destination: 'drive' }) });
  h.answer(
    { button: 'OK', text: '', expect: /Current: 1FolderAbc_-9\nLeave empty to keep it\./ },
    { button: 'OK', text: '', expect: /Current: \{scene_id\}-\{Subject\}-v\{version\}/ },
    { button: 'NO' },
  );
  const again = h.run('deliverToDrive');
  assert.equal(again.thrown, null);
  sent = await exports();
  assert.deepEqual(sent[1].body, {
    only: 'final', name_template: '{scene_id}-{Subject}-v{version}', destination: 'drive', drive_folder_id: '1FolderAbc_-9',
  });
  assert.match(again.lastDialog.text, /^Batch bat_deliver: 2 final images delivered to .+\n {2}0 files added, 2 files already there\./);

  // A template the server refuses (a column a row lacks): said by field, and not remembered.
  await server.configure({
    routes: routes({
      status: 400,
      body: {
        error: 'invalid_request',
        message: "scene s1: {mood} has no column 'mood'",
        details: [{ field: 'name_template', reason: "scene s1: {mood} has no column 'mood'" }],
      },
    }, null),
  });
  h.answer({ button: 'OK', text: '' }, { button: 'OK', text: '{scene_id}_{mood}' }, { button: 'YES' });
  const refused = h.run('deliverToDrive');
  assert.equal(refused.lastDialog.text, `The server refused the delivery of batch ${BATCH}:\n\n` +
    "  • File names (name_template): scene s1: {mood} has no column 'mood'\n\nNothing was delivered.");
  assert.equal(h.documentProps.getProperty('AI_IMAGES_NAME_TEMPLATE'), '{scene_id}-{Subject}-v{version}');

  // A delivery that fails (the folder not shared, say) says why.
  await server.configure({ routes: routes(QUEUED, { export_id: 'exp_1', state: 'failed', error: 'Drive refused the delivery: folder 1FolderAbc_-9 is not shared with us', destination: 'drive' }) });
  h.answer({ button: 'OK', text: '' }, { button: 'OK', text: 'default' }, { button: 'YES' });
  const failed = h.run('deliverToDrive');
  assert.equal(failed.thrown, null);
  assert.match(failed.lastDialog.text, /could not be delivered to the Drive folder 1FolderAbc_-9: Drive refused the delivery: folder 1FolderAbc_-9 is not shared with us/);
  assert.equal((await exports()).pop().body.name_template, '{scene_id}_{variant}_{version}', '"default" names the default template');

  // Cancel at any step, or a folder that is not one: nothing is asked of the server.
  const before = (await exports()).length;
  h.answer({ button: 'CANCEL' });
  const cancelled = h.run('deliverToDrive');
  assert.equal(cancelled.lastDialog.text, 'Nothing was delivered.');
  h.answer({ button: 'OK', text: 'not a folder!' });
  const wrong = h.run('deliverToDrive');
  assert.match(wrong.lastDialog.text, /"not a folder!" is not a Drive folder's link or id/);
  assert.equal((await exports()).length, before);
});
