/**
 * Reading, checking and writing scene rows. Columns are found by header name
 * (row 1), rows by the selection; nothing depends on column order.
 *
 * A row's prompt, what it avoids and the characters and products it names are
 * read by Briefs.gs (templates in named ranges, composed as the server does).
 *
 * Rows are checked against two kinds of rules. What a deployment can change
 * (rows per batch, variants, prompt length, the model's sizes and aspect
 * ratios) comes from the server, GET /limits (deploymentLimits_ in Api.gs), and
 * is never written here. What no deployment changes (the scene id pattern, the
 * anchor syntax, the first words of a status) is kept below, each a copy of its
 * Python source; tests/unit/test_sheet_contract.py fails when one side changes alone.
 */

const HEADER_ROW = 1;
/** A row's prompt may come from a template (Briefs.gs), so "prompt" is not required. */
const REQUIRED_COLUMNS = ['scene_id', 'variants', 'status_img', 'job_id'];
/** The server's rule for scene ids (shared/contracts/requests.py SCENE_ID_PATTERN). */
const SCENE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAX_ERROR_LINES = 25;
/** Job states the server reports (GET /status: state). */
const FINAL_STATES = ['completed', 'partial', 'failed', 'cancelled'];
const RUNNING_STATES = ['generating'];
/**
 * First words of a running job's status: it is made, waits for the Gemini quota
 * or for its Gemini batch (economy), or was cancelled and finishes the images
 * already being made.
 */
const RUNNING_WORDS = ['generating', 'waiting', 'paused', 'economy', 'cancelling'];
/** The named range holding the batch's style references (README: "Style references"). */
const STYLE_REFS_RANGE = 'style_refs';
/** An earlier output named as a reference (the server's shared/domain/anchors.py). */
const ANCHOR_PATTERN = /^(scene|job):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}#[1-9][0-9]?$/;
/** The rank of a final state: nothing moves a row back from it. */
const FINAL_RANK = 3;

/**
 * The whole active sheet (or options.sheet) in one read: values (and formulas with
 * options.formulas), header, columns, and each row's scene_id as the cell shows it.
 *
 * Scene ids are what the cell shows (getDisplayValues), as the server reads them
 * to find a scene's row: a number-like id (12, 007, 1.5) is matched the same way
 * on both sides.
 */
function readSheet_(options) {
  const ss = SpreadsheetApp.getActiveSpreadsheet();
  const sheet = options && options.sheet ? options.sheet : ss.getActiveSheet();
  const lastRow = sheet.getLastRow();
  const lastColumn = sheet.getLastColumn();
  if (lastRow < 1 || lastColumn < 1) {
    throw new UserError(missingColumnsText_(sheet, REQUIRED_COLUMNS));
  }
  const range = sheet.getRange(1, 1, lastRow, lastColumn);
  const values = range.getValues();
  const formulas = options && options.formulas ? range.getFormulas() : null;
  const header = values[HEADER_ROW - 1].map(cellText_);
  const columns = {};
  header.forEach(function (name, i) {
    if (name && !Object.prototype.hasOwnProperty.call(columns, name)) columns[name] = i;
  });
  const missing = REQUIRED_COLUMNS.filter(function (name) { return !(name in columns); });
  if (missing.length) throw new UserError(missingColumnsText_(sheet, missing));
  const images = [];
  header.forEach(function (name, i) {
    const match = /^nano_img_(\d+)$/.exec(name);
    if (match && columns[name] === i) images.push({ n: Number(match[1]), index: i });
  });
  const sceneIds = sheet.getRange(1, columns.scene_id + 1, lastRow, 1).getDisplayValues()
    .map(function (line) { return cellText_(line[0]); });
  return {
    ss: ss, sheet: sheet, lastRow: lastRow, lastColumn: lastColumn, values: values,
    formulas: formulas, header: header, columns: columns, images: images, sceneIds: sceneIds,
  };
}

/** The sheet as it is now: read again just before writing, after a slow request. */
function rereadSheet_(table) {
  return readSheet_({ formulas: true, sheet: table.sheet });
}

/** A row's scene_id as the cell shows it, trimmed ('' for none). */
function sceneIdOf_(table, row) {
  return table.sceneIds[row - 1] || '';
}

/**
 * The row of each scene_id: the first one that shows it, the row the server
 * writes too. Rows are found again this way before every write that follows a
 * slow request, since rows move (sorted, inserted, deleted) meanwhile.
 */
function rowsByScene_(table) {
  const rows = Object.create(null);  // so that a scene_id such as "constructor" is no key already
  for (let row = HEADER_ROW + 1; row <= table.lastRow; row++) {
    const id = sceneIdOf_(table, row);
    if (id && !Object.prototype.hasOwnProperty.call(rows, id)) rows[id] = row;
  }
  return rows;
}

/** The column (0-based) of a header name in this read, or -1. */
function columnOf_(table, name) {
  return Object.prototype.hasOwnProperty.call(table.columns, name) ? table.columns[name] : -1;
}

/**
 * The rows with a job, as what identifies them whatever their row number:
 * {row (as read), sceneId, jobId}; one per scene and job.
 */
function jobTargets_(table, rows) {
  const seen = {};
  const targets = [];
  rows.forEach(function (row) {
    const jobId = cellText_(table.values[row - 1][table.columns.job_id]);
    const sceneId = sceneIdOf_(table, row);
    const key = JSON.stringify([sceneId, jobId]);
    if (!jobId || seen[key]) return;
    seen[key] = true;
    targets.push({ row: row, sceneId: sceneId, jobId: jobId });
  });
  return targets;
}

function missingColumnsText_(sheet, missing) {
  return 'The sheet "' + sheet.getName() + '" has no column ' +
    missing.map(function (name) { return '"' + name + '"'; }).join(', ') + ' in row 1.\n\n' +
    'Open the scenes sheet (header: scene_id, prompt, ref_pack_public_url, variants, ' +
    'status_img, nano_img_1..3, job_id) and try again.';
}

/** A cell as trimmed text ('' for empty). */
function cellText_(value) {
  if (value === null || value === undefined) return '';
  if (value instanceof Date) return value.toISOString();
  return String(value).trim();
}

/** Row numbers (below the header, within the data) covered by the selection. */
function selectedRowNumbers_(table) {
  const list = table.sheet.getActiveRangeList();
  const ranges = list ? list.getRanges() : [];
  const rows = {};
  ranges.forEach(function (range) {
    const first = Math.max(range.getRow(), HEADER_ROW + 1);
    const last = Math.min(range.getLastRow(), table.lastRow);
    for (let row = first; row <= last; row++) rows[row] = true;
  });
  return Object.keys(rows).map(Number).sort(function (a, b) { return a - b; });
}

/**
 * The selected rows that hold a scene (rows whose scene cells are all empty are
 * skipped); throws a UserError when there are none. Needs no request.
 */
function selectedSceneRows_(table) {
  const rows = selectedRowNumbers_(table).filter(function (row) {
    return !isBlankRow_(table, row);
  });
  if (!rows.length) {
    throw new UserError(
      'No scene rows are selected.\n\nOn the scenes sheet, select the rows to send (click ' +
      'the row numbers on the left; hold Ctrl or ⌘ to add more), then choose the menu ' +
      'item again.');
  }
  return rows;
}

/**
 * The scenes of these rows as a batch checked against the deployment's limits
 * (deploymentLimits_), cut into the chunks it is sent in (`chunks`: rows per
 * request, Chunks.gs); throws a UserError naming each problem.
 */
function checkedBatch_(table, rows, limits) {
  const style = styleRefs_(table, limits);
  const batch = batchForRows_(table, rows, limits, style.refs.length);
  batch.styleRefs = style.refs;
  let errors = batch.errors.concat(style.errors);
  if (!errors.length) {
    const cut = chunkSizes_(table, batch, limits);
    batch.chunks = cut.sizes;
    errors = cut.errors;
  }
  if (errors.length) {
    throw new UserError(
      'Nothing was sent: ' + plural_(errors.length, 'problem') +
      ' in the selected rows.\n\n' + limitLines_(errors, MAX_ERROR_LINES).join('\n'));
  }
  return batch;
}

/**
 * The batch's style references: every non-empty cell of the named range
 * "style_refs" (a cell may hold several, separated by commas or new lines).
 */
function styleRefs_(table, limits) {
  const range = table.ss.getRangeByName(STYLE_REFS_RANGE);
  const refs = [];
  const errors = [];
  if (!range) return { refs: refs, errors: errors };
  range.getValues().forEach(function (line) {
    line.forEach(function (cell) {
      cellText_(cell).split(/[\n,]+/).forEach(function (part) {
        const ref = part.trim();
        if (!ref) return;
        if (!isReference_(ref)) {
          errors.push('style_refs: "' + clip_(ref) + '" must be an https:// link, a ' +
            'gs://bucket/object path, or an earlier image as scene:<scene_id>#<n> or job:<job_id>#<n>.');
        }
        refs.push(ref);
      });
    });
  });
  if (limits && limits.maxReferences !== null && refs.length > limits.maxReferences) {
    errors.push('style_refs: ' + plural_(refs.length, 'reference') + '; ' + limits.model +
      ' takes at most ' + limits.maxReferences + '.');
  }
  return { refs: refs, errors: errors };
}

function isReference_(text) {
  return /^https:\/\/[^\s/]+\S*$/.test(text) || /^gs:\/\/[^\s/]+\/\S+$/.test(text) ||
    ANCHOR_PATTERN.test(text);
}

/**
 * A cell of a row by column name ('' where the sheet has no such column); the
 * scene_id as the cell shows it.
 */
function cellOf_(table, row, name) {
  if (name === 'scene_id') return sceneIdOf_(table, row);
  return name in table.columns ? table.values[row - 1][table.columns[name]] : '';
}

/** Whether the row's scene cells (scene_id, prompt, ref_pack_public_url, variants) are all empty. */
function isBlankRow_(table, row) {
  return ['scene_id', 'prompt', 'ref_pack_public_url', 'variants'].every(function (name) {
    return cellText_(cellOf_(table, row, name)) === '';
  });
}

/**
 * Scenes, request items and problems of the given rows (blank rows are skipped),
 * checked against `limits` (deploymentLimits_: what this deployment accepts).
 * A row's prompt is its own or a template's (Briefs.gs); its optional model,
 * lane, aspect_ratio and image_size are checked against that row's model.
 * `styleCount`: the batch's style references (styleRefs_), counted in each
 * row's references; read here when not given.
 */
function batchForRows_(table, rowNumbers, limits, styleCount) {
  const get = function (row, name) { return cellOf_(table, row, name); };
  const styles = styleCount === undefined ? styleRefs_(table, null).refs.length : styleCount;
  const library = briefLibrary_(table, rowNumbers);
  const tableErrors = {};
  const inSelection = {};
  rowNumbers.forEach(function (row) { inSelection[row] = true; });
  const rowsOfScene = {};
  for (let row = HEADER_ROW + 1; row <= table.lastRow; row++) {
    const id = cellText_(get(row, 'scene_id'));
    if (id) (rowsOfScene[id] = rowsOfScene[id] || []).push(row);
  }

  const scenes = [];
  const errors = [];
  const firstInSelection = {};
  rowNumbers.forEach(function (row) {
    if (isBlankRow_(table, row)) return;  // a blank row inside the selection
    const scene = {
      row: row,
      scene_id: cellText_(get(row, 'scene_id')),
      ref: cellText_(get(row, 'ref_pack_public_url')),
      variantsRaw: get(row, 'variants'),
      model: cellText_(get(row, 'model')),
      lane: cellText_(get(row, 'lane')).toLowerCase(),
      aspect: cellText_(get(row, 'aspect_ratio')),
      size: cellText_(get(row, 'image_size')).toUpperCase(),
    };
    const where = 'Row ' + row + ': ';
    const id = scene.scene_id;
    if (!id) {
      errors.push(where + 'scene_id is empty.');
    } else if (!SCENE_ID_PATTERN.test(id)) {
      errors.push(where + 'scene_id "' + clip_(id) + '" is not valid: use 1-64 letters, ' +
        'digits, "_", "-" or ".", starting with a letter or digit.');
    } else if (firstInSelection[id]) {
      errors.push(where + 'scene_id "' + id + '" is also in row ' + firstInSelection[id] +
        ' of the selection; every scene needs its own scene_id.');
    } else {
      firstInSelection[id] = row;
      const elsewhere = rowsOfScene[id].filter(function (r) { return !inSelection[r]; });
      if (elsewhere.length) {
        errors.push(where + 'scene_id "' + id + '" also appears in row ' + elsewhere[0] +
          '; results go to the first row with that scene_id, so give each row its own.');
      }
    }

    // The row's model: its own (one of the deployment's) or the batch's.
    let modelName = limits.model;
    let shape = limits.models[limits.model];
    if (scene.model) {
      const found = choiceOf_(Object.keys(limits.models), scene.model);
      if (found === null) {
        errors.push(where + 'model "' + clip_(scene.model) + '" is not one this deployment ' +
          'offers (' + Object.keys(limits.models).join(', ') + ').');
        shape = null;
      } else {
        scene.model = found;
        modelName = found;
        shape = limits.models[found];
      }
    }

    const brief = rowBrief_(table, row, library, errors, tableErrors);
    scene.brief = brief;
    scene.prompt = brief.composed === undefined ? '' : brief.composed;
    if (brief.composed !== undefined) {
      // Characters as the server counts them (code points, not UTF-16 units).
      const promptChars = charCount_(brief.composed);
      if (promptChars > limits.maxPromptChars) {
        errors.push(where + (brief.template || brief.avoid ? 'the composed prompt' +
          (brief.template ? ' (template "' + brief.template.name + '"' +
            (brief.avoid ? ', with avoid' : '') + ')' : ' (with avoid)') : 'prompt') +
          ' is ' + promptChars + ' characters long; the limit is ' + limits.maxPromptChars + '.');
      }
    }
    const variants = parseVariants_(scene.variantsRaw, limits.maxVariants);
    if (variants === null) {
      errors.push(where + 'variants must be a whole number from 1 to ' + limits.maxVariants +
        ' (found "' + clip_(cellText_(scene.variantsRaw)) + '").');
    }
    if (scene.ref && !isReference_(scene.ref)) {
      errors.push(where + 'ref_pack_public_url must be an https:// link, a ' +
        'gs://bucket/object path, or an earlier image as scene:<scene_id>#<n> or ' +
        'job:<job_id>#<n> (found "' + clip_(scene.ref) + '").');
    }
    Array.prototype.push.apply(errors,
      referenceLimitErrors_(row, brief, styles, !!scene.ref, modelName, shape));
    if (scene.lane && limits.lanes.indexOf(scene.lane) < 0) {
      errors.push(where + 'lane must be one of ' + limits.lanes.join(', ') + ' (found "' +
        clip_(scene.lane) + '").');
    }
    if (scene.aspect && shape) {
      const aspect = choiceOf_(shape.aspectRatios, scene.aspect);
      if (aspect === null) {
        errors.push(where + 'aspect_ratio must be one of ' + shape.aspectRatios.join(', ') +
          ' for ' + modelName + ' (found "' + clip_(scene.aspect) + '").');
      } else {
        scene.aspect = aspect;
      }
    }
    if (scene.size && shape) {
      const size = choiceOf_(shape.imageSizes, scene.size);
      if (size === null) {
        errors.push(where + 'image_size must be one of ' + shape.imageSizes.join(', ') +
          ' for ' + modelName + ' (found "' + clip_(scene.size) + '").');
      } else {
        scene.size = size;
      }
    }
    scene.variants = variants;
    scenes.push(scene);
  });

  const items = scenes.map(function (scene) {
    const brief = scene.brief;
    const item = { scene_id: scene.scene_id };
    if (scene.model) item.model = scene.model;
    if (brief.template) {
      // The server composes the prompt itself from the template and the row's columns.
      item.template = brief.template;
    } else {
      item.prompt = brief.prompt === undefined ? '' : brief.prompt;
    }
    // Every row's columns: for a template, and for a delivery's file names.
    item.fields = brief.fields;
    if (brief.avoid) item.avoid = brief.avoid;
    item.variants = scene.variants;
    if (scene.ref) item.ref_pack_public_url = scene.ref;
    if (brief.references.length) item.references = brief.references;
    if (scene.lane) item.lane = scene.lane;
    if (scene.aspect) item.aspect_ratio = scene.aspect;
    if (scene.size) item.image_size = scene.size;
    return item;
  });
  const rowOfScene = {};
  scenes.forEach(function (scene) {
    if (!(scene.scene_id in rowOfScene)) rowOfScene[scene.scene_id] = scene.row;
  });
  return {
    scenes: scenes,
    items: items,
    errors: errors,
    rows: scenes.map(function (scene) { return scene.row; }),
    rowOfScene: rowOfScene,
    rowsLabel: rowsLabel_(scenes.map(function (scene) { return scene.row; })),
  };
}

/** 1..max from a number or digits; empty means 1; anything else null. */
function parseVariants_(raw, max) {
  if (raw === '' || raw === null || raw === undefined) return 1;
  let n;
  if (typeof raw === 'number') {
    n = raw;
  } else if (typeof raw === 'string' && /^\s*\d+\s*$/.test(raw)) {
    n = Number(raw);
  } else {
    return null;
  }
  return Number.isInteger(n) && n >= 1 && n <= max ? n : null;
}

/**
 * The entry of `choices` that `text` names, in the server's spelling (so "1k" is
 * sent as "1K"); null if none. An empty list accepts anything, as the server does.
 */
function choiceOf_(choices, text) {
  if (!choices.length) return text;
  const wanted = text.toUpperCase();
  const found = choices.filter(function (choice) { return choice.toUpperCase() === wanted; });
  return found.length ? found[0] : null;
}

function clip_(text) {
  return text.length > 40 ? text.slice(0, 37) + '…' : text;
}

/** [5, 6, 7, 9] -> "rows 5-7, 9". */
function rowsLabel_(rows) {
  const parts = [];
  let i = 0;
  while (i < rows.length) {
    let j = i;
    while (j + 1 < rows.length && rows[j + 1] === rows[j] + 1) j++;
    parts.push(j > i ? rows[i] + '-' + rows[j] : String(rows[i]));
    i = j + 1;
  }
  return (rows.length === 1 ? 'row ' : 'rows ') + parts.join(', ');
}

/**
 * The cells that mark the batch's rows "queued" (old images and job id cleared):
 * `updates` to write now, by row number (from the read just made), and `cells`
 * to put back if the server refuses the batch: {sceneId, name (column), mark
 * (what Generate wrote), previous (what was there)}.
 */
function queuedMarks_(table, batch) {
  const updates = [];
  const cells = [];
  const names = ['status_img', 'job_id'].concat(table.images.map(function (img) {
    return table.header[img.index];
  }));
  batch.rows.forEach(function (row) {
    const sceneId = sceneIdOf_(table, row);
    names.forEach(function (name) {
      const col = table.columns[name];
      const mark = name === 'status_img' ? 'queued' : '';
      updates.push({ row: row, col: col, value: mark });
      cells.push({ sceneId: sceneId, name: name, mark: mark, previous: currentCell_(table, row, col) });
    });
  });
  return { updates: updates, cells: cells };
}

/**
 * Puts back what Generate's marks replaced, after a refused batch: each row found
 * again by its scene_id, and only the cells that still hold what Generate wrote
 * (the pipeline may have written the row meanwhile: that stays). Returns the
 * scene ids no longer in the sheet.
 */
function restoreMarks_(table, marks) {
  const now = rereadSheet_(table);
  const rows = rowsByScene_(now);
  const updates = [];
  const gone = {};
  marks.cells.forEach(function (cell) {
    const row = rows[cell.sceneId];
    const col = columnOf_(now, cell.name);
    if (!row) {
      gone[cell.sceneId] = true;
      return;
    }
    if (col < 0 || currentCell_(now, row, col) !== cell.mark) return;
    updates.push({ row: row, col: col, value: cell.previous });
  });
  writeCells_(now.sheet, updates);
  return Object.keys(gone);
}

/** A cell as it must be written back to stay the same: its formula, or its value as text. */
function currentCell_(table, row, col) {
  const formula = table.formulas ? table.formulas[row - 1][col] : '';
  if (formula) return formula;
  const value = table.values[row - 1][col];
  return typeof value === 'string' ? textCell_(value) : value;
}

/** Text that is never read as a formula or a number when written. */
function textCell_(text) {
  return /^[=+\-@']/.test(text) ? "'" + text : text;
}

/**
 * Writes the job ids (and failures) of a live answer. The rows are read again
 * first and each job's row found by its scene_id, as they may have moved while
 * the batch was sent. The newest job sent owns its row: if another job wrote
 * the row after it was marked "queued", its status and images are cleared with
 * it. Returns {failed: lines about jobs that could not be queued, missing:
 * lines about scenes no longer in the sheet, table: the sheet as read here}.
 */
function writeJobIds_(table, batch, answer) {
  const now = rereadSheet_(table);
  const rows = rowsByScene_(now);
  const updates = [];
  const failed = [];
  const missing = [];
  (answer.jobs || []).forEach(function (job) {
    if (!Object.prototype.hasOwnProperty.call(batch.rowOfScene, job.scene_id)) return;
    const jobId = String(job.job_id);
    const row = rows[job.scene_id];
    if (!row) {
      missing.push('Row ' + batch.rowOfScene[job.scene_id] + ' (' + job.scene_id + '): no longer ' +
        'in the sheet, so its job ' + jobId + ' was not written.');
      return;
    }
    const owner = cellText_(now.values[row - 1][now.columns.job_id]);
    updates.push({ row: row, col: now.columns.job_id, value: textCell_(jobId) });
    if (job.state === 'failed') {
      const reason = job.error || 'could not be queued';
      updates.push({ row: row, col: now.columns.status_img, value: textCell_('failed: ' + reason) });
      failed.push('Row ' + row + ' (' + job.scene_id + '): ' + reason);
    } else if (owner && owner !== jobId) {
      updates.push({ row: row, col: now.columns.status_img, value: 'queued' });
    }
    if (owner && owner !== jobId) {
      now.images.forEach(function (img) { updates.push({ row: row, col: img.index, value: '' }); });
    }
  });
  writeCells_(now.sheet, updates);
  return { failed: failed, missing: missing, table: now };
}

/** What a row showed before a slow request: its status and image formulas by n. */
function rowSnapshot_(table, row) {
  const images = {};
  table.images.forEach(function (img) { images[img.n] = formulaOrText_(table, row, img.index); });
  return { status: cellText_(table.values[row - 1][table.columns.status_img]), images: images };
}

function formulaOrText_(table, row, col) {
  const formula = table.formulas ? table.formulas[row - 1][col] : '';
  return formula || cellText_(table.values[row - 1][col]);
}

/**
 * The cells of one row that a job view moves forward (never backwards), compared
 * with the row as it is now (`table` read just before writing). `before` is the
 * row as read before /status was asked (rowSnapshot_, null if unknown): if the
 * row changed meanwhile, someone (the pipeline) wrote it with news at least as
 * fresh as this answer, so only a state further on, or an image for an empty
 * cell, is written.
 */
function rowUpdatesForJob_(table, row, view, before) {
  const values = table.values[row - 1];
  const updates = [];
  const jobCol = table.columns.job_id;
  if (cellText_(values[jobCol]) !== view.job_id) return updates;  // another job owns the row
  const statusCol = table.columns.status_img;
  const current = cellText_(values[statusCol]);
  const snapshot = rowSnapshot_(table, row);
  const changed = !before || before.status !== snapshot.status ||
    table.images.some(function (img) { return before.images[img.n] !== snapshot.images[img.n]; });
  const next = view.status_text || view.state;
  const rankNext = viewRank_(view);
  const rankNow = cellRank_(current);
  if (rankNext > rankNow ||
      (!changed && rankNext >= 1 && rankNext >= rankNow && next !== current)) {
    updates.push({ row: row, col: statusCol, value: textCell_(next) });
  }
  (view.variants || []).forEach(function (variant) {
    if (!variant.thumbnail_url) return;
    const column = table.images.filter(function (img) { return img.n === variant.variant; })[0];
    if (!column) return;  // no nano_img_k column for this variant
    const formula = imageFormula_(variant.thumbnail_url);
    const now = snapshot.images[column.n];
    if (now !== formula && (now === '' || !changed)) {
      updates.push({ row: row, col: column.index, value: formula });
    }
  });
  return updates;
}

/** The same formula the pipeline writes. */
function imageFormula_(url) {
  return '=IMAGE("' + String(url).replace(/"/g, '""') + '")';
}


/**
 * How far a job is, from the server's machine-readable fields (state, progress):
 * queued 0 < running 1..2 (by images done) < final 3; unknown -1.
 */
function viewRank_(view) {
  if (FINAL_STATES.indexOf(view.state) >= 0) return FINAL_RANK;
  if (view.state === 'queued') return 0;
  if (RUNNING_STATES.indexOf(view.state) < 0) return -1;
  const progress = view.progress || {};
  return 1 + (Number(progress.done) || 0) / ((Number(progress.total) || 1) + 1);
}

/**
 * How far the status a cell shows is. The pipeline starts every status with the
 * job's state, so the first word is enough; within a running state the server's
 * view is the newer one, hence rank 1 for all of them.
 */
function cellRank_(text) {
  const word = String(text || '').trim().toLowerCase().split(/[^a-z_]/)[0];
  if (FINAL_STATES.indexOf(word) >= 0) return FINAL_RANK;
  if (word === 'queued') return 0;
  if (RUNNING_WORDS.indexOf(word) >= 0) return 1;
  return -1;
}

function isFinalStatus_(text) {
  return cellRank_(text) === FINAL_RANK;
}

/**
 * Writes {row, col (0-based), value} cells with as few calls as possible:
 * one setValues per block of consecutive rows and consecutive columns.
 */
function writeCells_(sheet, updates) {
  if (!updates.length) return;
  const byRow = {};
  updates.forEach(function (u) { (byRow[u.row] = byRow[u.row] || {})[u.col] = u.value; });
  const rows = Object.keys(byRow).map(Number).sort(function (a, b) { return a - b; });
  const colsKey = function (row) {
    return Object.keys(byRow[row]).map(Number).sort(function (a, b) { return a - b; }).join(',');
  };
  let i = 0;
  while (i < rows.length) {
    let j = i;
    while (j + 1 < rows.length && rows[j + 1] === rows[j] + 1 &&
           colsKey(rows[j + 1]) === colsKey(rows[i])) j++;
    const cols = colsKey(rows[i]).split(',').map(Number);
    let a = 0;
    while (a < cols.length) {
      let b = a;
      while (b + 1 < cols.length && cols[b + 1] === cols[b] + 1) b++;
      const block = [];
      for (let r = i; r <= j; r++) {
        const line = [];
        for (let c = a; c <= b; c++) line.push(byRow[rows[r]][cols[c]]);
        block.push(line);
      }
      sheet.getRange(rows[i], cols[a] + 1, j - i + 1, b - a + 1).setValues(block);
      a = b + 1;
    }
    i = j + 1;
  }
}
