/**
 * AI images: the spreadsheet menu of the Sheets-driven image pipeline.
 *
 * Estimate, Generate, Refresh and Cancel work on the selected rows of the active sheet
 * (header in row 1: scene_id, prompt, ref_pack_public_url, variants,
 * status_img, nano_img_1..n, job_id). Every menu action catches its errors and
 * shows them as a dialog: a message for people, never a stack trace.
 *
 * Files: Code.gs (menu and actions), Iterate.gs (cancel, re-roll, edit,
 * download), Review.gs (approve, reject, final pick, promote, deliver to Drive),
 * Sheet.gs (reading, checking and writing rows), Briefs.gs (prompt
 * templates, avoid, characters and products), Api.gs (HTTP calls and error
 * messages), Chunks.gs (a large selection sent as several requests),
 * Submissions.gs (idempotency of "Generate"), Settings.gs (the Settings dialogs
 * and stored properties), Notify.gs (the email when a batch ends or needs
 * attention).
 */

const MENU_TITLE = 'AI images';
/** How long a document lock may be waited for before giving up. */
const LOCK_WAIT_MS = 30 * 1000;
/** How many rows' prompts (as composed from a template) the Estimate dialog shows. */
const ESTIMATE_PROMPTS_SHOWN = 3;

// Both error classes live here: a class that extends one from another file would
// depend on the order in which Apps Script loads the files.

/** An error whose message is meant for the person at the sheet. */
class UserError extends Error {
  constructor(message, title) {
    super(message);
    this.name = 'UserError';
    this.title = title || '';
  }
}

/** An API answer that is not what we asked for; `uncertain` if it may have run anyway. */
class ApiError extends UserError {
  constructor(message, status, code, uncertain) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code || '';
    this.uncertain = !!uncertain;
  }
}

function onOpen() {
  SpreadsheetApp.getUi()
    .createMenu(MENU_TITLE)
    .addItem('Estimate selected rows', 'estimateSelectedRows')
    .addItem('Generate selected rows', 'generateSelectedRows')
    .addItem('Generate drafts of selected rows', 'generateDraftsOfSelectedRows')
    .addItem('Refresh status', 'refreshStatus')
    .addSeparator()
    .addItem('Cancel selected rows', 'cancelSelectedRows')
    .addItem('Re-roll selected image', 'rerollSelectedImage')
    .addItem('Edit selected image…', 'editSelectedImage')
    .addItem('Promote selected image…', 'promoteSelectedImage')
    .addSeparator()
    .addItem('Approve selected images', 'approveSelectedImages')
    .addItem('Reject selected images', 'rejectSelectedImages')
    .addItem('Mark selected image as final', 'markSelectedImageFinal')
    .addItem('Send reviews of selected rows', 'sendReviewsOfSelectedRows')
    .addSeparator()
    .addItem('Download batch', 'downloadBatch')
    .addItem('Deliver to Drive…', 'deliverToDrive')
    .addSeparator()
    .addItem('Settings', 'openSettings')
    .addItem('Email me about my batches…', 'openEmailSetting')
    .addToUi();
}

function estimateSelectedRows() {
  runAction_('Estimate', estimate_);
}

function generateSelectedRows() {
  runAction_('Generate', function (ui) { generate_(ui, false); });
}

/** Generate with every image made as a draft (cheapest model and size); picks are promoted later. */
function generateDraftsOfSelectedRows() {
  runAction_('Generate drafts', function (ui) { generate_(ui, true); });
}

function refreshStatus() {
  runAction_('Refresh status', refresh_);
}

function openSettings() {
  runAction_('Settings', settingsDialog_);
}

function openEmailSetting() {
  runAction_('Email me', emailSettingDialog_);
}

/** Runs one menu action; any error becomes a dialog instead of a stack trace. */
function runAction_(title, action) {
  const ui = SpreadsheetApp.getUi();
  try {
    action(ui);
  } catch (err) {
    if (err instanceof UserError) {
      ui.alert(dialogTitle_(err.title || title), err.message, ui.ButtonSet.OK);
      return;
    }
    console.error(err && err.stack ? err.stack : String(err));
    const text = err && err.message ? err.message : String(err);
    ui.alert(
      dialogTitle_(title),
      'Something went wrong: ' + text +
        '\n\nIf this keeps happening, tell the pipeline\'s administrator ' +
        '(details are in the script\'s execution log).',
      ui.ButtonSet.OK);
  }
}

/** The lock shared by every execution on this spreadsheet (needs a bound script). */
function documentLock_() {
  const lock = LockService.getDocumentLock();
  if (!lock) throw new UserError(NOT_BOUND_TEXT);
  return lock;
}

const NOT_BOUND_TEXT = 'This script must be bound to the spreadsheet: open the spreadsheet, ' +
  'then Extensions → Apps Script, and install it there.';

function dialogTitle_(title) {
  return MENU_TITLE + ': ' + title;
}

// ------------------------------------------------------------------ Estimate

function estimate_(ui) {
  const table = readSheet_();
  const rows = selectedSceneRows_(table);
  const settings = loadSettings_();
  const batch = checkedBatch_(table, rows, deploymentLimits_(settings));
  const plan = planChunks_(settings, table, batch, batch.chunks, allChunks_(batch.chunks));
  const prompts = briefLines_(batch, ESTIMATE_PROMPTS_SHOWN);
  ui.alert(
    dialogTitle_('Estimate'),
    planText_(plan, batch) + (prompts.length ? '\n\n' + prompts.join('\n') : '') +
      '\n\nNothing has been sent. Use "Generate selected rows" to start.',
    ui.ButtonSet.OK);
}

// ------------------------------------------------------------------ Generate

function generate_(ui, drafts) {
  const title = drafts ? 'Generate drafts' : 'Generate';
  const table = readSheet_();
  const rows = selectedSceneRows_(table);
  const settings = loadSettings_();
  const limits = deploymentLimits_(settings);
  const batch = checkedBatch_(table, rows, limits);
  batch.drafts = !!drafts;
  const sent = batch.styleRefs.length ? [batch.items, batch.styleRefs] : batch.items;
  // Drafts of the same rows are another request than their final images.
  const hash = submissionHash_(table, drafts ? { drafts: true, batch: sent } : sent);
  let seen = getSubmission_(hash);

  // A send of these rows that stopped part-way goes on in its own chunks: only the
  // chunks not answered yet are estimated (and sent).
  let sizes = batch.chunks;
  let pending = allChunks_(sizes);
  if (seen && seen.state === 'sending') {
    const own = recordChunks_(seen, batch.items.length);
    if (own) {
      sizes = own;
      pending = pendingChunks_(seen);
    } else {
      seen = null;  // not a record of these rows after all
    }
  }
  const plan = planChunks_(settings, table, batch, sizes, pending);
  const view = chunksView_(batch, sizes, pending);

  // A first send chooses its lane: Yes live, No economy (half price, within 24 h).
  const again = seen && seen.state === 'sent';
  const answer = ui.alert(
    dialogTitle_(title), confirmText_(plan, view, seen, batch),
    again ? ui.ButtonSet.YES_NO : ui.ButtonSet.YES_NO_CANCEL);
  const lane = answer === ui.Button.YES ? 'live' : (!again && answer === ui.Button.NO ? 'economy' : null);
  if (!lane) {
    ui.alert(dialogTitle_(title), 'Nothing was sent.', ui.ButtonSet.OK);
    return;
  }

  // Two clicks are two executions running side by side: only one at a time may
  // mark rows and send, and the second must see what the first did.
  const lock = documentLock_();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    throw new UserError(
      'Another "Generate" from this spreadsheet is still running. ' +
      'Wait until it has finished, then try again. Nothing was sent.');
  }
  let message;
  try {
    message = submitLocked_(settings, limits, batch, hash, seen, lane, table.sheet);
  } finally {
    lock.releaseLock();  // before the final dialog, which waits for a click
  }
  ui.alert(dialogTitle_(title), message, ui.ButtonSet.OK);
}

/**
 * Marks the rows, sends the batch (in its chunks) and writes the job ids; returns
 * the message to show. Runs under the document lock; after each (slow) request
 * every write finds its row again by scene_id, in the sheet as it is then.
 */
function submitLocked_(settings, limits, batch, hash, seen, lane, sheet) {
  const current = getSubmission_(hash);
  if (current && current.state === 'sent' && !sameSubmission_(seen, current)) {
    return 'These rows were already sent ' + ago_(current.at) + ' (' +
      recordBatchesText_(current) + '), by another click on Generate, so nothing was sent again.';
  }
  if (seen && seen.state === 'sending' && !(current && current.nonce === seen.nonce)) {
    // The send the question spoke of is gone (expired) or was replaced meanwhile.
    throw new UserError(
      'The record of the earlier send of these rows changed while the question was open, so ' +
      'nothing was sent. Choose "Generate selected rows" again.');
  }
  // The rows may have changed while the question was open: check again.
  const table = readSheet_({ formulas: true, sheet: sheet });
  const fresh = batchForRows_(table, batch.rows, limits, batch.styleRefs.length);
  if (fresh.errors.length || JSON.stringify(fresh.items) !== JSON.stringify(batch.items) ||
      JSON.stringify(styleRefs_(table).refs) !== JSON.stringify(batch.styleRefs)) {
    throw new UserError(
      'The selected rows changed while the question was open, so nothing was sent. ' +
      'Check them and choose "Generate selected rows" again.');
  }

  // A send that got no answer, or stopped part-way, goes on with its chunks and keys,
  // so that no chunk can run twice.
  let record = current && current.state === 'sending' ? current : null;
  if (!record || !recordChunks_(record, batch.items.length)) {
    record = newSubmission_(hash, batch.chunks);
  }
  record.state = 'sending';
  record.at = Date.now();
  saveSubmission_(hash, record);
  return sendChunks_(settings, table, batch, hash, record, lane);
}

/**
 * Sends the chunks of the record not answered yet, one after the other: each
 * chunk's rows are marked "queued" just before it is sent, its job ids written
 * (and flushed) as soon as it is answered, and only then is the chunk recorded as
 * answered, so a stopped execution leaves every answered row marked with its job
 * and the next Generate of the same rows sends only the rest. A chunk whose
 * answer is lost is asked again with the same key (postChunk_). A refused chunk
 * stops the send: its rows are put back, and the message says which rows were
 * sent and which were not.
 */
function sendChunks_(settings, table, batch, hash, record, lane) {
  const sizes = record.chunks;
  const total = sizes.length;
  const images = chunkImages_(batch, sizes);
  const allImages = images.reduce(function (n, k) { return n + k; }, 0);
  const before = allChunks_(sizes).filter(function (i) { return !!record.batches[i]; });
  let sheetNow = table;  // the sheet as last read: rows are found again in it
  const answers = {};
  const replayed = [];
  const failed = [];
  const missing = [];
  let mail = '';
  const doneImages = function () {
    return allChunks_(sizes).reduce(function (n, i) {
      return n + (record.batches[i] ? images[i] : 0);
    }, 0);
  };
  if (total > 1) {
    table.ss.toast('Sending ' + plural_(allImages, 'image').replace(/^\d+/, thousands_) + ' in ' +
      total + ' chunks' + (before.length ? ' (' + before.length + ' sent earlier)' : '') + '…',
      MENU_TITLE, 30);
  }

  for (let i = 0; i < total; i++) {
    if (record.batches[i]) continue;
    const chunk = chunkOf_(batch, sizes, i);
    // Rows found again by scene_id: they may have moved while earlier chunks were sent.
    const rowsNow = rowsByScene_(sheetNow);
    const marked = Object.assign({}, chunk, {
      rows: chunk.scenes.map(function (s) { return rowsNow[s.scene_id]; })
        .filter(function (row) { return !!row; }),
    });
    // Marked before sending, so that a fast job is never overwritten by a late "queued".
    const marks = queuedMarks_(sheetNow, marked);
    writeCells_(sheetNow.sheet, marks.updates);
    SpreadsheetApp.flush();

    let res;
    try {
      res = postChunk_(settings, sheetNow, chunk, chunkKey_(record, i), lane);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const anySent = record.batches.some(function (id) { return !!id; });
      if (!err.uncertain) {
        const gone = restoreMarks_(sheetNow, marks);
        const goneText = gone.length ? '\n\n' + plural_(gone.length, 'scene') + ' no longer in ' +
          'the sheet (deleted, or the scene_id changed, while the batch was sent) could not be ' +
          'put back: ' + gone.join(', ') + '.' : '';
        if (!anySent) {
          deleteSubmission_(hash);
          throw new UserError(err.message + '\n\nNothing was sent; the rows are as they were.' +
            goneText);
        }
        throw new UserError(stoppedText_(err, batch, record, i, false) + goneText);
      }
      if (total === 1) {
        throw new UserError(
          err.message + '\n\nIt is not known whether the batch arrived; the rows stay marked ' +
          '"queued". Choose "Generate selected rows" again ' + windowText_() + ': the same ' +
          'request is sent again and the server does not run it twice.');
      }
      throw new UserError(stoppedText_(err, batch, record, i, true));
    }

    const sent = res.json;
    const written = writeJobIds_(sheetNow, chunk, sent);
    SpreadsheetApp.flush();  // the job ids are in the sheet before the record says so
    record.batches[i] = sent.batch_id;
    record.at = Date.now();
    saveSubmission_(hash, record);
    sheetNow = written.table;
    answers[i] = { json: sent, replay: header_(res, 'idempotent-replay') === 'true' };
    Array.prototype.push.apply(failed, written.failed);
    Array.prototype.push.apply(missing, written.missing);
    if (answers[i].replay) replayed.push(i);
    mail = watchIfAsked_(sent.batch_id, table) || mail;
    if (total > 1) {
      const done = record.batches.filter(function (id) { return !!id; }).length;
      table.ss.toast('Sent ' + done + ' of ' + total + ' chunks (' + thousands_(doneImages()) +
        ' of ' + thousands_(allImages) + ' images).', MENU_TITLE, 30);
    }
  }

  record.state = 'sent';
  record.batch_id = record.batches[0];
  record.at = Date.now();
  saveSubmission_(hash, record);

  // An earlier attempt of a chunk did arrive: its rows get the real state of its jobs.
  let replayText = '';
  if (replayed.length) {
    const targets = [];
    replayed.forEach(function (i) {
      (answers[i].json.jobs || []).forEach(function (job) {
        if (!Object.prototype.hasOwnProperty.call(batch.rowOfScene, job.scene_id)) return;
        targets.push({ row: batch.rowOfScene[job.scene_id], sceneId: job.scene_id, jobId: String(job.job_id) });
      });
    });
    const what = total === 1 ? 'This batch had' : capitalized_(chunksLabel_(replayed)) + ' had';
    let it = { was: 'they were', rows: 'Their rows', its: 'their' };
    if (replayed.length === 1) {
      it = { was: 'it was', rows: total === 1 ? 'The rows' : 'Its rows', its: 'its' };
    }
    try {
      const refreshed = refreshRows_(settings, table.sheet, targets);
      replayText = what + ' already arrived from an earlier attempt; ' + it.was + ' not run ' +
        'twice. ' + it.rows + ' now show ' + it.its + ' jobs (' + countsText_(refreshed.states) + ').';
    } catch (err) {
      replayText = what + ' already arrived from an earlier attempt; ' + it.was + ' not run ' +
        'twice. Use "Refresh status" to show the state of ' + it.its + ' jobs.';
    }
  }

  const lines = [];
  if (total === 1) {
    const one = answers[0].json;
    lines.push('Batch ' + one.batch_id + ' accepted: ' + plural_(one.job_count, 'scene') + ', ' +
      plural_(one.image_count, batch.drafts ? 'draft image' : 'image') + ', estimated $' +
      one.estimated_cost_usd +
      (lane === 'economy' ? ' in the economy lane (results within 24 hours)' : '') + '.');
  } else {
    const sentNow = Object.keys(answers).map(Number);
    const cost = moneyText_(sentNow.reduce(function (n, i) {
      return n + moneyUnits_(answers[i].json.estimated_cost_usd);
    }, 0));
    lines.push('All ' + total + ' chunks accepted, each a batch of its own: ' +
      plural_(batch.scenes.length, 'scene') + ', ' +
      plural_(allImages, batch.drafts ? 'draft image' : 'image').replace(/^\d+/, thousands_) +
      ', estimated $' + cost + (before.length ? ' for the ' + plural_(sentNow.length, 'chunk') +
        ' sent now' : '') +
      (lane === 'economy' ? ' in the economy lane (results within 24 hours)' : '') + '.');
    limitLines_(allChunks_(sizes).map(function (i) {
      const rows = chunkOf_(batch, sizes, i).rowsLabel;
      const note = answers[i] ? (answers[i].replay ? ' (had already arrived: replayed)' : '')
        : ' (sent earlier)';
      return '  • chunk ' + (i + 1) + ', ' + rows + ': batch ' + record.batches[i] + note;
    }), 20).forEach(function (line) { lines.push(line); });
  }
  if (batch.drafts) {
    lines.push('Review the drafts (Approve / Mark as final), then "Promote selected image…" ' +
      'makes the chosen ones at the final model and size.');
  }
  lines.push('');
  if (total === 1 && replayText) {
    lines.push(replayText);
  } else {
    lines.push('The rows are marked "queued" and fill in as the images finish ' +
      '(use "Refresh status" to update them).');
    if (replayText) lines.push(replayText);
  }
  if (mail) {
    lines.push('');
    lines.push(total === 1 ? mail : mail.replace('this batch', 'each of these batches'));
  }
  if (failed.length) {
    lines.push('');
    lines.push('Could not be queued:');
    limitLines_(failed, MAX_ERROR_LINES).forEach(function (line) { lines.push('  • ' + line); });
  }
  if (missing.length) {
    lines.push('');
    lines.push('Rows no longer in the sheet (deleted, or their scene_id changed, while the ' +
      'batch was sent):');
    limitLines_(missing, MAX_ERROR_LINES).forEach(function (line) { lines.push('  • ' + line); });
  }
  return lines.join('\n');
}

/**
 * What a send that stopped at chunk `index` did: the error, the rows sent (with
 * their batches), the chunk whose answer is unknown (`uncertain`) or that was
 * refused (its rows put back), the rows not sent, and how to go on.
 */
function stoppedText_(err, batch, record, index, uncertain) {
  const sizes = record.chunks;
  const total = sizes.length;
  const done = allChunks_(sizes).filter(function (i) { return !!record.batches[i]; });
  const later = allChunks_(sizes).filter(function (i) { return i > index && !record.batches[i]; });
  const chunk = chunkOf_(batch, sizes, index);
  const lines = [
    'Chunk ' + (index + 1) + ' of ' + total + ' (' + chunk.rowsLabel + ') ' +
      (uncertain ? 'got no answer' : 'was refused') + ', so the send stopped there.',
    '',
    err.message,
    '',
  ];
  if (done.length) {
    lines.push('Sent: ' + chunksView_(batch, sizes, done).rowsLabel + ' (' + chunksLabel_(done) +
      ', ' + recordBatchesText_(record) + '): these rows have their job ids and fill in as ' +
      'their images finish.');
  }
  if (uncertain) {
    lines.push('Not known: ' + chunk.rowsLabel + ' (chunk ' + (index + 1) + '): it is not known ' +
      'whether it arrived; its rows stay marked "queued".');
    if (later.length) {
      lines.push('Not sent: ' + chunksView_(batch, sizes, later).rowsLabel + ' (' +
        chunksLabel_(later) + '); these rows are as they were.');
    }
    lines.push('');
    lines.push('Choose "Generate selected rows" again on the same rows ' + windowText_() +
      ': the rows already sent are not sent again, chunk ' + (index + 1) + ' is sent again with ' +
      'the same key (the server does not run it twice), then the rest.');
  } else {
    const unsent = [index].concat(later);
    lines.push('Not sent: ' + chunksView_(batch, sizes, unsent).rowsLabel + ' (' +
      chunksLabel_(unsent) + '); these rows are as they were.');
    lines.push('');
    lines.push('To send the rest, select the same rows and choose "Generate selected rows" ' +
      'again ' + windowText_() + ' (when the problem is solved): the rows already sent are not ' +
      'sent again. Or select only the rows not sent (changed rows are always a new send).');
  }
  return lines.join('\n');
}

/** How long a send that stopped can be taken up again. */
function windowText_() {
  return 'within ' + plural_(Math.round(SENDING_WINDOW_MS / 3600000), 'hour');
}

/**
 * The question before a send: `plan` and `view` are of the chunks still to send
 * (all of them, unless an earlier send of these rows stopped part-way: `seen`).
 */
function confirmText_(plan, view, seen, batch) {
  const head = [];
  if (seen && seen.state === 'sent') {
    head.push('These exact rows were already sent ' + ago_(seen.at) + ' (' +
      recordBatchesText_(seen) + ').');
    head.push('Send them AGAIN as a new batch (and pay again)?');
  } else {
    const sizes = seen && seen.state === 'sending' ? seen.chunks : null;
    const done = sizes ? allChunks_(sizes).filter(function (i) { return !!seen.batches[i]; }) : [];
    if (done.length) {
      head.push('An earlier send of these rows (' + ago_(seen.started || seen.at) + ') stopped ' +
        'part-way: ' + done.length + ' of ' + sizes.length + ' chunks were accepted (' +
        chunksView_(batch, sizes, done).rowsLabel + ', ' + recordBatchesText_(seen) + '). ' +
        'Those rows keep their jobs and are not sent again.');
      head.push('Sending the rest is safe: a chunk that arrived without an answer is not run ' +
        'twice.');
      head.push('');
    } else if (seen && seen.state === 'sending') {
      head.push('An earlier attempt to send these rows ' + ago_(seen.at) + ' got no answer. ' +
        'Sending again is safe: if it did arrive, the server will not run it twice.');
      head.push('');
    }
    head.push('Generate ' + plural_(plan.image_count, view.drafts ? 'draft image' : 'image') +
      ' for ' + plural_(plan.job_count, 'scene') + (done.length ? ' (the rows not sent yet)' : '') +
      '?');
    if (view.drafts) {
      head.push('Drafts are made at the cheapest model and size; promote the ones you pick ' +
        'to the final model and size afterwards (Promote selected image…).');
    }
    const lanes = plan.lanes || {};
    if (lanes.live && lanes.economy) {
      head.push('');
      head.push('Yes: live lane, $' + lanes.live + ', images in minutes.');
      head.push('No: economy lane, $' + lanes.economy + ' (half price), images within 24 hours.');
      head.push('Cancel: send nothing.');
      const own = view.scenes.filter(function (scene) { return scene.lane; });
      if (own.length) {
        head.push('(' + plural_(own.length, 'row') + ' of the selection ' +
          (own.length === 1 ? 'names its' : 'name their') + ' own lane in the "lane" ' +
          'column and keep' + (own.length === 1 ? 's' : '') + ' it whatever you answer.)');
      }
    }
  }
  return head.join('\n') + '\n\n' + planText_(plan, view);
}

// ------------------------------------------------------------------ Refresh

function refresh_(ui) {
  const settings = loadSettings_();
  const table = readSheet_();
  const jobCol = table.columns.job_id;
  const selected = selectedRowNumbers_(table).filter(function (row) {
    return cellText_(table.values[row - 1][jobCol]) !== '';
  });
  let rows = selected;
  let scope = 'selected rows';
  if (!rows.length) {
    // Nothing with a job selected: every row whose job is not finished yet.
    scope = 'unfinished rows';
    for (let row = HEADER_ROW + 1; row <= table.lastRow; row++) {
      const values = table.values[row - 1];
      if (cellText_(values[jobCol]) && !isFinalStatus_(cellText_(values[table.columns.status_img]))) {
        rows.push(row);
      }
    }
  }
  if (!rows.length) {
    throw new UserError(
      'There is nothing to refresh: no selected row has a job_id, and every row with a ' +
      'job_id is finished.\n\nRows get a job_id when they are sent with "Generate selected rows".',
      'Refresh status');
  }
  let note = '';
  if (rows.length > REFRESH_MAX_JOBS) {
    note = '\n\nOnly the first ' + REFRESH_MAX_JOBS + ' of ' + rows.length +
      ' rows were refreshed; run Refresh again for the rest.';
    rows = rows.slice(0, REFRESH_MAX_JOBS);
  }

  const lock = documentLock_();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    throw new UserError('A "Generate" from this spreadsheet is running; try again in a moment.');
  }
  let result;
  try {
    result = refreshRows_(settings, table.sheet, jobTargets_(table, rows));
  } finally {
    lock.releaseLock();
  }
  const summary = 'Refreshed ' + plural_(result.checked, 'row') + ' (' + scope + '): ' +
    countsText_(result.states) + '; ' + plural_(result.written, 'row') + ' updated.' +
    skippedText_(result);
  if (result.problems.length || note) {
    ui.alert(dialogTitle_('Refresh status'),
      summary + (result.problems.length
        ? '\n\nProblems:\n' + limitLines_(result.problems, 20).map(function (p) {
          return '  • ' + p;
        }).join('\n')
        : '') + note,
      ui.ButtonSet.OK);
  } else {
    table.ss.toast(summary, MENU_TITLE, 8);
  }
}

/**
 * Pulls the jobs of the given targets ({row, sceneId, jobId}: jobTargets_) from
 * /status and writes what advanced: status_img, and nano_img_k as =IMAGE(thumbnail
 * link). Called under the document lock. The sheet is read again after /status
 * answers, and each answer is written only into the row that shows its scene_id
 * (the first, as the server writes it) and names its job in job_id at that
 * moment, never moving a cell back from what it shows then.
 */
function refreshRows_(settings, sheet, targets) {
  const before = readSheet_({ formulas: true, sheet: sheet });
  const rowsBefore = rowsByScene_(before);
  const snapshots = targets.map(function (target) {
    const row = rowsBefore[target.sceneId];
    const owner = row ? cellText_(before.values[row - 1][before.columns.job_id]) : '';
    return owner === target.jobId ? rowSnapshot_(before, row) : null;
  });
  const answers = fetchJobStatuses_(settings, targets.map(function (t) { return t.jobId; }));

  const now = rereadSheet_(before);
  const rowsNow = rowsByScene_(now);
  const result = {
    checked: targets.length, written: 0, states: {}, problems: [], gone: 0, taken: 0,
  };
  const failures = [];
  const updates = [];
  targets.forEach(function (target, i) {
    const res = answers[i];
    const row = rowsNow[target.sceneId];
    const where = 'Row ' + (row || target.row) + ' (job ' + target.jobId + ')';
    if (res.status !== 200 || !res.json) {
      failures.push(res);
      result.problems.push(where + ': ' +
        (res.status === 404
          ? 'not found for your sign-in (sent with another API key or account?)'
          : apiError_(res, null).message.split('\n')[0]));
      return;
    }
    const view = res.json;
    result.states[view.state] = (result.states[view.state] || 0) + 1;
    if (String(view.job_id) !== target.jobId || String(view.scene_id) !== target.sceneId) {
      result.problems.push(where + ': the job is of scene_id "' + view.scene_id + '", not "' +
        target.sceneId + '"; the row was not written.');
      return;
    }
    if (!row) {
      result.gone += 1;
      return;
    }
    if (cellText_(now.values[row - 1][now.columns.job_id]) !== target.jobId) {
      result.taken += 1;  // sent again meanwhile: the row is its new job's
      return;
    }
    const cells = rowUpdatesForJob_(now, row, view, snapshots[i]);
    if (cells.length) {
      result.written += 1;
      Array.prototype.push.apply(updates, cells);
    }
  });
  // Every call failed the same way (signed out, server down): say that, not per row.
  if (failures.length && failures.length === targets.length &&
      failures.every(function (r) { return r.status === failures[0].status; }) &&
      failures[0].status !== 404) {
    throw apiError_(failures[0], null);
  }
  writeCells_(now.sheet, updates);
  return result;
}

/** The rows refreshRows_ left alone because they moved on, for the summary ('' if none). */
function skippedText_(result) {
  let text = '';
  if (result.gone) {
    text += ' ' + plural_(result.gone, 'row') + ' skipped: ' +
      (result.gone === 1 ? 'its scene_id is' : 'their scene_ids are') +
      ' no longer in the sheet.';
  }
  if (result.taken) {
    text += ' ' + plural_(result.taken, 'row') + ' skipped: sent again meanwhile, ' +
      (result.taken === 1 ? 'it belongs' : 'they belong') + ' to the new job.';
  }
  return text;
}

// ------------------------------------------------------------------ helpers

function planText_(plan, batch) {
  const lines = [];
  lines.push(plural_(plan.job_count, 'scene') + ' (' + batch.rowsLabel + '), ' +
    plural_(plan.image_count, 'image'));
  const drafts = (plan.jobs || []).some(function (job) { return job.final_model; });
  lines.push('Estimated cost: $' + plan.estimated_cost_usd +
    (drafts ? ' as drafts' : ' with ' + plan.model) +
    ' ($' + plan.price_per_image_usd + ' per image)');
  const lanes = plan.lanes || {};
  if (lanes.economy) {
    lines.push('Economy lane (Gemini Batch API, half price, within 24 hours): $' +
      lanes.economy);
  }
  const jobs = plan.jobs || [];
  if (jobs.length && jobs.length <= 12) {
    jobs.forEach(function (job) {
      lines.push('  • row ' + batch.rowOfScene[job.scene_id] + ', ' + job.scene_id + ': ' +
        plural_(job.variants, job.final_model ? 'draft' : 'image') + ', $' +
        job.estimated_cost_usd + (job.final_model
          ? ' (' + job.model + (job.image_size ? ' ' + job.image_size : '') + '; picks promoted ' +
            'to ' + job.final_model + (job.final_size ? ' ' + job.final_size : '') + ')'
          : ''));
    });
  }
  if (plan.chunks > 1) {
    lines.push('Sent in ' + plan.chunks + ' chunks, one after the other, each a batch of its ' +
      'own: more than one request to the image service may hold.');
  }
  Array.prototype.push.apply(lines, deliveredLines_(plan.delivered));
  const budget = budgetLines_(plan.budget);
  if (budget.length) {
    lines.push('');
    lines.push('Budget:');
    Array.prototype.push.apply(lines, budget);
    if (overBudget_(plan)) {
      lines.push(plan.chunks > 1
        ? '  ⚠ This is more than what is left for today: the server will refuse the chunk ' +
          'that goes past it, and the send stops there (the chunks before it are made).'
        : '  ⚠ This is more than what is left for today: the server will refuse it.');
    }
  }
  const warnings = plan.warnings || [];
  if (warnings.length) {
    lines.push('');
    lines.push('Warnings:');
    limitLines_(warnings.map(function (w) {
      // A warning without a scene is about the whole batch (say, its model going away).
      return '  • ' + (w.scene_id ? sceneLabel_(batch, w.scene_id) + ': ' : '') + w.message;
    }), 15).forEach(function (line) { lines.push(line); });
  }
  return lines.join('\n');
}

/**
 * What one delivered image (one pick per scene) costs both ways, from the plan's
 * `delivered`: every image made final, or drafts first and the pick promoted.
 */
function deliveredLines_(delivered) {
  if (!delivered || typeof delivered !== 'object' || !delivered.every_image_final_usd) return [];
  const cheaper = Number(delivered.drafts_then_promote_usd) < Number(delivered.every_image_final_usd);
  return [
    '',
    'Per delivered image (one pick per scene):',
    '  every image made final: $' + delivered.every_image_final_usd,
    '  drafts, then the pick promoted: $' + delivered.drafts_then_promote_usd +
      (cheaper ? (delivered.saving ? ' (saves ' + delivered.saving + ')' : '')
        : ' (no saving for these rows: making every image final costs less)'),
  ];
}

function overBudget_(plan) {
  const b = plan.budget;
  if (!b || typeof b !== 'object') return false;
  const images = Number(b.images_remaining);
  const cost = Number(b.cost_remaining_usd);
  return (!isNaN(images) && plan.image_count > images) ||
    (!isNaN(cost) && Number(plan.estimated_cost_usd) > cost);
}

function sceneLabel_(batch, sceneId) {
  const row = batch && batch.rowOfScene[sceneId];
  return row ? 'Row ' + row + ' (' + sceneId + ')' : String(sceneId);
}

function capitalized_(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function plural_(n, word) {
  return n + ' ' + word + (n === 1 ? '' : 's');
}

function countsText_(states) {
  const names = Object.keys(states).sort();
  if (!names.length) return 'no jobs';
  return names.map(function (name) { return name + ' ' + states[name]; }).join(', ');
}

function limitLines_(lines, max) {
  if (lines.length <= max) return lines;
  return lines.slice(0, max).concat(['…and ' + (lines.length - max) + ' more']);
}

function ago_(when) {
  const seconds = Math.max(0, Math.round((Date.now() - when) / 1000));
  if (seconds < 90) return plural_(seconds, 'second') + ' ago';
  return plural_(Math.round(seconds / 60), 'minute') + ' ago';
}
