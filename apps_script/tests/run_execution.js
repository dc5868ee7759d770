'use strict';
/**
 * One execution of the script in its own process, for races between two
 * executions (a double click). Reads a JSON job on stdin:
 *   {env, fn, selection, sharedDir, scriptProperties, userProperties, answers,
 *    sharedUserProperties, userEmail, dieAfterLiveAnswers}
 * and prints what the execution did as JSON on stdout. Document properties, the
 * locks and the triggers live in `sharedDir`, shared with the other process; with
 * `sharedUserProperties` the user properties too (two executions of one person).
 * With `dieAfterLiveAnswers: n` the process exits (code 137, nothing printed) as soon
 * as the nth live POST /batch/images is answered: an execution stopped mid-send.
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
  if (job.dieAfterLiveAnswers) {
    // The execution is stopped (Apps Script's time limit, say) once the nth live
    // request has been answered by the server, before the script sees the answer.
    let live = 0;
    h.duringFetch(
      (entry) => entry.json && entry.json.runMode === 'live' && ++live === job.dieAfterLiveAnswers,
      () => process.exit(137),
    );
  }
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
