'use strict';
/**
 * References with roles: the named ranges "characters" and "products" (name |
 * reference, one image per line) and a row's "characters" and "products"
 * columns. Each named one goes in the item's `references`, labelled, in table
 * order; unknown names and more images than the row's model takes (per kind, and
 * in all with the batch's style_refs and the row's pack) are refused by row
 * before anything is sent. A stand-in server answers for the API.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer, limitsWith, batchAnswers } = require('./servers');
const { stackEnv, sceneId, harnessFor, withoutLimits, addSheet, rowsOf, fieldsOf } = require('./stack');

const HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img', 'nano_img_1', 'job_id',
  'characters', 'products', 'model',
];
const CHARACTERS = [
  ['name', 'reference'],
  ['Zed', 'https://refs.example.com/zed.png'],
  ['Mara', 'https://refs.example.com/mara-front.png'],
  ['Ivo', 'gs://local-images/refs/ivo.png'],
  ['mara', 'scene:sc-mara#2'],
];
const PRODUCTS = [
  ['Flask', 'https://refs.example.com/flask-front.png'],
  ['Mug', 'https://refs.example.com/mug.png'],
  ['Flask', 'https://refs.example.com/flask-back.png'],
];
const STYLE = 'https://refs.example.com/house-style.png';

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

/** The scenes sheet and a library sheet holding the two tables and one style reference. */
async function referenceSheets(rows) {
  const title = await addSheet(env, 'References', [HEADER, ...rowsOf(HEADER, rows)]);
  const library = await addSheet(env, 'Cast', [
    ...CHARACTERS.map((line) => [...line, '']),
    ['', '', ''],
    ...PRODUCTS.map((line) => [...line, '']),
    ['', '', STYLE],
  ]);
  const first = CHARACTERS.length + 2;
  const namedRanges = {
    characters: `'${library}'!A1:B${CHARACTERS.length}`,
    products: `'${library}'!A${first}:B${first + PRODUCTS.length - 1}`,
    style_refs: `'${library}'!C${first + PRODUCTS.length}`,
  };
  return { title, namedRanges };
}

test('the named characters and products go with the row, labelled, in table order', async () => {
  const rows = [
    { scene_id: sceneId('cast'), prompt: 'Mara hands Zed the flask', variants: 1, characters: 'mara, Zed', products: 'flask' },
    { scene_id: sceneId('cast-mug'), prompt: 'A mug on its own', variants: 2, products: 'Mug', model: 'gemini-3-pro-image' },
    { scene_id: sceneId('cast-none'), prompt: 'Nobody named', variants: 1 },
  ];
  const { title, namedRanges } = await referenceSheets(rows);
  const expected = [
    {
      scene_id: rows[0].scene_id,
      prompt: rows[0].prompt,
      fields: fieldsOf(HEADER, rows[0]),
      variants: 1,
      references: [
        // Table order (not the row's), each name with its first spelling in the table.
        { role: 'character', name: 'Zed', ref: 'https://refs.example.com/zed.png' },
        { role: 'character', name: 'Mara', ref: 'https://refs.example.com/mara-front.png' },
        { role: 'character', name: 'Mara', ref: 'scene:sc-mara#2' },
        { role: 'product', name: 'Flask', ref: 'https://refs.example.com/flask-front.png' },
        { role: 'product', name: 'Flask', ref: 'https://refs.example.com/flask-back.png' },
      ],
    },
    {
      scene_id: rows[1].scene_id,
      model: 'gemini-3-pro-image',
      prompt: rows[1].prompt,
      fields: fieldsOf(HEADER, rows[1]),
      variants: 2,
      references: [{ role: 'product', name: 'Mug', ref: 'https://refs.example.com/mug.png' }],
    },
    { scene_id: rows[2].scene_id, prompt: rows[2].prompt, fields: fieldsOf(HEADER, rows[2]), variants: 1 },
  ];
  const deployment = await server({ routes: batchAnswers(expected, 'bat_cast') });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:J4'], namedRanges } });

  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  assert.match(estimate.lastDialog.text, /^3 scenes \(rows 2-4\), 4 images/);
  h.answer('YES');
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  assert.match(generate.lastDialog.text, /^Batch bat_cast accepted/);
  const batches = await deployment.batches();
  assert.deepEqual(batches.map((b) => b.runMode), ['dry_run', 'dry_run', 'live']);
  for (const batch of batches) {
    assert.deepEqual(batch.body.items, expected);
    assert.deepEqual(batch.body.style_refs, [STYLE], 'style_refs stay the batch\'s');
  }
});

test('unknown names and more images than the row\'s model takes are refused by row; nothing is sent', async () => {
  const rows = [
    { scene_id: sceneId('cast-many'), prompt: 'Everyone', variants: 1, characters: 'Mara, Zed, Ivo' },
    { scene_id: sceneId('cast-things'), prompt: 'Both products', variants: 1, products: 'Flask, Mug' },
    { scene_id: sceneId('cast-small'), prompt: 'Small model', variants: 1, characters: 'Zed', products: 'Flask', model: 'gemini-2.5-flash-image' },
    { scene_id: sceneId('cast-fits'), prompt: 'The same, default model', variants: 1, characters: 'Zed', products: 'Flask' },
    { scene_id: sceneId('cast-who'), prompt: 'A stranger', variants: 1, characters: 'Zed, Nobody' },
    { scene_id: sceneId('cast-pack'), prompt: 'With a pack', variants: 1, characters: 'Mara, Zed', products: 'Mug', ref_pack_public_url: 'https://refs.example.com/pack.zip', model: 'gemini-3-pro-image' },
  ];
  const { title, namedRanges } = await referenceSheets(rows);
  // The default model counts kinds apart: at most 3 characters, 3 products and style
  // images; gemini-3-pro-image takes 5 images in all, gemini-2.5-flash-image 3.
  const limits = limitsWith({}, { max_character_references: 3, max_object_references: 3 });
  limits.models['gemini-3-pro-image'].max_reference_images = 5;
  const deployment = await server({ limits });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:J7'], namedRanges } });
  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    const run = h.run(action);
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, [], 'no question is asked');
    assert.equal(run.lastDialog.text, [
      'Nothing was sent: 5 problems in the selected rows.',
      '',
      'Row 2: 4 character images (Zed, Mara ×2, Ivo); gemini-3.1-flash-image takes at most 3.',
      'Row 3: 4 object images (3 product images and 1 style reference); gemini-3.1-flash-image takes at most 3 products and style images.',
      'Row 4: 4 reference images (1 style reference, 1 character image, 2 product images); gemini-2.5-flash-image takes at most 3.',
      'Row 6: character "Nobody" is not in the named range "characters".',
      'Row 7: 6 reference images (1 style reference, 3 character images, 1 product image, its ref_pack_public_url); gemini-3-pro-image takes at most 5.',
    ].join('\n'));
    assert.deepEqual(withoutLimits(run.fetches), []);
  }
  assert.deepEqual(withoutLimits(await deployment.log()), [], 'the server saw nothing but GET /limits');

  // Without the named range, a row that names a character says what is missing.
  const bare = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A5:J5'], namedRanges: {} } });
  const run = bare.run('estimateSelectedRows');
  assert.equal(run.lastDialog.text, 'Nothing was sent: 2 problems in the selected rows.\n\n' +
    'Row 5: characters names "Zed", but the spreadsheet has no named range "characters" (a table: name | reference).\n' +
    'Row 5: products names "Flask", but the spreadsheet has no named range "products" (a table: name | reference).');
});
