/**
 * Iterating on scenes from the sheet: cancel rows, re-roll or edit one image
 * (a new version; the earlier ones stay), and download a batch as one zip.
 */

/** How long "Download batch" waits for the zip before saying to come back. */
const EXPORT_WAIT_MS = 60 * 1000;
const EXPORT_POLL_MS = 2000;
/** A second click on Re-roll / Edit within this time sends nothing again. */
const REROLL_WINDOW_MS = 60 * 1000;
const REROLL_PREFIX = 'AI_IMAGES_REROLL_';

function cancelSelectedRows() {
  runAction_('Cancel', cancel_);
}

function rerollSelectedImage() {
  runAction_('Re-roll', function (ui) { reroll_(ui, false); });
}

function editSelectedImage() {
  runAction_('Edit', function (ui) { reroll_(ui, true); });
}

function downloadBatch() {
  runAction_('Download batch', download_);
}

// ------------------------------------------------------------------ Cancel

function cancel_(ui) {
  const settings = loadSettings_();
  const table = readSheet_();
  const rows = rowsWithJobs_(table);
  const answer = ui.alert(
    dialogTitle_('Cancel'),
    'Cancel the jobs of ' + plural_(rows.length, 'row') + ' (' + rowsLabel_(rows) + ')?\n\n' +
      'Images whose generation is already running are finished and kept; the others are ' +
      'not made, and their share of the daily budget is given back.',
    ui.ButtonSet.YES_NO);
  if (answer !== ui.Button.YES) {
    ui.alert(dialogTitle_('Cancel'), 'Nothing was cancelled.', ui.ButtonSet.OK);
    return;
  }
  const lines = [];
  rows.forEach(function (row) {
    const jobId = cellText_(table.values[row - 1][table.columns.job_id]);
    const res = callApi_(settings, 'post', '/jobs/' + encodeURIComponent(jobId) + ':cancel');
    if (res.status !== 200 || !res.json) {
      if (res.status === 404) {
        lines.push('Row ' + row + ': job ' + jobId + ' not found for your sign-in.');
        return;
      }
      throw apiError_(res, null);
    }
    lines.push('Row ' + row + ': ' + cancelText_(res.json));
  });
  // Show the new states now, as the pipeline will (each row found again by its scene_id).
  const lock = documentLock_();
  if (lock.tryLock(LOCK_WAIT_MS)) {
    try {
      refreshRows_(settings, table.sheet, jobTargets_(table, rows));
    } finally {
      lock.releaseLock();
    }
  }
  ui.alert(dialogTitle_('Cancel'), lines.join('\n'), ui.ButtonSet.OK);
}

function cancelText_(answer) {
  const kept = plural_(answer.kept, 'image') + ' kept';
  if (answer.outcome === 'cancelled') return 'cancelled, ' + kept + '.';
  if (answer.outcome === 'cancelling') {
    return 'cancelled; ' + plural_(answer.running, 'image') + ' already being made will ' +
      'finish and be kept (' + kept + ' so far).';
  }
  if (answer.outcome === 'already_cancelled') return 'was already cancelled (' + kept + ').';
  return 'had already finished (' + answer.state + '); nothing to cancel.';
}

/** Selected rows that have a job_id; throws when there are none. */
function rowsWithJobs_(table) {
  const rows = selectedRowNumbers_(table).filter(function (row) {
    return cellText_(table.values[row - 1][table.columns.job_id]) !== '';
  });
  if (!rows.length) {
    throw new UserError('No selected row has a job_id.\n\nSelect the rows of scenes that were ' +
      'sent with "Generate selected rows", then choose the menu item again.');
  }
  return rows;
}

// ------------------------------------------------------------------ Re-roll / Edit

function reroll_(ui, edit) {
  const settings = loadSettings_();
  const table = readSheet_();
  const target = selectedImage_(table);
  const title = edit ? 'Edit' : 'Re-roll';
  const what = 'image ' + target.n + ' of ' + target.sceneId + ' (row ' + target.row + ')';
  let instruction = null;
  if (edit) {
    const reply = ui.prompt(dialogTitle_(title),
      'What should change in ' + what + '?\n\nThe current image is edited with your words; ' +
      'it stays available as an earlier version.', ui.ButtonSet.OK_CANCEL);
    if (reply.getSelectedButton() !== ui.Button.OK) {
      ui.alert(dialogTitle_(title), 'Nothing was sent.', ui.ButtonSet.OK);
      return;
    }
    instruction = String(reply.getResponseText() || '').trim();
    if (!instruction) throw new UserError('Type what should change in the image; nothing was sent.');
  } else {
    const answer = ui.alert(dialogTitle_(title),
      'Make a new version of ' + what + ' with a new seed? It is priced like any image; ' +
      'the current one stays available as an earlier version.', ui.ButtonSet.YES_NO);
    if (answer !== ui.Button.YES) {
      ui.alert(dialogTitle_(title), 'Nothing was sent.', ui.ButtonSet.OK);
      return;
    }
  }
  const lock = documentLock_();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    throw new UserError('Another action from this spreadsheet is running; try again in a moment.');
  }
  let message;
  try {
    message = sendReroll_(settings, target, instruction, what);
  } finally {
    lock.releaseLock();
  }
  ui.alert(dialogTitle_(title), message, ui.ButtonSet.OK);
}

/** Sends once per click: a lost answer is retried with the same key, a double click sends nothing. */
function sendReroll_(settings, target, instruction, what) {
  const path = '/jobs/' + encodeURIComponent(target.jobId) + '/variants/' + target.n + ':reroll';
  const sent = sendVersionRequest_(settings, [target.jobId, target.n, instruction], 'reroll', path,
    instruction ? { instruction: instruction } : {});
  if (sent.repeat) {
    return 'This was just sent (version ' + sent.repeat.version + ' of ' + what + '), so nothing ' +
      'was sent again.';
  }
  const answer = sent.answer;
  if (answer.state === 'failed') {
    return 'Version ' + answer.version + ' of ' + what + ' could not be queued: ' + answer.error;
  }
  return 'Version ' + answer.version + ' of ' + what + ' is being made ($' +
    answer.price_per_image_usd + '). The cell shows it when it is done (use "Refresh status" ' +
    'to see it sooner); the earlier versions stay available.';
}

/**
 * POST `path` with `body` once per click (a re-roll, an edit, a promotion): under an
 * Idempotency-Key kept in the Document Properties for REROLL_WINDOW_MS with the
 * hash of `what` (what makes the request the same), so a lost answer is retried with
 * the same key and a double click sends nothing. Returns {answer} (the 202's JSON) or
 * {repeat: the record of the same request just sent}; throws a UserError otherwise.
 */
function sendVersionRequest_(settings, what, kind, path, body) {
  const hash = sha256Hex_(JSON.stringify(kind === 'reroll' ? what : [kind].concat(what)));
  const props = documentProperties_();
  const record = parseRecord_(props.getProperty(REROLL_PREFIX + hash));
  const fresh = record && Date.now() - record.at < REROLL_WINDOW_MS;
  if (fresh && record.state === 'sent') return { repeat: record };
  const current = fresh && record.state === 'sending'
    ? record
    : { key: 'sheets-' + kind + '-' + Utilities.getUuid(), state: 'sending', at: Date.now() };
  props.setProperty(REROLL_PREFIX + hash, JSON.stringify(current));
  const res = callApi_(settings, 'post', path, body, { 'Idempotency-Key': current.key });
  if (res.status === 409 && res.json && res.json.error === 'not_ready') {
    props.deleteProperty(REROLL_PREFIX + hash);
    throw new UserError(String(res.json.message) + '.');
  }
  if (res.status !== 202 || !res.json) {
    if (!(res.status === 409 || res.status >= 500)) props.deleteProperty(REROLL_PREFIX + hash);
    throw apiError_(res, null);
  }
  const answer = res.json;
  current.state = 'sent';
  current.version = answer.version;
  current.at = Date.now();
  props.setProperty(REROLL_PREFIX + hash, JSON.stringify(current));
  return { answer: answer };
}

/** The one selected image cell: its row, variant and job. */
function selectedImage_(table) {
  const range = table.sheet.getActiveRange();
  const help = '\n\nClick one image cell (a nano_img_1, nano_img_2, … column) of a row that ' +
    'has a job_id, then choose the menu item again.';
  if (!range || range.getNumRows() !== 1 || range.getNumColumns() !== 1) {
    throw new UserError('Select exactly one image cell.' + help);
  }
  const row = range.getRow();
  const image = table.images.filter(function (img) { return img.index === range.getColumn() - 1; })[0];
  if (!image || row <= HEADER_ROW || row > table.lastRow) {
    throw new UserError('The selected cell is not an image cell of a scene row.' + help);
  }
  const values = table.values[row - 1];
  const jobId = cellText_(values[table.columns.job_id]);
  if (!jobId) throw new UserError('Row ' + row + ' has no job_id yet.' + help);
  return { row: row, n: image.n, jobId: jobId, sceneId: sceneIdOf_(table, row) };
}

// ------------------------------------------------------------------ Download

function download_(ui) {
  const settings = loadSettings_();
  const table = readSheet_();
  const batchId = batchOfSelectedRows_(settings, table);
  const res = callApi_(settings, 'post', '/batches/' + encodeURIComponent(batchId) + ':export');
  if (res.status !== 202 || !res.json) throw apiError_(res, null);
  const view = waitForExport_(settings, batchId, res.json);
  if (view.state === 'failed') {
    throw new UserError('The zip of batch ' + batchId + ' could not be made: ' + view.error);
  }
  if (view.state !== 'done') {
    ui.alert(dialogTitle_('Download batch'), 'The zip of batch ' + batchId + ' is still being ' +
      'made. Choose "Download batch" again in a minute to get its link.', ui.ButtonSet.OK);
    return;
  }
  const html = '<p>Batch ' + escapeHtml_(batchId) + ': ' + plural_(view.images, 'image') +
    ' at full size and manifest.csv (' + Math.max(1, Math.round(view.bytes / 1048576)) +
    ' MB).</p><p><a href="' + escapeHtml_(view.download_url) +
    '" target="_blank" rel="noopener">Download the zip</a></p>' +
    '<p>The link keeps working; anyone who has it can download the zip.</p>';
  ui.showModalDialog(
    HtmlService.createHtmlOutput(html).setWidth(420).setHeight(180), dialogTitle_('Download batch'));
}

/** The one batch the selected rows' jobs belong to (GET /status of each); throws otherwise. */
function batchOfSelectedRows_(settings, table) {
  const rows = rowsWithJobs_(table);
  const jobIds = rows.map(function (row) {
    return cellText_(table.values[row - 1][table.columns.job_id]);
  });
  const batches = {};
  fetchJobStatuses_(settings, jobIds).forEach(function (res, i) {
    if (res.status !== 200 || !res.json) {
      if (res.status === 404) return;
      throw apiError_(res, null);
    }
    (batches[res.json.batch_id] = batches[res.json.batch_id] || []).push(rows[i]);
  });
  const ids = Object.keys(batches);
  if (!ids.length) throw new UserError('The selected rows\' jobs were not found for your sign-in.');
  if (ids.length > 1) {
    throw new UserError('The selected rows belong to ' + ids.length + ' batches (' +
      ids.map(function (id) { return id + ': ' + rowsLabel_(batches[id]); }).join('; ') +
      '). Select rows of one batch.');
  }
  return ids[0];
}

/**
 * The export once done or failed, asking GET /batches/{id} every EXPORT_POLL_MS; as
 * it last was (queued or running) after EXPORT_WAIT_MS. With `own`, another export of
 * the batch asked for meanwhile (someone else's click) is not taken for this one:
 * that stops the wait with a UserError.
 */
function waitForExport_(settings, batchId, first, own) {
  let view = first;
  const deadline = Date.now() + EXPORT_WAIT_MS;
  while (view.state !== 'done' && view.state !== 'failed' && Date.now() < deadline) {
    Utilities.sleep(EXPORT_POLL_MS);
    const batch = callApi_(settings, 'get', '/batches/' + encodeURIComponent(batchId));
    if (batch.status !== 200 || !batch.json) throw apiError_(batch, null);
    const now = batch.json.export;
    if (!now) continue;
    if (own && first.export_id && now.export_id !== first.export_id) {
      throw new UserError('Another export of batch ' + batchId + ' was asked for while this ' +
        'one was being made (a Download batch or Deliver from someone else?), and replaced ' +
        'it. Choose the menu item again.');
    }
    view = now;
  }
  return view;
}

function escapeHtml_(text) {
  return String(text).replace(/[&<>"']/g, function (c) {
    return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
  });
}
