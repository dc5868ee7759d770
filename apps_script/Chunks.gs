/**
 * Chunked sends: a selection larger than one request may carry is sent as several
 * requests ("chunks"), one after the other, each a batch of its own on the server.
 *
 * A chunk is a run of consecutive selected rows whose JSON body, measured in UTF-8
 * bytes as it is sent, fits the deployment's max_body_bytes less BODY_SLACK, and
 * whose rows fit its max_items_per_batch (GET /limits). The cut is made when a send
 * starts and kept in the send's record (Submissions.gs) with each chunk's batch id
 * once it is answered: a send taken up again (after a lost answer, a refused chunk
 * or an execution that was stopped) uses the same chunks with the same
 * Idempotency-Keys (chunkKey_), so a chunk that arrived is replayed by the server,
 * never run twice, and a chunk recorded as answered is never sent again.
 *
 * An estimate of several chunks is one dry run per chunk, summed (sumPlans_): the
 * dry run is as large as the live request, so it is cut the same way.
 */

/** The share of max_body_bytes left free in every request, for safety. */
const BODY_SLACK = 0.05;
/** At most this many chunks per send (its record must fit a document property). */
const MAX_CHUNKS = 100;
/** Attempts per chunk in one run when the answer is lost (network, timeout, 5xx): same key. */
const CHUNK_ATTEMPTS = 2;
const CHUNK_RETRY_PAUSE_MS = 2000;

/** The UTF-8 length of a string, in bytes (what the server counts). */
function utf8Bytes_(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) {
      bytes += 1;
    } else if (code < 0x800) {
      bytes += 2;
    } else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length &&
        text.charCodeAt(i + 1) >= 0xdc00 && text.charCodeAt(i + 1) <= 0xdfff) {
      bytes += 4;  // a surrogate pair: one code point of 4 bytes
      i++;
    } else {
      bytes += 3;
    }
  }
  return bytes;
}

/**
 * How many rows each chunk of the batch holds, in order: {sizes, errors}. Each
 * chunk's body is measured as the largest it can be sent (a dry run, the economy
 * lane, drafts), so the live request and its dry run both fit. A row too large for
 * a request on its own is an error naming it.
 */
function chunkSizes_(table, batch, limits) {
  const budget = Math.floor(limits.maxBodyBytes * (1 - BODY_SLACK));
  const envelope = utf8Bytes_(JSON.stringify(batchBody_(
    table, { items: [], drafts: true, styleRefs: batch.styleRefs }, 'dry_run', 'economy')));
  const sizes = [];
  const errors = [];
  let count = 0;
  let bytes = envelope;
  batch.items.forEach(function (item, i) {
    const size = utf8Bytes_(JSON.stringify(item));
    if (envelope + size > budget) {
      errors.push('Row ' + batch.scenes[i].row + ': the row is ' + thousands_(size) + ' bytes as ' +
        'sent (its prompt and other columns); one request to the image service may hold at most ' +
        thousands_(limits.maxBodyBytes) + ' bytes (' + thousands_(budget - envelope) + ' for a ' +
        'row, with the rest of the request and some room to spare). Shorten the row\'s cells.');
    }
    if (count && (count >= limits.maxItems || bytes + 1 + size > budget)) {
      sizes.push(count);
      count = 0;
      bytes = envelope;
    }
    bytes += (count ? 1 : 0) + size;  // the comma between items
    count += 1;
  });
  if (count) sizes.push(count);
  if (!errors.length && sizes.length > MAX_CHUNKS) {
    errors.push('The selection needs ' + sizes.length + ' requests to the image service; one ' +
      'Generate sends at most ' + MAX_CHUNKS + '. Select fewer rows (about ' +
      thousands_(Math.floor(batch.items.length * MAX_CHUNKS / sizes.length)) + ') and send the ' +
      'rest afterwards.');
  }
  return { sizes: sizes, errors: errors };
}

/** Where each chunk starts in the batch's items. */
function chunkStarts_(sizes) {
  const starts = [];
  let at = 0;
  sizes.forEach(function (n) {
    starts.push(at);
    at += n;
  });
  return starts;
}

/**
 * Chunk `index` of the batch as a batch of its own (its scenes, items and rows),
 * for postBatch_: the server's `items[i]` then name the chunk's rows.
 */
function chunkOf_(batch, sizes, index) {
  return chunksView_(batch, sizes, [index]);
}

/** The chunks `indexes` of the batch together, as one batch (for a plan or a label). */
function chunksView_(batch, sizes, indexes) {
  if (sizes.length === 1 && indexes.length === 1) return batch;
  const starts = chunkStarts_(sizes);
  const scenes = [];
  const items = [];
  indexes.forEach(function (i) {
    Array.prototype.push.apply(scenes, batch.scenes.slice(starts[i], starts[i] + sizes[i]));
    Array.prototype.push.apply(items, batch.items.slice(starts[i], starts[i] + sizes[i]));
  });
  const rowOfScene = {};
  scenes.forEach(function (scene) { rowOfScene[scene.scene_id] = scene.row; });
  const rows = scenes.map(function (scene) { return scene.row; });
  return {
    scenes: scenes,
    items: items,
    errors: [],
    rows: rows,
    rowOfScene: rowOfScene,
    rowsLabel: rowsLabel_(rows),
    styleRefs: batch.styleRefs,
    drafts: batch.drafts,
  };
}

/** [0, 1, ..., n-1] */
function allChunks_(sizes) {
  return sizes.map(function (n, i) { return i; });
}

/** Images (variants) of each chunk. */
function chunkImages_(batch, sizes) {
  const starts = chunkStarts_(sizes);
  return sizes.map(function (n, i) {
    return batch.scenes.slice(starts[i], starts[i] + n).reduce(function (sum, scene) {
      return sum + scene.variants;
    }, 0);
  });
}

/**
 * The dry run of the chunks `indexes` of the batch: one request if that is one
 * chunk, else one per chunk, summed (with `chunks`: how many).
 */
function planChunks_(settings, table, batch, sizes, indexes) {
  const plans = indexes.map(function (i) {
    return postBatch_(settings, table, chunkOf_(batch, sizes, i), 'dry_run').json;
  });
  return sumPlans_(plans);
}

/**
 * Several chunks' plans as one: counts, costs and each lane summed, jobs and warnings
 * together (a warning about the whole batch once), the day's budget as the first
 * chunk saw it (a dry run reserves nothing) with what all of them ask for, and the
 * cost per delivered image weighted by each chunk's scenes.
 */
function sumPlans_(plans) {
  if (plans.length === 1) return plans[0];
  const first = plans[0];
  const count = function (name) {
    return plans.reduce(function (n, plan) { return n + (Number(plan[name]) || 0); }, 0);
  };
  const units = function (get) {
    return plans.reduce(function (n, plan) { return n + moneyUnits_(get(plan)); }, 0);
  };
  const jobs = count('job_count');
  const images = count('image_count');
  const cost = units(function (plan) { return plan.estimated_cost_usd; });
  const lanes = {};
  plans.forEach(function (plan) {
    Object.keys(plan.lanes || {}).forEach(function (lane) { lanes[lane] = true; });
  });
  Object.keys(lanes).forEach(function (lane) {
    lanes[lane] = moneyText_(units(function (plan) { return (plan.lanes || {})[lane]; }));
  });
  const warnings = [];
  const batchWide = {};
  plans.forEach(function (plan) {
    (plan.warnings || []).forEach(function (w) {
      if (!w.scene_id) {
        if (batchWide[w.message]) return;
        batchWide[w.message] = true;
      }
      warnings.push(w);
    });
  });
  const notes = [];
  plans.forEach(function (plan) {
    (plan.estimate_notes || []).forEach(function (note) {
      if (notes.indexOf(note) < 0) notes.push(note);
    });
  });
  let budget = first.budget;
  if (budget && typeof budget === 'object') {
    budget = Object.assign({}, budget, {
      images_requested: count('image_count'),
      cost_requested_usd: moneyText_(cost),
    });
  }
  let delivered = null;
  if (plans.every(function (plan) { return plan.delivered && plan.job_count; })) {
    const weighted = function (name) {
      return Math.round(plans.reduce(function (n, plan) {
        return n + moneyUnits_(plan.delivered[name]) * plan.job_count;
      }, 0) / jobs);
    };
    const every = weighted('every_image_final_usd');
    const drafted = weighted('drafts_then_promote_usd');
    delivered = {
      every_image_final_usd: moneyText_(every),
      drafts_then_promote_usd: moneyText_(drafted),
      saving: (every ? Math.round((1 - drafted / every) * 100) : 0) + ' %',
    };
  }
  return Object.assign({}, first, {
    job_count: jobs,
    image_count: images,
    estimated_cost_usd: moneyText_(cost),
    price_per_image_usd: images ? moneyText_(Math.round(cost / images)) : first.price_per_image_usd,
    lanes: lanes,
    budget: budget,
    warnings: warnings,
    estimate_notes: notes,
    jobs: plans.reduce(function (all, plan) { return all.concat(plan.jobs || []); }, []),
    delivered: delivered || first.delivered,
    chunks: plans.length,
  });
}

/** "12.3456" (the server's dollar amounts: fixed point, 4 decimals) as 123456 ten-thousandths. */
function moneyUnits_(text) {
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(String(text === undefined ? '' : text).trim());
  if (!match) return 0;
  const fraction = ((match[3] || '') + '00000').slice(0, 5);
  const units = Number(match[2]) * 10000 + Math.round(Number(fraction) / 10);
  return match[1] ? -units : units;
}

/** 123456 ten-thousandths as "12.3456". */
function moneyText_(units) {
  const abs = Math.abs(Math.round(units));
  const fraction = String(abs % 10000);
  return (units < 0 ? '-' : '') + Math.floor(abs / 10000) + '.' +
    '0000'.slice(fraction.length) + fraction;
}

/** 1234567 -> "1,234,567". */
function thousands_(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** [0, 1, 2, 4] -> "chunks 1-3, 5" (numbered from 1). */
function chunksLabel_(indexes) {
  const label = rowsLabel_(indexes.map(function (i) { return i + 1; }));
  return label.replace(/^rows? /, indexes.length === 1 ? 'chunk ' : 'chunks ');
}

/**
 * POST one chunk live with its Idempotency-Key; an answer that may have been lost
 * (network, timeout, 5xx, 409) is asked for once more with the same key, which the
 * server answers with the first answer if the chunk did arrive.
 */
function postChunk_(settings, table, chunk, key, lane) {
  for (let attempt = 1; ; attempt++) {
    try {
      return postBatch_(settings, table, chunk, 'live', { 'Idempotency-Key': key }, lane);
    } catch (err) {
      if (!(err instanceof ApiError) || !err.uncertain || attempt >= CHUNK_ATTEMPTS) throw err;
      Utilities.sleep(CHUNK_RETRY_PAUSE_MS);
    }
  }
}
