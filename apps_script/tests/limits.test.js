'use strict';
/**
 * What a deployment can change (rows per batch, variants, prompt length, the
 * sizes and aspect ratios of the batch's model) the script reads from the
 * server, GET /limits, once per run and keeps for a few minutes in the script
 * cache; every row is checked against it before anything is sent. Stand-in
 * servers play deployments with other limits; the rows live in the local
 * Sheets stub.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startServer, limitsWith, DEFAULT_LIMITS } = require('./servers');
const {
  stackEnv, sceneId, addScenes, readRows, rowsA1, harnessFor, withoutLimits, isLimitsRequest, fieldsOf,
} = require('./stack');

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

/** A dry run's plan and a live answer for these items, as the API answers them. */
function answers(items) {
  const images = items.reduce((n, item) => n + item.variants, 0);
  const plan = {
    runMode: 'dry_run',
    model: 'gemini-3.1-flash-image',
    price_per_image_usd: '0.0450',
    job_count: items.length,
    image_count: images,
    estimated_cost_usd: (0.045 * images).toFixed(4),
    jobs: items.map((item) => ({ scene_id: item.scene_id, variants: item.variants, estimated_cost_usd: (0.045 * item.variants).toFixed(4) })),
  };
  const live = {
    ...plan,
    runMode: 'live',
    batch_id: 'bat_limits',
    unpublished: [],
    jobs: items.map((item, i) => ({ scene_id: item.scene_id, job_id: `job_limits_${i}`, variants: item.variants, state: 'queued' })),
  };
  return [
    { method: 'POST', path: '/batch/images', runMode: 'dry_run', status: 200, body: plan },
    { method: 'POST', path: '/batch/images', runMode: 'live', status: 202, body: live },
  ];
}

const SIZED_HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img',
  'nano_img_1', 'nano_img_2', 'nano_img_3', 'job_id', 'aspect_ratio', 'image_size',
];

/** A new sheet with the optional aspect_ratio and image_size columns; rows from row 2. */
async function sizedSheet(rows) {
  const title = `Sizes ${sceneId('sheet')}`;
  const base = `${env.SHEETS_API_URL}/v4/spreadsheets/${encodeURIComponent(env.SPREADSHEET_ID)}`;
  const added = await fetch(`${base}:batchUpdate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ requests: [{ addSheet: { properties: { title } } }] }),
  });
  assert.equal(added.status, 200, await added.text());
  const written = await fetch(`${base}/values/${encodeURIComponent(`'${title}'!A1`)}?valueInputOption=RAW`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ values: [SIZED_HEADER, ...rows] }),
  });
  assert.equal(written.status, 200, await written.text());
  return title;
}

/** One row of the sized sheet, in SIZED_HEADER order. */
function sizedRow(fields) {
  return SIZED_HEADER.map((name) => (fields[name] === undefined ? '' : fields[name]));
}

test('a deployment that allows 6 variants and the 512 size gets a row of 6 at 512', async () => {
  const six = { scene_id: sceneId('six'), prompt: 'A wide harbour at dawn', variants: 6 };
  const small = { scene_id: sceneId('twok'), prompt: 'The same harbour at noon', variants: '' };
  // 512 as Sheets keeps a typed number; "2k" as someone types it.
  const title = await sizedSheet([
    sizedRow({ ...six, aspect_ratio: '16:9', image_size: 512 }),
    sizedRow({ ...small, aspect_ratio: '21:9', image_size: '2k' }),
  ]);
  const fields = (row) => fieldsOf(SIZED_HEADER, row);
  const expected = [
    { scene_id: six.scene_id, prompt: six.prompt, fields: fields({ ...six, aspect_ratio: '16:9', image_size: 512 }), variants: 6, aspect_ratio: '16:9', image_size: '512' },
    { scene_id: small.scene_id, prompt: small.prompt, fields: fields({ ...small, aspect_ratio: '21:9', image_size: '2k' }), variants: 1, aspect_ratio: '21:9', image_size: '2K' },
  ];
  const deployment = await server({
    limits: limitsWith({ max_variants: 6 }, { image_sizes: ['512', '1K', '2K', '4K'] }),
    routes: answers(expected),
  });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:K3'] } });

  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  assert.match(estimate.lastDialog.text, /^2 scenes \(rows 2-3\), 7 images/);
  h.answer({ button: 'YES', expect: /Generate 7 images for 2 scenes\?/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  assert.match(generate.lastDialog.text, /^Batch bat_limits accepted: 2 scenes, 7 images/);

  // What the server received, in the dry run and in the live request.
  const batches = await deployment.batches();
  assert.deepEqual(batches.map((b) => b.runMode), ['dry_run', 'dry_run', 'live'], 'Estimate, then Generate: its dry run and the batch');
  for (const batch of batches) assert.deepEqual(batch.body.items, expected);

  // GET /limits was asked once, signed in like every request; Generate used the cache.
  const asked = await deployment.limitsRequests();
  assert.equal(asked.length, 1);
  assert.equal(asked[0].headers['x-api-key'], env.API_KEY);
  assert.ok(!generate.fetches.some(isLimitsRequest), 'Generate took the limits from the cache');
  // Kept briefly: a few minutes, under a key of the API URL.
  const [key] = h.scriptCache.keys();
  assert.match(key, /^AI_IMAGES_LIMITS_[0-9a-f]{64}$/);
  const left = h.scriptCache.store.load()[key].expires - Date.now();
  assert.ok(left > 60 * 1000 && left <= 10 * 60 * 1000, `cached for ${left} ms`);
});

test('a deployment that allows 2 variants refuses a row of 3 before anything is sent', async () => {
  const scenes = [
    { scene_id: sceneId('two'), prompt: 'Two is fine', variants: 2 },
    { scene_id: sceneId('three'), prompt: 'Three is one too many', variants: 3 },
  ];
  const rows = await addScenes(env, scenes);
  const before = await readRows(env, rows);
  const wide = await server({ routes: answers(scenes.map((s) => ({ ...s }))) });  // 4 variants
  const narrow = await server({ limits: limitsWith({ max_variants: 2 }) });
  const h = harnessFor(env, { apiUrl: wide.url, harness: { selection: [rowsA1(rows[0], rows[1])] } });

  // Where 4 are allowed, the same rows are fine.
  const fine = h.run('estimateSelectedRows');
  assert.equal(fine.thrown, null);
  assert.match(fine.lastDialog.text, /^2 scenes \(rows \d+-\d+\), 5 images/);

  // The same spreadsheet pointed at the narrower deployment: its own limits (the cache
  // is per API URL), and the row of 3 is refused naming the limit.
  h.scriptProps.setProperty('AI_IMAGES_API_URL', narrow.url);
  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    const run = h.run(action);
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, [], 'no question is asked');
    assert.equal(run.lastDialog.text,
      `Nothing was sent: 1 problem in the selected rows.\n\nRow ${rows[1]}: variants must be a whole number from 1 to 2 (found "3").`);
    assert.deepEqual(withoutLimits(run.fetches), []);
    assert.equal(run.events.filter((e) => e.type === 'sheet-write').length, 0);
  }
  const seen = await narrow.log();
  assert.equal(seen.length, 1, 'the narrow deployment saw one request');
  assert.ok(isLimitsRequest(seen[0]));
  assert.deepEqual(await readRows(env, rows), before, 'no row was changed');
});

test('rows are checked against the model\'s sizes and aspect ratios and the prompt length (more rows than a batch holds are sent in chunks)', async () => {
  const ids = [sceneId('fits'), sceneId('size'), sceneId('ratio'), sceneId('words')];
  const title = await sizedSheet([
    // 40 characters as the server counts them (80 UTF-16 units): within the limit.
    sizedRow({ scene_id: ids[0], prompt: '🌊'.repeat(40), variants: 1, aspect_ratio: '16:9', image_size: '4K' }),
    sizedRow({ scene_id: ids[1], prompt: 'Small', variants: 1, image_size: 512 }),
    sizedRow({ scene_id: ids[2], prompt: 'Tall', variants: 1, aspect_ratio: '1:8' }),
    sizedRow({ scene_id: ids[3], prompt: 'y'.repeat(41), variants: 1 }),
  ]);
  const deployment = await server({
    limits: limitsWith({ default_model: 'gemini-3-pro-image', max_prompt_chars: 40, max_items_per_batch: 3 }),
  });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { sheetTitle: title, selection: ['A2:K5'] } });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  const ratios = '1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9';
  assert.equal(run.lastDialog.text, [
    'Nothing was sent: 3 problems in the selected rows.',
    '',
    'Row 3: image_size must be one of 1K, 2K, 4K for gemini-3-pro-image (found "512").',
    `Row 4: aspect_ratio must be one of ${ratios} for gemini-3-pro-image (found "1:8").`,
    'Row 5: prompt is 41 characters long; the limit is 40.',
  ].join('\n'));
  assert.deepEqual(withoutLimits(await deployment.log()), []);
});

test('limits that cannot be read stop the run with the reason; nothing is sent or guessed', async () => {
  const scene = { scene_id: sceneId('nolimits'), prompt: 'x', variants: 1 };
  const [row] = await addScenes(env, [scene]);
  const deployment = await server({ routes: [] });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { selection: [rowsA1(row)] } });
  const head = /^Could not read the limits of the image service \(GET \/limits\), which the selected rows are checked against, so nothing was sent\.\n\n/;
  const cases = [
    [{ status: 503, body: { error: 'unavailable', message: 'try later' } },
      /The image service had a problem \(HTTP 503 unavailable\): try later/],
    [{ status: 404, body: { error: 'not_found', message: 'no route GET /limits' } },
      /does not answer GET \/limits \(HTTP 404\)\. Check the API URL in AI images → Settings; if it is right, the service is older than this script/],
    [{ status: 200, body: { max_variants: 4 } },
      /Its answer is not the list of limits this script expects \(\{"max_variants":4\}\)/],
    [{ status: 200, body: { ...DEFAULT_LIMITS, default_model: 'not-in-the-models' } },
      /Its answer is not the list of limits this script expects/],
  ];
  for (const [answer, reason] of cases) {
    await deployment.configure({ routes: [{ method: 'GET', path: '/limits', ...answer }] });
    for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
      const run = h.run(action);
      assert.equal(run.thrown, null);
      assert.match(run.lastDialog.text, head);
      assert.match(run.lastDialog.text, reason);
      assert.deepEqual(withoutLimits(run.fetches), []);
    }
  }
  assert.deepEqual(h.scriptCache.keys(), [], 'nothing unreadable is cached');

  // Once the server answers, the next run goes ahead.
  await deployment.configure({ routes: answers([scene]) });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  assert.match(run.lastDialog.text, /^1 scene \(row \d+\), 1 image/);
  assert.deepEqual(withoutLimits(await deployment.log()).map((e) => e.runMode), ['dry_run']);
});
