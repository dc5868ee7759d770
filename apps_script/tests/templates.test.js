'use strict';
/**
 * Prompt templates (Briefs.gs): a row's prompt composed from a named range's
 * template and the row's columns, what to avoid, and the Estimate dialog that
 * shows the prompts as they will be sent.
 *
 * The composition itself is held to the cases the server passes too
 * (shared/domain/template_cases.json); the rows live in the local Sheets stub
 * and a stand-in server answers for the API, except in the last test, where the
 * real local API composes the same rows.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { createHarness } = require('./harness');
const { startServer, limitsWith, batchAnswers } = require('./servers');
const { stackEnv, sceneId, harnessFor, withoutLimits, addSheet, rowsOf } = require('./stack');

const CASES_FILE = path.resolve(__dirname, '..', '..', 'shared', 'domain', 'template_cases.json');
/** For what needs no spreadsheet: nothing is ever asked of this address. */
const OFFLINE_ENV = { SPREADSHEET_ID: 'offline', WORKSHEET: 'Scenes', SHEETS_API_URL: 'http://127.0.0.1:9' };

const HEADER = [
  'scene_id', 'prompt', 'ref_pack_public_url', 'variants', 'status_img', 'nano_img_1', 'nano_img_2',
  'job_id', 'template', 'Subject', 'Setting', 'avoid', 'notes',
];
/** The columns a row is sent with: all but the pipeline's own. */
const FIELD_COLUMNS = HEADER.filter((name) => !['status_img', 'nano_img_1', 'nano_img_2', 'job_id'].includes(name));

let env;
const servers = [];

test.after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

/** The local stack, asked for only by the tests that need it. */
function stack() {
  if (!env) env = stackEnv();
  return env;
}

async function server(config) {
  const started = await startServer(config);
  servers.push(started);
  return started;
}

/** A scenes sheet with the template columns, and a library sheet with the templates. */
async function templateSheets(rows, templates) {
  const title = await addSheet(stack(), 'Templates', [HEADER, ...rowsOf(HEADER, rows)]);
  const names = Object.keys(templates);
  const library = await addSheet(stack(), 'Library', names.map((name) => [templates[name]]));
  const namedRanges = {};
  names.forEach((name, i) => { namedRanges[name] = `'${library}'!A${i + 1}`; });
  return { title, namedRanges };
}

function fieldsOf(row) {
  return Object.fromEntries(FIELD_COLUMNS.map((name) => [name, row[name] === undefined ? '' : String(row[name])]));
}

/** A row without a template: its prompt goes as `prompt`, not among its columns. */
function plainFieldsOf(row) {
  const fields = fieldsOf(row);
  delete fields.prompt;
  return fields;
}

test('every shared template case composes as on the server, and fails with the same words', () => {
  const { cases } = JSON.parse(fs.readFileSync(CASES_FILE, 'utf8'));
  const h = createHarness({ env: OFFLINE_ENV });
  assert.ok(cases.length >= 14, 'the shared cases are loaded');
  assert.ok(cases.some((c) => 'error' in c) && cases.some((c) => 'prompt' in c));
  for (const c of cases) {
    const compose = () => h.context.withAvoid_(h.context.composeTemplate_(c.template, c.fields), c.avoid);
    if ('error' in c) {
      assert.throws(compose, (err) => {
        assert.equal(err.name, 'TemplateError', c.name);
        assert.ok(err.message.includes(c.error), `${c.name}: "${err.message}" lacks "${c.error}"`);
        return true;
      }, c.name);
    } else {
      assert.equal(compose(), c.prompt, c.name);
    }
  }
  // Positions are counted as the server counts characters (code points).
  assert.throws(() => h.context.composeTemplate_('🌊🌊 {', {}), /has a lone '\{' at character 4 /);
  assert.equal(h.context.columnKey_('  Mood / tone!! '), 'mood_tone');
});

test('rows use the template their column names, the default one when the prompt is empty, or their prompt; Estimate shows them', async () => {
  const rows = [
    { scene_id: sceneId('tpl-default'), variants: 1, Subject: 'red fox', Setting: 'a snowy forest', avoid: 'cars; text\nwatermarks', notes: 'for the cover' },
    { scene_id: sceneId('tpl-plain'), prompt: 'A plain prompt, as typed', variants: 2, Subject: 'unused' },
    { scene_id: sceneId('tpl-named'), prompt: 'kept as a column', variants: 1, template: 'product', Subject: 'mug', Setting: 'a kitchen table' },
    { scene_id: sceneId('tpl-fourth'), prompt: 'Not shown: only the first three are', variants: 1, avoid: 'people' },
  ];
  const templates = {
    prompt_template: 'A {Subject} in {setting}, soft light',
    template_product: 'Studio photo of a {subject} on {Setting}, {{brand}} in the corner ({prompt})',
  };
  const { title, namedRanges } = await templateSheets(rows, templates);
  const expected = [
    {
      scene_id: rows[0].scene_id,
      template: { name: 'default', text: templates.prompt_template },
      fields: fieldsOf(rows[0]),
      avoid: 'cars; text\nwatermarks',
      variants: 1,
    },
    // A row without a template carries its columns too (for a delivery's file names).
    { scene_id: rows[1].scene_id, prompt: 'A plain prompt, as typed', fields: plainFieldsOf(rows[1]), variants: 2 },
    {
      scene_id: rows[2].scene_id,
      template: { name: 'product', text: templates.template_product },
      fields: fieldsOf(rows[2]),
      variants: 1,
    },
    { scene_id: rows[3].scene_id, prompt: rows[3].prompt, fields: plainFieldsOf(rows[3]), avoid: 'people', variants: 1 },
  ];
  const deployment = await server({ routes: batchAnswers(expected, 'bat_templates') });
  const h = harnessFor(stack(), {
    apiUrl: deployment.url,
    harness: { sheetTitle: title, selection: ['A2:M5'], namedRanges },
  });

  const estimate = h.run('estimateSelectedRows');
  assert.equal(estimate.thrown, null);
  assert.deepEqual(estimate.unexpected, []);
  const text = estimate.lastDialog.text;
  const shown = [
    'Prompts as they will be sent (first 3 of 4 rows):',
    `Row 2 (${rows[0].scene_id}), template "default":`,
    '    A red fox in a snowy forest, soft light',
    '',
    '    Leave these out of the image entirely: cars, text, watermarks.',
    `Row 3 (${rows[1].scene_id}):`,
    '    A plain prompt, as typed',
    `Row 4 (${rows[2].scene_id}), template "product":`,
    '    Studio photo of a mug on a kitchen table, {brand} in the corner (kept as a column)',
    '',
    'Nothing has been sent. Use "Generate selected rows" to start.',
  ].join('\n');
  assert.ok(text.endsWith(shown), `the Estimate dialog:\n${text}`);
  assert.ok(!text.includes('Not shown'));

  h.answer({ button: 'YES', expect: /Generate 5 images for 4 scenes\?/ });
  const generate = h.run('generateSelectedRows');
  assert.equal(generate.thrown, null);
  assert.deepEqual(generate.unexpected, []);
  assert.match(generate.lastDialog.text, /^Batch bat_templates accepted/);
  const batches = await deployment.batches();
  assert.deepEqual(batches.map((b) => b.runMode), ['dry_run', 'dry_run', 'live']);
  // With a template the prompt is absent: the server composes it from the fields.
  for (const batch of batches) assert.deepEqual(batch.body.items, expected);
});

test('a template the row cannot fill, an unknown template, a stray brace or a long composition are refused by row; nothing is sent', async () => {
  const rows = [
    { scene_id: sceneId('tpl-missing'), variants: 1, template: 'moody', Subject: 'owl' },
    { scene_id: sceneId('tpl-empty'), variants: 1, Subject: 'owl', Setting: '   ' },
    { scene_id: sceneId('tpl-unknown'), variants: 1, template: 'poster', Subject: 'owl' },
    { scene_id: sceneId('tpl-brace'), variants: 1, template: 'broken', Subject: 'owl' },
    { scene_id: sceneId('tpl-long'), variants: 1, Subject: 'owl'.repeat(10), Setting: 'a barn', avoid: 'mice' },
    { scene_id: sceneId('tpl-fine'), variants: 1, Subject: 'owl', Setting: 'a barn' },
  ];
  const { title, namedRanges } = await templateSheets(rows, {
    prompt_template: 'A {Subject} in {setting}',
    template_moody: 'A {subject} in a {mood} mood',
    template_broken: 'A {subject',
  });
  const deployment = await server({ limits: limitsWith({ max_prompt_chars: 60 }) });
  const h = harnessFor(stack(), {
    apiUrl: deployment.url,
    harness: { sheetTitle: title, selection: ['A2:M7'], namedRanges },
  });
  const longPrompt = `A ${'owl'.repeat(10)} in a barn\n\nLeave these out of the image entirely: mice.`;
  for (const action of ['estimateSelectedRows', 'generateSelectedRows']) {
    const run = h.run(action);
    assert.equal(run.thrown, null);
    assert.deepEqual(run.unexpected, [], 'no question is asked');
    assert.equal(run.lastDialog.text, [
      'Nothing was sent: 5 problems in the selected rows.',
      '',
      'Row 2: template "moody": {mood} has no column \'mood\'.',
      'Row 3: template "default": {setting} names column \'setting\', which is empty in this row.',
      'Row 4: template "poster" does not exist: add a named range "template_poster" whose first cell holds the template.',
      'Row 5: template "broken" has a lone \'{\' at character 3 (write {{ or }} for a brace itself).',
      `Row 6: the composed prompt (template "default", with avoid) is ${Array.from(longPrompt).length} characters long; the limit is 60.`,
    ].join('\n'));
    assert.deepEqual(withoutLimits(run.fetches), []);
  }
  assert.deepEqual(withoutLimits(await deployment.log()), [], 'the server saw nothing but GET /limits');

  // Without a prompt_template, a row with neither prompt nor template is refused by row.
  const bare = harnessFor(stack(), {
    apiUrl: deployment.url,
    harness: { sheetTitle: title, selection: ['A7:M7'], namedRanges: {} },
  });
  const run = bare.run('estimateSelectedRows');
  assert.equal(run.lastDialog.text, 'Nothing was sent: 1 problem in the selected rows.\n\n' +
    'Row 7: prompt is empty. Write one, or name a template in a "template" column (or add a "prompt_template" named range).');
  assert.deepEqual(withoutLimits(run.fetches), []);
});

test('the local API composes a template row as the sheet showed it', async () => {
  const rows = [
    { scene_id: sceneId('tpl-real'), variants: 1, Subject: 'paper crane', Setting: 'a windowsill', avoid: 'text, logos', notes: '{not a placeholder}' },
  ];
  const template = 'A {Subject} on {setting}, {{morning}} light; {notes}';
  const { title, namedRanges } = await templateSheets(rows, { prompt_template: template });
  const proxy = await server({ upstream: stack().API_URL });
  const h = harnessFor(stack(), {
    apiUrl: proxy.url,
    harness: { sheetTitle: title, selection: ['A2:M2'], namedRanges },
  });
  const run = h.run('estimateSelectedRows');
  assert.equal(run.thrown, null);
  const composed = 'A paper crane on a windowsill, {morning} light; {not a placeholder}\n\n' +
    'Leave these out of the image entirely: text, logos.';
  assert.ok(run.lastDialog.text.includes(composed.split('\n').map((l) => (l ? `    ${l}` : l)).join('\n')),
    run.lastDialog.text);
  const [dry] = await proxy.batches('dry_run');
  assert.equal(dry.status, 200, JSON.stringify(dry.response));
  assert.equal(dry.body.items[0].prompt, undefined);
  assert.equal(dry.response.jobs[0].prompt, composed, 'the server composed the same prompt');
});
