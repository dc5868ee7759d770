'use strict';
/**
 * One execution of the script in its own process, for races between two
 * executions (a double click). Reads a JSON job on stdin:
 *   {env, fn, selection, sharedDir, scriptProperties, userProperties, answers,
 *    sharedUserProperties, userEmail}
 * and prints what the execution did as JSON on stdout. Document properties, the
 * locks and the triggers live in `sharedDir`, shared with the other process; with
 * `sharedUserProperties` the user properties too (two executions of one person).
 */
const { createHarness, triggersOf } = require('./harness');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const job = JSON.parse(input);
  const h = createHarness({
    env: job.env,
    selection: job.selection,
    sharedDir: job.sharedDir,
    scriptProperties: job.scriptProperties,
    userProperties: job.userProperties,
    sharedUserProperties: job.sharedUserProperties,
    userEmail: job.userEmail,
  });
  h.answer(...(job.answers || []));
  const run = h.run(job.fn);
  const out = {
    thrown: run.thrown ? String(run.thrown.stack || run.thrown) : null,
    unexpected: run.unexpected,
    dialogs: run.dialogs.map((d) => ({ title: d.title, text: d.text, answer: d.answer })),
    fetches: run.fetches.map((f) => ({
      method: f.method,
      url: f.url,
      runMode: f.json ? f.json.runMode : null,
      key: f.headers['Idempotency-Key'] || null,
      status: f.status === undefined ? null : f.status,
    })),
    lockEvents: h.lockEvents,
    mails: run.mails,
    triggers: triggersOf(h),
  };
  process.stdout.write(JSON.stringify(out), () => process.exit(0));
});
