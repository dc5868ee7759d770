'use strict';
/**
 * The email when a batch ends or needs attention (Notify.gs): asked for per user
 * (AI images → Email me about my batches…), a batch Generate sends is watched,
 * one time-driven trigger polls GET /batches/{id}, and each event of its
 * `events` becomes one email, at most once, even when the trigger runs twice or
 * two runs overlap. A stand-in server answers for the API.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { triggersOf } = require('./harness');
const { startServer, batchAnswers } = require('./servers');
const { stackEnv, sceneId, addScenes, rowsA1, harnessFor, runExecution } = require('./stack');

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

/** GET /batches/{id} as the API answers it, with these events. */
function batchRoute(batchId, events, extra = {}) {
  return {
    method: 'GET',
    path: `/batches/${batchId}`,
    status: 200,
    body: {
      batch_id: batchId,
      created_at: '2026-12-07T10:00:00+00:00',
      image_count: 8,
      estimated_cost_usd: '0.3600',
      cost_usd: '0.1350',
      counts: { completed: 1, failed: 2, generating: 1 },
      events,
      jobs: [],
      ...extra.body,
    },
    ...(extra.delayMs ? { delayMs: extra.delayMs } : {}),
  };
}

function batchRequests(run) {
  return run.fetches.filter((f) => f.method === 'GET' && /\/batches\//.test(f.url)).map((f) => new URL(f.url).pathname);
}

function watchKeys(h) {
  return h.userProps.getKeys().filter((key) => key.startsWith('AI_IMAGES_BATCH_MAIL_')).sort();
}

/** Sends one row as a batch answered as `batchId`; returns the Generate run. */
async function generate(h, deployment, batchId) {
  const scene = { scene_id: sceneId('mail'), prompt: `Batch ${batchId}`, variants: 1 };
  const [row] = await addScenes(env, [scene]);
  await deployment.configure({ routes: batchAnswers([scene], batchId) });
  h.select(rowsA1(row));
  h.answer('YES');
  const run = h.run('generateSelectedRows');
  assert.equal(run.thrown, null);
  assert.deepEqual(run.unexpected, []);
  assert.match(run.lastDialog.text, new RegExp(`^Batch ${batchId} accepted`));
  return run;
}

test('not asked: no batch is watched, no trigger, no email', async () => {
  const deployment = await server({ routes: [] });
  const h = harnessFor(env, { apiUrl: deployment.url });
  const run = await generate(h, deployment, 'bat_quiet');
  assert.doesNotMatch(run.lastDialog.text, /email/i);
  assert.deepEqual(triggersOf(h), []);
  assert.deepEqual(watchKeys(h), []);

  await deployment.configure({ routes: [batchRoute('bat_quiet', ['ended'])] });
  const check = h.run('checkBatchMail');
  assert.equal(check.thrown, null);
  assert.deepEqual(check.mails, []);
  assert.deepEqual(check.fetches, [], 'nothing is asked for nobody');
});

test('asked: one trigger for all batches, one email per event, the ended batch forgotten, the trigger removed at the end', async () => {
  const deployment = await server({ routes: [] });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { userEmail: 'ana@example.com' } });

  h.answer({ button: 'YES', expect: /^Email me \(ana@example\.com\) when a batch I send with "Generate selected rows" ends or needs attention[\s\S]*Now: off\./ });
  const setting = h.run('openEmailSetting');
  assert.equal(setting.thrown, null);
  assert.deepEqual(setting.unexpected, []);
  assert.match(setting.lastDialog.text, /^On: /);

  const first = await generate(h, deployment, 'bat_mail_1');
  assert.match(first.lastDialog.text, /You will get an email at ana@example\.com when this batch ends or needs attention\./);
  await generate(h, deployment, 'bat_mail_2');
  const triggers = triggersOf(h);
  assert.equal(triggers.length, 1, 'one trigger, not one per batch');
  assert.equal(triggers[0].handler, 'checkBatchMail');
  assert.equal(triggers[0].everyMinutes, 5);
  assert.deepEqual(watchKeys(h), ['AI_IMAGES_BATCH_MAIL_bat_mail_1', 'AI_IMAGES_BATCH_MAIL_bat_mail_2']);

  // Scenes of batch 1 are failing; the trigger runs twice: one email.
  await deployment.configure({ routes: [batchRoute('bat_mail_1', ['failures']), batchRoute('bat_mail_2', [])] });
  const runs = [h.run('checkBatchMail'), h.run('checkBatchMail')];
  for (const run of runs) assert.equal(run.thrown, null);
  assert.deepEqual(runs.map((run) => run.mails.length), [1, 0]);
  const [mail] = runs[0].mails;
  const sheetId = h.sheets.sheetId(env.WORKSHEET);
  assert.equal(mail.to, 'ana@example.com');
  assert.equal(mail.subject, 'AI images: batch bat_mail_1 needs attention: scenes are failing');
  for (const line of [
    'Scenes: completed 1, failed 2, generating 1',
    'Images: 8',
    'Cost so far: $0.1350 (estimated $0.3600)',
    `Sheet: https://docs.google.com/spreadsheets/d/${env.SPREADSHEET_ID}/edit#gid=${sheetId}`,
  ]) assert.ok(mail.body.split('\n').includes(line), `"${line}" not in:\n${mail.body}`);
  assert.deepEqual(batchRequests(runs[1]), ['/batches/bat_mail_1', '/batches/bat_mail_2'], 'signed in like every request');
  assert.equal(runs[1].fetches[0].headers['X-API-Key'], env.API_KEY);

  // Batch 1 ends, batch 2 is paused: one email each; batch 1 is no longer asked about.
  await deployment.configure({
    routes: [batchRoute('bat_mail_1', ['ended']), batchRoute('bat_mail_2', ['paused_daily_quota'])],
  });
  const second = h.run('checkBatchMail');
  assert.deepEqual(second.mails.map((m) => m.subject), [
    'AI images: batch bat_mail_1 ended with failures',
    'AI images: batch bat_mail_2 is paused: Gemini\'s daily quota is used up',
  ]);
  const third = h.run('checkBatchMail');
  assert.deepEqual(third.mails, []);
  assert.deepEqual(batchRequests(third), ['/batches/bat_mail_2']);
  assert.equal(triggersOf(h).length, 1, 'batch 2 is still watched');

  // Batch 2 ends: its email, then nothing is left and the trigger goes.
  await deployment.configure({
    routes: [batchRoute('bat_mail_2', ['ended'], { body: { counts: { completed: 2 } } })],
  });
  const last = h.run('checkBatchMail');
  assert.deepEqual(last.mails.map((m) => m.subject), ['AI images: batch bat_mail_2 is done']);
  assert.deepEqual(watchKeys(h), []);
  assert.deepEqual(triggersOf(h), []);
  const after = h.run('checkBatchMail');
  assert.deepEqual([after.mails, after.fetches], [[], []]);
});

test('at most once: an email whose send fails is not sent again; one the day\'s quota holds back is sent later', async () => {
  const deployment = await server({ routes: [] });
  const h = harnessFor(env, { apiUrl: deployment.url, harness: { userProperties: { AI_IMAGES_API_KEY: env.API_KEY, AI_IMAGES_EMAIL_ME: 'on' } } });
  await generate(h, deployment, 'bat_once');
  await deployment.configure({ routes: [batchRoute('bat_once', ['paused_spend_cap'])] });

  // The send dies after the event was recorded: that email is lost, never doubled.
  h.mailFailures = 1;
  const failed = h.run('checkBatchMail');
  assert.equal(failed.thrown, null);
  assert.deepEqual(failed.mails, []);
  assert.ok(h.logs.some((l) => /bat_once paused_spend_cap not sent: Service error: Gmail/.test(l.line)));
  assert.deepEqual(h.run('checkBatchMail').mails, []);

  // No quota left today: nothing is recorded, so a later run sends it.
  await deployment.configure({ routes: [batchRoute('bat_once', ['paused_spend_cap', 'failures'])] });
  h.mailQuota = 0;
  assert.deepEqual(h.run('checkBatchMail').mails, []);
  h.mailQuota = 10;
  assert.deepEqual(h.run('checkBatchMail').mails.map((m) => m.subject),
    ['AI images: batch bat_once needs attention: scenes are failing']);
  assert.deepEqual(h.run('checkBatchMail').mails, []);
});


test('two trigger runs at the same time send one email', { timeout: 60000 }, async () => {
  const scene = { scene_id: sceneId('mail-race'), prompt: 'Two timers, one email', variants: 1 };
  const [row] = await addScenes(env, [scene]);
  const deployment = await server({ routes: batchAnswers([scene], 'bat_race_mail') });
  const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'apps-script-mail-'));
  try {
    // One person: their user properties, lock and triggers are shared by the processes.
    const base = {
      env,
      sharedDir: path.join(shared, 'user'),
      sharedUserProperties: true,
      userEmail: 'ana@example.com',
      scriptProperties: { AI_IMAGES_API_URL: deployment.url, AI_IMAGES_AUTH_MODE: 'api_key' },
      userProperties: { AI_IMAGES_API_KEY: env.API_KEY },
    };
    const on = await runExecution({ ...base, fn: 'openEmailSetting', answers: ['YES'] });
    assert.deepEqual([on.thrown, on.unexpected], [null, []]);
    const sent = await runExecution({ ...base, fn: 'generateSelectedRows', selection: [rowsA1(row)], answers: ['YES'] });
    assert.equal(sent.thrown, null);
    assert.match(sent.dialogs[sent.dialogs.length - 1].text, /You will get an email at ana@example\.com/);
    assert.equal(sent.triggers.length, 1);

    // A slow answer keeps the first run busy while the second one starts.
    await deployment.configure({ routes: [batchRoute('bat_race_mail', ['ended'], { delayMs: 1500 })] });
    const both = await Promise.all([
      runExecution({ ...base, fn: 'checkBatchMail' }),
      runExecution({ ...base, fn: 'checkBatchMail' }),
    ]);
    for (const run of both) assert.equal(run.thrown, null);
    const mails = both.flatMap((run) => run.mails);
    assert.equal(mails.length, 1, `emails: ${JSON.stringify(mails)}`);
    assert.equal(mails[0].subject, 'AI images: batch bat_race_mail ended with failures');
    assert.ok(both.some((run) => run.lockEvents.includes('user acquired')));
    const later = await runExecution({ ...base, fn: 'checkBatchMail' });
    assert.deepEqual([later.mails, later.triggers, later.fetches], [[], [], []]);
  } finally {
    fs.rmSync(shared, { recursive: true, force: true });
  }
});
