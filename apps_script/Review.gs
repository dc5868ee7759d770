/**
 * Pick, promote, hand over: the team's review of the images in the sheet.
 *
 * - Approve selected images, Reject selected images, Mark selected image as final:
 *   each selected image cell (nano_img_n) stands for the image it shows, version k
 *   of variant n of the row's job (its link says &version=k for k > 1). The
 *   decision is sent for that version, and the row's "review" cell, when the sheet
 *   has one, is brought in line with the server's answer.
 * - Send reviews of selected rows: the decisions typed in the "review" cells.
 * - Promote selected image…: the image a cell shows, made again at a larger size (a
 *   draft's with its final model).
 * - Deliver to Drive…: a batch's approved images or final picks, named by a
 *   template, into a Drive folder shared with the pipeline's service account.
 *
 * The "review" cell holds tokens separated by spaces, commas or semicolons:
 *   ✓n  image n is approved        (+n, ✔n or ✅n typed)
 *   ✗n  image n is rejected        (-n, ✘n or ❌n typed)
 *   ★n  image n is the scene's final pick, approved too (*n or ⭐n typed)
 * "image n" is the image the cell nano_img_n shows; "✓2v3" names version 3 of
 * image 2 whatever the cell shows (the script writes it so when the cell shows
 * another version). Example: "✓1 ✓3 ✗2 ★3".
 */

const REVIEW_COLUMN = 'review';
const REVIEW_SIGNS = { approved: '✓', rejected: '✗', final: '★' };
/** What each mark a person may type means. */
const REVIEW_MARKS = {
  '✓': 'approved', '✔': 'approved', '✅': 'approved', '+': 'approved',
  '✗': 'rejected', '✘': 'rejected', '❌': 'rejected', '-': 'rejected', '−': 'rejected',
  '★': 'final', '⭐': 'final', '*': 'final',
};
/** One token: a mark, the image's number, optionally v and a version. */
const REVIEW_TOKEN = /^([✓✔✅+✗✘❌\-−★⭐*])(\d{1,2})(?:[vV](\d{1,3}))?$/;
/** A mark followed by spaces before its number ("✓ 1" is "✓1"). */
const REVIEW_MARK_GAP = /([✓✔✅+✗✘❌\-−★⭐*])\s+(?=\d)/g;
const REVIEW_HELP = '✓n approve, ✗n reject, ★n final (or +n, -n, *n), n being the image ' +
  'column nano_img_n';
/**
 * Image sizes from small to large: a promotion only goes up (the server's
 * shared/services/rerolls.py SIZE_ORDER; tests/unit/test_sheet_contract.py keeps them equal).
 */
const PROMOTE_SIZE_ORDER = ['512', '1K', '2K', '4K'];
/** Deliver to Drive: what it remembers for the next delivery (Document Properties). */
const PROP_DRIVE_FOLDER = 'AI_IMAGES_DRIVE_FOLDER';
const PROP_NAME_TEMPLATE = 'AI_IMAGES_NAME_TEMPLATE';
const DEFAULT_NAME_TEMPLATE = '{scene_id}_{variant}_{version}';
/** Drive folder ids as the server takes them (shared/contracts/requests.py ExportRequest). */
const DRIVE_FOLDER_ID_PATTERN = /^[A-Za-z0-9_-]{1,200}$/;

function approveSelectedImages() {
  runAction_('Approve', function (ui) { decideSelected_(ui, 'approved'); });
}

function rejectSelectedImages() {
  runAction_('Reject', function (ui) { decideSelected_(ui, 'rejected'); });
}

function markSelectedImageFinal() {
  runAction_('Final image', markFinal_);
}

function sendReviewsOfSelectedRows() {
  runAction_('Send reviews', sendReviews_);
}

function promoteSelectedImage() {
  runAction_('Promote', promote_);
}

function deliverToDrive() {
  runAction_('Deliver to Drive', deliver_);
}

// ------------------------------------------------------------------ image cells

/**
 * The version an image cell shows: k from its link's "&version=k", 1 for a link
 * without it, null for an empty cell (no image shown yet).
 */
function shownVersion_(table, row, col) {
  const text = formulaOrText_(table, row, col);
  if (!text) return null;
  const match = /[?&]version=(\d+)/.exec(text);
  return match ? Number(match[1]) : 1;
}

/** The versions a row's image cells show, by image number. */
function shownVersions_(table, row) {
  const shown = {};
  table.images.forEach(function (img) { shown[img.n] = shownVersion_(table, row, img.index); });
  return shown;
}

/**
 * The selected image cells of rows with a job: [{row, n, jobId, sceneId, version}]
 * in row and image order, with `withoutJob` (rows skipped) and `empty` (cells that
 * show no image, skipped when others do: a whole row selected). A selection of
 * empty cells only is kept: the server says why each cannot be decided on. Throws
 * a UserError when the selection holds no image cell of a row with a job.
 */
function selectedImageCells_(table, verb) {
  const list = table.sheet.getActiveRangeList();
  const ranges = list ? list.getRanges() : [];
  const cells = [];
  const seen = {};
  const withoutJob = {};
  ranges.forEach(function (range) {
    const first = Math.max(range.getRow(), HEADER_ROW + 1);
    const last = Math.min(range.getLastRow(), table.lastRow);
    table.images.forEach(function (img) {
      const col = img.index + 1;
      if (col < range.getColumn() || col > range.getLastColumn()) return;
      for (let row = first; row <= last; row++) {
        const key = row + ':' + img.n;
        if (seen[key]) continue;
        seen[key] = true;
        const jobId = cellText_(table.values[row - 1][table.columns.job_id]);
        if (!jobId) {
          if (!isBlankRow_(table, row)) withoutJob[row] = true;
          continue;
        }
        cells.push({
          row: row, n: img.n, jobId: jobId, sceneId: sceneIdOf_(table, row),
          version: shownVersion_(table, row, img.index),
        });
      }
    });
  });
  const help = '\n\nSelect the image cells (nano_img_1, nano_img_2, … columns) of the images ' +
    'to ' + verb + ', in rows that have a job_id, then choose the menu item again.';
  const bare = Object.keys(withoutJob).map(Number).sort(function (a, b) { return a - b; });
  if (!cells.length) {
    throw new UserError((bare.length ? rowsLabel_(bare).replace(/^r/, 'R') + ' ' +
      (bare.length === 1 ? 'has' : 'have') + ' no job_id yet.' : 'No image cell is selected.') +
      help);
  }
  cells.sort(function (a, b) { return a.row - b.row || a.n - b.n; });
  const shown = cells.filter(function (cell) { return cell.version !== null; });
  const kept = shown.length ? shown : cells;
  kept.withoutJob = bare;
  kept.empty = shown.length ? cells.filter(function (cell) { return cell.version === null; }) : [];
  return kept;
}

function imageLabel_(cell, version) {
  const k = version === undefined ? cell.version : version;
  return 'Row ' + cell.row + ' (' + cell.sceneId + '), image ' + cell.n +
    (k && k > 1 ? ' (version ' + k + ')' : '');
}

// ------------------------------------------------------------------ decisions

/** Approve or reject each selected image cell, the version it shows. */
function decideSelected_(ui, decision) {
  const settings = loadSettings_();
  const table = readSheet_({ formulas: true });
  const cells = selectedImageCells_(table, decision === 'approved' ? 'approve' : 'reject');
  const requests = cells.map(function (cell) {
    return { cell: cell, kind: 'review', body: { decision: decision, version: cell.version || 1 } };
  });
  const title = decision === 'approved' ? 'Approve' : 'Reject';
  finishDecisions_(ui, title, table, sendDecisions_(settings, requests), cells);
}

/** Make the selected image cell (one per row) the scene's final pick. */
function markFinal_(ui) {
  const settings = loadSettings_();
  const table = readSheet_({ formulas: true });
  const cells = selectedImageCells_(table, 'mark as final');
  const byRow = {};
  cells.forEach(function (cell) { (byRow[cell.row] = byRow[cell.row] || []).push(cell.n); });
  const crowded = Object.keys(byRow).filter(function (row) { return byRow[row].length > 1; });
  if (crowded.length) {
    throw new UserError('A scene has one final image, but ' + crowded.map(function (row) {
      return 'row ' + row + ' has ' + byRow[row].length + ' image cells selected';
    }).join(', ') + '.\n\nSelect one image cell per row, then choose the menu item again. ' +
      'Nothing was sent.');
  }
  const requests = cells.map(function (cell) {
    return { cell: cell, kind: 'final', body: { variant: cell.n, version: cell.version || 1 } };
  });
  finishDecisions_(ui, 'Final image', table, sendDecisions_(settings, requests), cells);
}

/**
 * Sends each decision in order: {cell, kind: 'review' | 'final', body}. Returns
 * {lines (one per request sent), answers: [{cell, answer}], fatal (an ApiError that
 * stopped the rest, or null)}. A 409 (the image is not finished), 404 or 400 is a
 * line about that cell; anything else (sign-in, budget, server down) stops there.
 */
function sendDecisions_(settings, requests) {
  const out = { lines: [], answers: [], fatal: null };
  for (let i = 0; i < requests.length; i++) {
    const request = requests[i];
    const cell = request.cell;
    const job = '/jobs/' + encodeURIComponent(cell.jobId);
    const path = request.kind === 'final' ? job + ':final' : job + '/variants/' + cell.n + ':review';
    let res;
    try {
      res = callApi_(settings, 'post', path, request.body);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      out.fatal = err;
      break;
    }
    const label = imageLabel_(cell, request.body.version);
    if (res.status === 200 && res.json) {
      out.answers.push({ cell: cell, answer: res.json });
      out.lines.push(label + ': ' + decisionWords_(res.json) + '.');
    } else if (res.status === 409) {
      const said = res.json && res.json.message ? String(res.json.message) : 'the image is not ready';
      out.lines.push(label + ': not recorded — ' + said + '. An image that is still being ' +
        'made cannot be reviewed yet; try again when its cell shows it.');
    } else if (res.status === 404) {
      out.lines.push(label + ': not recorded — job ' + cell.jobId + ' was not found for your ' +
        'sign-in (sent with another API key or account?).');
    } else if (res.status === 400) {
      out.lines.push(label + ': not recorded — ' + apiError_(res, null).message.replace(/\n+/g, ' '));
    } else {
      out.fatal = apiError_(res, null);
      break;
    }
  }
  return out;
}

function decisionWords_(answer) {
  if (answer.decision === 'final') return 'the scene\'s final image (approved)';
  if (answer.decision === 'none') return answer.variant ? 'no decision' : 'no final image';
  return answer.decision;
}

/**
 * Writes the review cells of what was recorded, then shows what happened; `cells`
 * (selectedImageCells_) for the cells skipped.
 */
function finishDecisions_(ui, title, table, sent, cells) {
  const notes = writeReviewCells_(table, sent.answers);
  const lines = sent.lines.slice();
  ((cells && cells.empty) || []).forEach(function (cell) {
    lines.push(imageLabel_(cell) + ': the cell shows no image; skipped.');
  });
  if (cells && cells.withoutJob && cells.withoutJob.length) {
    lines.push(rowsLabel_(cells.withoutJob).replace(/^r/, 'R') + ': no job_id yet, skipped.');
  }
  Array.prototype.push.apply(lines, notes);
  if (sent.fatal) {
    throw new UserError(sent.fatal.message + (lines.length
      ? '\n\nBefore that:\n' + limitLines_(lines, MAX_ERROR_LINES).join('\n') : ''));
  }
  ui.alert(dialogTitle_(title), limitLines_(lines, MAX_ERROR_LINES).join('\n'), ui.ButtonSet.OK);
}

// ------------------------------------------------------------------ the review cell

/**
 * A row's review cell as text. Sheets keeps "+1 -2" typed by hand as a formula
 * (=+1 -2) and "-2" as a number: both are read back as typed. `number` is set for
 * a positive number, which "+1" also becomes and which is no token.
 */
function reviewCellText_(table, row) {
  const col = columnOf_(table, REVIEW_COLUMN);
  if (col < 0) return { text: '' };
  const formula = table.formulas ? table.formulas[row - 1][col] : '';
  if (formula) return { text: formula.replace(/^=/, '').trim() };
  const value = table.values[row - 1][col];
  if (typeof value === 'number') {
    return { text: String(value), number: !(Number.isInteger(value) && value < 0) };
  }
  return { text: cellText_(value) };
}

/** The tokens of a review text: {tokens: [{decision, n, version (null: shown)}], bad: [pieces]}. */
function parseReviewText_(text) {
  const clean = String(text || '').replace(/\uFE0F/g, '').replace(REVIEW_MARK_GAP, '$1');
  const tokens = [];
  const bad = [];
  clean.split(/[\s,;]+/).forEach(function (piece) {
    if (!piece) return;
    const match = REVIEW_TOKEN.exec(piece);
    if (!match || Number(match[2]) < 1 || (match[3] !== undefined && Number(match[3]) < 1)) {
      bad.push(piece);
      return;
    }
    tokens.push({
      decision: REVIEW_MARKS[match[1]],
      n: Number(match[2]),
      version: match[3] === undefined ? null : Number(match[3]),
      raw: piece,
    });
  });
  return { tokens: tokens, bad: bad };
}

/**
 * What a review cell says, with every version resolved (a bare n is the version
 * its cell shows, 1 for an empty cell): {marks: {"n:k": approved | rejected},
 * final: {n, version} | null, rest: pieces kept as typed}. A final pick is approved.
 */
function reviewState_(parsed, shown) {
  const state = { marks: {}, final: null, rest: parsed.bad.slice() };
  parsed.tokens.forEach(function (token) {
    const version = token.version || shown[token.n] || 1;
    const key = token.n + ':' + version;
    if (token.decision === 'final') {
      state.final = { n: token.n, version: version };
      state.marks[key] = 'approved';
    } else {
      state.marks[key] = token.decision;
    }
  });
  return state;
}

/** A state as the script writes it: approvals, rejections, the final pick, then the rest. */
function formatReviewState_(state, shown) {
  const label = function (n, version) {
    return n + (shown[n] === version ? '' : 'v' + version);
  };
  const keys = Object.keys(state.marks).map(function (key) {
    const parts = key.split(':');
    return { key: key, n: Number(parts[0]), version: Number(parts[1]) };
  }).sort(function (a, b) { return a.n - b.n || a.version - b.version; });
  const parts = [];
  ['approved', 'rejected'].forEach(function (decision) {
    keys.forEach(function (k) {
      if (state.marks[k.key] === decision) parts.push(REVIEW_SIGNS[decision] + label(k.n, k.version));
    });
  });
  if (state.final) parts.push(REVIEW_SIGNS.final + label(state.final.n, state.final.version));
  return parts.concat(state.rest).join(' ');
}

/** The server's answer (a decision or a final pick) folded into a state. */
function applyReviewAnswer_(state, answer) {
  if (answer.decision !== 'final' && answer.variant && answer.version) {
    const key = answer.variant + ':' + answer.version;
    if (answer.decision === 'approved' || answer.decision === 'rejected') {
      state.marks[key] = answer.decision;
    } else {
      delete state.marks[key];
    }
  }
  // The answer's final pick is the scene's after this decision (rejecting it clears it).
  state.final = answer.final ? { n: answer.final.variant, version: answer.final.version } : null;
  if (state.final) state.marks[state.final.n + ':' + state.final.version] = 'approved';
}

/**
 * Brings the review cells of the answered rows in line with the answers: the rows
 * are read again (they may have moved meanwhile) and found by scene_id; a row now
 * holding another job is left alone. Returns notes for the dialog.
 */
function writeReviewCells_(table, answers) {
  if (!answers.length || columnOf_(table, REVIEW_COLUMN) < 0) return [];
  const lock = documentLock_();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    return ['The review cells were not updated: another action from this spreadsheet is ' +
      'running. The decisions above are recorded on the server.'];
  }
  const notes = [];
  try {
    const now = rereadSheet_(table);
    const rows = rowsByScene_(now);
    const col = columnOf_(now, REVIEW_COLUMN);
    const bySceneJob = {};
    const order = [];
    answers.forEach(function (item) {
      const key = JSON.stringify([item.cell.sceneId, item.cell.jobId]);
      if (!bySceneJob[key]) {
        bySceneJob[key] = { cell: item.cell, answers: [] };
        order.push(key);
      }
      bySceneJob[key].answers.push(item.answer);
    });
    const updates = [];
    order.forEach(function (key) {
      const entry = bySceneJob[key];
      const row = rows[entry.cell.sceneId];
      if (!row || col < 0 ||
          cellText_(now.values[row - 1][now.columns.job_id]) !== entry.cell.jobId) {
        notes.push('Row ' + entry.cell.row + ' (' + entry.cell.sceneId + '): its review cell ' +
          'was not updated (the row moved on or was sent again meanwhile).');
        return;
      }
      const shown = shownVersions_(now, row);
      const before = reviewCellText_(now, row);
      const state = reviewState_(parseReviewText_(before.text), shown);
      entry.answers.forEach(function (answer) { applyReviewAnswer_(state, answer); });
      const text = formatReviewState_(state, shown);
      if (text !== before.text) updates.push({ row: row, col: col, value: textCell_(text) });
    });
    writeCells_(now.sheet, updates);
    SpreadsheetApp.flush();
  } finally {
    lock.releaseLock();
  }
  return notes;
}

// ------------------------------------------------------------------ Send reviews

/** The review cells of the selected rows, checked, then sent decision by decision. */
function sendReviews_(ui) {
  const settings = loadSettings_();
  const table = readSheet_({ formulas: true });
  if (columnOf_(table, REVIEW_COLUMN) < 0) {
    throw new UserError('The sheet "' + table.sheet.getName() + '" has no "' + REVIEW_COLUMN +
      '" column in row 1.\n\nAdd one and type the decisions of each row in it (' + REVIEW_HELP +
      '; e.g. ✓1 ✓3 ✗2 ★3), or use "Approve selected images", "Reject selected images" and ' +
      '"Mark selected image as final" on the image cells.');
  }
  const rows = selectedSceneRows_(table);
  const problems = [];
  const plans = [];
  let empty = 0;
  rows.forEach(function (row) {
    const where = 'Row ' + row + ': ';
    const read = reviewCellText_(table, row);
    if (!read.text) {
      empty += 1;
      return;
    }
    if (read.number) {
      problems.push(where + 'the review cell holds the number ' + read.text + ' (Sheets turns ' +
        'a typed "+' + read.text + '" into a number): write ✓' + read.text + ' instead, or ' +
        'type an apostrophe first (\'+' + read.text + ').');
      return;
    }
    const jobId = cellText_(table.values[row - 1][table.columns.job_id]);
    if (!jobId) {
      problems.push(where + 'no job_id yet: send the row with "Generate selected rows" first.');
      return;
    }
    const shown = shownVersions_(table, row);
    const found = reviewProblems_(row, read.text, shown);
    if (found.problems.length) {
      Array.prototype.push.apply(problems, found.problems);
      return;
    }
    plans.push({ row: row, jobId: jobId, sceneId: sceneIdOf_(table, row), state: found.state });
  });
  if (problems.length) {
    throw new UserError('Nothing was sent: ' + plural_(problems.length, 'problem') + ' in the ' +
      'review cells of the selected rows.\n\n' + limitLines_(problems, MAX_ERROR_LINES).join('\n') +
      '\n\nTokens: ' + REVIEW_HELP + '; "✓2v3" names version 3 of image 2.');
  }
  if (!plans.length) {
    throw new UserError('The review cells of the selected rows are empty: nothing to send.\n\n' +
      'Type the decisions of each row in its "' + REVIEW_COLUMN + '" cell (' + REVIEW_HELP +
      '; e.g. ✓1 ✓3 ✗2 ★3), then choose the menu item again.');
  }
  const requests = [];
  plans.forEach(function (plan) {
    const cellOf = function (n) {
      return { row: plan.row, n: n, jobId: plan.jobId, sceneId: plan.sceneId };
    };
    const state = plan.state;
    const finalKey = state.final ? state.final.n + ':' + state.final.version : '';
    // Rejections first (one may clear the old final pick), approvals, then the pick.
    ['rejected', 'approved'].forEach(function (decision) {
      Object.keys(state.marks).sort().forEach(function (key) {
        if (state.marks[key] !== decision || key === finalKey) return;
        const parts = key.split(':').map(Number);
        requests.push({ cell: cellOf(parts[0]), kind: 'review',
          body: { decision: decision, version: parts[1] } });
      });
    });
    if (state.final) {
      requests.push({ cell: cellOf(state.final.n), kind: 'final',
        body: { variant: state.final.n, version: state.final.version } });
    }
  });
  const sent = sendDecisions_(settings, requests);
  if (empty) sent.lines.push(plural_(empty, 'selected row') + ' with an empty review cell: nothing sent for ' +
    (empty === 1 ? 'it' : 'them') + '.');
  finishDecisions_(ui, 'Send reviews', table, sent, null);
}

/** What is wrong with a row's review text; {problems, state}. */
function reviewProblems_(row, text, shown) {
  const where = 'Row ' + row + ': ';
  const parsed = parseReviewText_(text);
  const problems = parsed.bad.map(function (piece) {
    return where + '"' + clip_(piece) + '" is not a review token.';
  });
  const decided = {};
  const finals = [];
  parsed.tokens.forEach(function (token) {
    if (!(token.n in shown)) {
      problems.push(where + '"' + token.raw + '": the sheet has no image column nano_img_' +
        token.n + '.');
      return;
    }
    const version = token.version || shown[token.n] || 1;
    const key = token.n + ':' + version;
    const verdict = token.decision === 'rejected' ? 'rejected' : 'approved';
    if (decided[key] && decided[key].verdict !== verdict) {
      problems.push(where + '"' + decided[key].raw + '" and "' + token.raw + '" contradict each ' +
        'other (an image is approved or rejected; a final image is approved).');
    }
    decided[key] = { verdict: verdict, raw: token.raw };
    if (token.decision === 'final' && finals.every(function (f) { return f.key !== key; })) {
      finals.push({ key: key, raw: token.raw });
    }
  });
  if (finals.length > 1) {
    problems.push(where + finals.map(function (f) { return '"' + f.raw + '"'; }).join(' and ') +
      ': a scene has one final image.');
  }
  return { problems: problems, state: reviewState_(parsed, shown) };
}

// ------------------------------------------------------------------ Promote

/** The image the selected cell shows, made again at a larger size (asked), once per click. */
function promote_(ui) {
  const settings = loadSettings_();
  const table = readSheet_({ formulas: true });
  const target = selectedImage_(table);
  const img = table.images.filter(function (i) { return i.n === target.n; })[0];
  target.version = shownVersion_(table, target.row, img.index);
  const what = 'image ' + target.n + ' of ' + target.sceneId + ' (row ' + target.row + ')';
  if (!target.version) {
    throw new UserError('The cell of ' + what + ' shows no image yet: only a finished image ' +
      'can be promoted.');
  }
  const limits = deploymentLimits_(settings);
  const res = callApi_(settings, 'get', '/status/' + encodeURIComponent(target.jobId));
  if (res.status === 404) {
    throw new UserError('Job ' + target.jobId + ' (row ' + target.row + ') was not found for ' +
      'your sign-in (sent with another API key or account?).');
  }
  if (res.status !== 200 || !res.json) throw apiError_(res, null);
  const view = res.json;
  const variant = (view.variants || []).filter(function (v) { return v.variant === target.n; })[0];
  const version = variant && (variant.versions || []).filter(function (v) {
    return v.version === target.version;
  })[0];
  const shownAs = what + (target.version > 1 ? ', version ' + target.version : '');
  if (!version || version.state !== 'done') {
    throw new UserError('Version ' + target.version + ' of ' + what + ' is not finished ' +
      (version ? '(' + version.state + ')' : '(the server does not know it)') + ': only a ' +
      'finished image can be promoted. Use "Refresh status", then try again.');
  }
  const choice = promotionSizes_(table, target.row, view, version, limits);
  if (!choice.sizes.length) {
    throw new UserError(shownAs + ' was made at ' + choice.current + ', the largest size ' +
      choice.model + ' makes (' + choice.all.join(', ') + '): there is nothing larger to ' +
      'promote it to.');
  }
  const suggested = choice.suggested;
  const reply = ui.prompt(dialogTitle_('Promote'),
    'Promote ' + shownAs + ' to a larger size?\n\n' +
    (choice.draft
      ? 'It is a draft (' + (version.model || view.model) + (choice.current ? ', ' + choice.current : '') +
        '): it is made again with the final model, ' + choice.model + '.'
      : 'It was made at ' + choice.current + ' with ' + choice.model + ' and is made again at ' +
        'the size you choose.') +
    ' The image itself is the reference; it is priced like any new image at that size, and ' +
    'the earlier versions stay. If it is the scene\'s final image, the final pick moves to ' +
    'the larger one when it is done.\n\n' +
    'Type the size: ' + choice.sizes.join(' or ') + ' (leave empty for ' + suggested + ').',
    ui.ButtonSet.OK_CANCEL);
  if (reply.getSelectedButton() !== ui.Button.OK) {
    ui.alert(dialogTitle_('Promote'), 'Nothing was sent.', ui.ButtonSet.OK);
    return;
  }
  const typed = String(reply.getResponseText() || '').trim();
  const size = typed ? choiceOf_(choice.sizes, typed) : suggested;
  if (!size) {
    throw new UserError('"' + clip_(typed) + '" is not one of ' + choice.sizes.join(', ') +
      '. Nothing was sent.');
  }
  const lock = documentLock_();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    throw new UserError('Another action from this spreadsheet is running; try again in a moment.');
  }
  let sent;
  try {
    const path = '/jobs/' + encodeURIComponent(target.jobId) + '/variants/' + target.n + ':promote';
    sent = sendVersionRequest_(settings, [target.jobId, target.n, target.version, size], 'promote',
      path, { image_size: size, version: target.version });
  } finally {
    lock.releaseLock();
  }
  if (sent.repeat) {
    ui.alert(dialogTitle_('Promote'), 'This was just sent (version ' + sent.repeat.version +
      ' of ' + what + ', at ' + size + '), so nothing was sent again.', ui.ButtonSet.OK);
    return;
  }
  const answer = sent.answer;
  if (answer.state === 'failed') {
    throw new UserError('Version ' + answer.version + ' of ' + what + ' (' + size + ') could ' +
      'not be queued: ' + answer.error);
  }
  ui.alert(dialogTitle_('Promote'),
    'Version ' + answer.version + ' of ' + what + ' is being made at ' + size + ' with ' +
    choice.model + ', from version ' + target.version + ' ($' + answer.price_per_image_usd +
    '). The cell shows it when it is done (use "Refresh status" to see it sooner); the ' +
    'earlier versions stay available.', ui.ButtonSet.OK);
}

/**
 * The sizes an image may be promoted to: those its model (a draft's final model)
 * makes (GET /limits), larger than the one it was made at; a draft may also be made
 * again at its final size. {model, sizes, suggested, current, all, draft}.
 */
function promotionSizes_(table, row, view, version, limits) {
  const draft = !!view.final_model && version.kind !== 'promote';
  const model = view.final_model || view.model;
  const shape = limits.models[model];
  if (!shape) {
    throw new UserError('This image\'s model, ' + model + ', is not one this deployment ' +
      'offers any more (' + Object.keys(limits.models).join(', ') + '), so it cannot be promoted.');
  }
  const rank = function (size) { return PROMOTE_SIZE_ORDER.indexOf(String(size).toUpperCase()); };
  const all = shape.imageSizes.filter(function (size) { return rank(size) >= 0; });
  let current;
  let floor;
  if (draft) {
    // Made with another model: its final size (or any larger one) with the final model.
    current = version.image_size || '';
    floor = view.final_size ? rank(view.final_size) : -1;
  } else {
    const rowSize = choiceOf_(shape.imageSizes, cellText_(cellOf_(table, row, 'image_size')).toUpperCase());
    current = version.image_size || view.image_size || (rowSize !== null && rowSize !== '' ? rowSize : '') ||
      shape.defaultImageSize || '1K';
    floor = rank(current) + 1;
  }
  const sizes = all.filter(function (size) { return rank(size) >= floor; });
  const suggested = draft && view.final_size && sizes.indexOf(view.final_size) >= 0
    ? view.final_size : sizes[0];
  return { model: model, sizes: sizes, suggested: suggested, current: current, all: all, draft: draft };
}

// ------------------------------------------------------------------ Deliver to Drive

/** A batch's approved images or final picks into a Drive folder, named by a template. */
function deliver_(ui) {
  const title = dialogTitle_('Deliver to Drive');
  const settings = loadSettings_();
  const table = readSheet_();
  const batchId = batchOfSelectedRows_(settings, table);
  const props = documentProperties_();
  const oldFolder = props.getProperty(PROP_DRIVE_FOLDER) || '';
  const oldTemplate = props.getProperty(PROP_NAME_TEMPLATE) || DEFAULT_NAME_TEMPLATE;
  const nothing = function () {
    ui.alert(title, 'Nothing was delivered.', ui.ButtonSet.OK);
  };

  const folderReply = ui.prompt(title,
    'Step 1 of 3 — the Google Drive folder for batch ' + batchId + ': paste its link ' +
    '(https://drive.google.com/drive/folders/…) or its id.\n\n' +
    'Share the folder with the pipeline\'s service account as an Editor first (ask the ' +
    'pipeline\'s administrator for its address).\n\n' +
    'Current: ' + (oldFolder || '(none)') + (oldFolder ? '\nLeave empty to keep it.' : ''),
    ui.ButtonSet.OK_CANCEL);
  if (folderReply.getSelectedButton() !== ui.Button.OK) return nothing();
  const folderText = String(folderReply.getResponseText() || '').trim() || oldFolder;
  const folder = driveFolderId_(folderText);
  if (!folder) {
    throw new UserError(folderText
      ? '"' + clip_(folderText) + '" is not a Drive folder\'s link or id. Nothing was delivered.'
      : 'A Drive folder is needed to deliver to. Nothing was delivered.');
  }

  const templateReply = ui.prompt(title,
    'Step 2 of 3 — file names: a template of {scene_id}, {variant}, {version}, {job_id}, ' +
    '{model}, {image_size} and the row\'s own columns ({Some Header}); the extension is ' +
    'added, and a name used twice gets _2, _3….\n\n' +
    'Current: ' + oldTemplate + '\nLeave empty to keep it; type "default" for ' +
    DEFAULT_NAME_TEMPLATE + '.',
    ui.ButtonSet.OK_CANCEL);
  if (templateReply.getSelectedButton() !== ui.Button.OK) return nothing();
  const typed = String(templateReply.getResponseText() || '').trim();
  const template = !typed ? oldTemplate
    : (typed.toLowerCase() === 'default' ? DEFAULT_NAME_TEMPLATE : typed);

  const which = ui.alert(title,
    'Step 3 of 3 — which images of batch ' + batchId + ' go to the folder?\n\n' +
    'Yes: the approved images (each scene\'s final image is approved too).\n' +
    'No: each scene\'s final image only.\n' +
    'Cancel: deliver nothing.\n\n' +
    'Rejected images and images nobody decided on are never delivered. Files already in ' +
    'the folder from an earlier delivery are not copied again.',
    ui.ButtonSet.YES_NO_CANCEL);
  if (which !== ui.Button.YES && which !== ui.Button.NO) return nothing();
  const only = which === ui.Button.YES ? 'approved' : 'final';

  const body = {
    only: only,
    name_template: template,
    destination: 'drive',
    drive_folder_id: folder,
  };
  const res = callApi_(settings, 'post', '/batches/' + encodeURIComponent(batchId) + ':export', body);
  if (res.status !== 202 || !res.json) throw deliveryError_(res, batchId);
  // Remembered for the next delivery from this spreadsheet (not secret).
  props.setProperty(PROP_DRIVE_FOLDER, folder);
  props.setProperty(PROP_NAME_TEMPLATE, template);
  const view = waitForExport_(settings, batchId, res.json, true);
  const link = 'https://drive.google.com/drive/folders/' + folder;
  const chosen = only === 'approved' ? 'approved images' : 'final images';
  if (view.state === 'failed') {
    throw new UserError('The ' + chosen + ' of batch ' + batchId + ' could not be delivered to ' +
      'the Drive folder ' + folder + ': ' + (view.error || 'no reason given') + '\n\nCheck that ' +
      'the folder is shared with the pipeline\'s service account as an Editor.');
  }
  if (view.state !== 'done') {
    ui.alert(title, 'The ' + chosen + ' of batch ' + batchId + ' are still being delivered to ' +
      link + '.\n\nChoose "Deliver to Drive…" again with the same answers in a minute to see ' +
      'how it went: files already in the folder are not copied twice.', ui.ButtonSet.OK);
    return;
  }
  ui.alert(title,
    'Batch ' + batchId + ': ' + plural_(view.images || 0, chosen.replace(/s$/, '')) + ' delivered ' +
    'to ' + link + '\n' +
    '  ' + plural_(view.added || 0, 'file') + ' added, ' +
    plural_(view.present || 0, 'file') + ' already there.\n\n' +
    'Named ' + template + '; with a manifest (CSV and JSON) of what each file is.',
    ui.ButtonSet.OK);
}

/** A Drive folder's id from its link (…/folders/ID, ?id=ID) or the id itself; null if neither. */
function driveFolderId_(text) {
  const t = String(text || '').trim();
  const match = /\/folders\/([A-Za-z0-9_-]+)/.exec(t) || /[?&]id=([A-Za-z0-9_-]+)/.exec(t);
  const id = match ? match[1] : t;
  return DRIVE_FOLDER_ID_PATTERN.test(id) ? id : null;
}

/** An export the server refused: its field (only, name_template, drive_folder_id) in words. */
function deliveryError_(res, batchId) {
  const body = res.json && typeof res.json === 'object' ? res.json : {};
  const details = Array.isArray(body.details) ? body.details : [];
  if (res.status === 400 && details.length) {
    const words = {
      only: 'Which images',
      name_template: 'File names',
      drive_folder_id: 'Drive folder',
    };
    return new UserError('The server refused the delivery of batch ' + batchId + ':\n\n' +
      details.map(function (d) {
        const field = String(d.field || '');
        return '  • ' + (words[field] ? words[field] + ' (' + field + ')' : field || 'request') +
          ': ' + String(d.reason || d.message || '');
      }).join('\n') + '\n\nNothing was delivered.');
  }
  return apiError_(res, null);
}
