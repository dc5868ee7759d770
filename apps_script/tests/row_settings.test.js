'use strict';
/**
 * Per-row settings: the optional columns model, aspect_ratio, image_size and
 * lane. A row's model is one of GET /limits' `models` and its shapes are checked
 * against that model (not the deployment's default); its lane against `lanes`.
 * A stand-in server answers for the API.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer, limitsWith, batchAnswers } = require('./servers');
const { stackEnv, sceneId, harnessFor, withoutLimits, addSheet, rowsOf, fieldsOf } = require('./stack');

const HEADER = [
  'scene_id', 'prompt', 'variants', 'status_img', 'nano_img_1', 'nano_img_2', 'job_id',
  'model', 'aspect_ratio', 'image_size', 'lane',
];

let env;
const servers = [];

test.before(() => {
  env = stackEnv();
});

test.after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

async function server(config) {
  const started = await startServer(config);
  servers.push(started);
  return started;
}

test('a row\'s model, size, aspect ratio and lane are sent with it', async () => {
  const rows = [
    { scene_id: sceneId('pro'), prompt: 'A poster at 4K', variants: 1, model: 'gemini-3-pro-image', aspect_ratio: '21:9', image_size: '4k' },
    { scene_id: sceneId('default'), prompt: 'A thumbnail', variants: 2, image_size: 512 },
    { scene_id: sceneId('cheap'), prompt: 'Drafts, overnight', variants: 1, model: ' GEMINI-2.5-Flash-Image ', lane: 'Economy' },
  ];
  const title = await addSheet(env, 'Row settings', [HEADER, ...rowsOf(HEADER, rows)]);
  const expected = [
    { scene_id: rows[0].scene_id, model: 'gemini-3-pro-image', prompt: rows[0].prompt, fields: fieldsOf(HEADER, rows[0]), variants: 1, aspect_ratio: '21:9', image_size: '4K' },
    { scene_id: rows[1].scene_id, prompt: rows[1].prompt, fields: fieldsOf(HEADER, rows[1]), variants: 2, image_size: '512' },
    { scene_id: rows[2].scene_id, model: 'gemini-2.5-flash-image', prompt: rows[2].prompt, fields: fieldsOf(HEADER, rows[2]), variants: 1, lane: 'economy' },
  ];
  const deployment = await server({ routes: batchAnswers(expected, 'bat_rows') });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:K4'] } });
  // The question says which rows keep their own lane whatever the answer.
  h.answer({ button: 'YES', expect: /\(1 row of the selection names its own lane in the "lane" column and keeps it whatever you answer\.\)/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  assert.match(generate.lastDialog.text, /^Batch bat_rows accepted/);
  const batches = await deployment.batches();
  assert.deepEqual(batches.map((b) => b.runMode), ['dry_run', 'live']);
  for (const batch of batches) {
    assert.deepEqual(batch.body.items, expected);
    assert.equal(batch.body.model, undefined, 'the batch itself keeps the deployment\'s model');
  }
  assert.equal(batches[1].body.lane, 'live', 'Yes: the other rows go live');
});

test('a size or aspect ratio the row\'s model lacks, an unknown model or lane are refused by row', async () => {
  const rows = [
    { scene_id: sceneId('small-2k'), prompt: 'x', variants: 1, model: 'gemini-2.5-flash-image', image_size: '2K' },
    { scene_id: sceneId('pro-2k'), prompt: 'x', variants: 1, model: 'gemini-3-pro-image', image_size: '2K' },
    { scene_id: sceneId('imagen'), prompt: 'x', variants: 1, model: 'imagen-4' },
    { scene_id: sceneId('lane'), prompt: 'x', variants: 1, lane: 'economy' },
    { scene_id: sceneId('pro-tall'), prompt: 'x', variants: 1, model: 'gemini-3-pro-image', aspect_ratio: '1:8' },
    { scene_id: sceneId('default-tall'), prompt: 'x', variants: 1, aspect_ratio: '1:8', image_size: '512' },
  ];
  const title = await addSheet(env, 'Row settings', [HEADER, ...rowsOf(HEADER, rows)]);
  // A deployment without the economy lane (Vertex).
  const deployment = await server({ limits: limitsWith({ lanes: ['live'] }) });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:K7'] } });
  const ratios = '1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9';
  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    const run = h.run(action);
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, [], 'no question is asked');
    assert.equal(run.lastDialog.text, [
      'Nothing was sent: 4 problems in the selected rows.',
      '',
      'Row 2: image_size must be one of 1K for gemini-2.5-flash-image (found "2K").',
      'Row 4: model "imagen-4" is not one this deployment offers (gemini-2.5-flash-image, gemini-3-pro-image, gemini-3.1-flash-image).',
      'Row 5: lane must be one of live (found "economy").',
      `Row 6: aspect_ratio must be one of ${ratios} for gemini-3-pro-image (found "1:8").`,
    ].join('\n'));
    assert.deepEqual(withoutLimits(run.fetches), []);
  }
  assert.deepEqual(withoutLimits(await deployment.log()), []);
});
