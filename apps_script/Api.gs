/**
 * HTTP calls to the pipeline's function and the messages its errors become.
 * UrlFetchApp is synchronous; muteHttpExceptions lets us read error bodies.
 */

/** Parallel /status calls per UrlFetchApp.fetchAll, and jobs per Refresh run. */
const STATUS_FETCH_BATCH = 20;
const REFRESH_MAX_JOBS = 300;
/** How long the deployment's limits (GET /limits) are kept in the script cache. */
const LIMITS_CACHE_SECONDS = 5 * 60;
const LIMITS_CACHE_PREFIX = 'AI_IMAGES_LIMITS_';

/**
 * What this deployment accepts, from GET /limits: rows per batch, variants,
 * prompt length, lanes, and each model's sizes, aspect ratios and reference
 * limits. The script sends no batch `model`, so the batch's model is the
 * deployment's `default_model`; a row may name another (its "model" column).
 * Asked once per menu run and kept in the script cache for LIMITS_CACHE_SECONDS,
 * per API URL; if they cannot be read the run stops here: rows are never checked
 * against guessed limits.
 */
function deploymentLimits_(settings) {
  const cache = scriptCache_();
  const key = LIMITS_CACHE_PREFIX + sha256Hex_(settings.apiUrl);
  const cached = cache ? readLimits_(cacheGet_(cache, key)) : null;
  if (cached) return cached;

  let res;
  try {
    res = callApi_(settings, 'get', '/limits');
  } catch (err) {
    if (err instanceof ApiError) throw limitsError_(err.message);
    throw err;  // e.g. no API key yet: that message says what to do
  }
  if (res.status === 404) {
    throw limitsError_('The image service at ' + settings.apiUrl + ' does not answer ' +
      'GET /limits (HTTP 404). Check the API URL in AI images → Settings; if it is right, ' +
      'the service is older than this script: ask the pipeline\'s administrator to update it.');
  }
  if (res.status !== 200) throw limitsError_(apiError_(res, null).message);
  const limits = readLimits_(res.json);
  if (!limits) {
    throw limitsError_('Its answer is not the list of limits this script expects (' +
      (snippet_(res.text) || 'an empty answer') + '). The script and the service may be of ' +
      'different versions: tell the pipeline\'s administrator.');
  }
  if (cache) cachePut_(cache, key, JSON.stringify(res.json), LIMITS_CACHE_SECONDS);
  return limits;
}

function limitsError_(reason) {
  return new UserError('Could not read the limits of the image service (GET /limits), which ' +
    'the selected rows are checked against, so nothing was sent.\n\n' + reason);
}

/**
 * The limits from a /limits answer (an object, or its JSON text from the cache),
 * or null if it does not have the expected shape: the deployment's bounds, the
 * batch's model (the deployment's default: the script sends no batch `model`)
 * with its shapes as before, and every model of the catalog by name (`models`),
 * which a row's "model" column may choose: {aspectRatios, imageSizes,
 * maxReferences, maxCharacters, maxObjects} (null: that limit does not bind).
 */
function readLimits_(raw) {
  let data = raw;
  if (typeof raw === 'string') {
    try {
      data = JSON.parse(raw);
    } catch (err) {
      return null;
    }
  }
  const whole = function (n) { return Number.isInteger(n) && n >= 1; };
  const count = function (n) { return Number.isInteger(n) && n >= 0 ? n : null; };
  const texts = function (list) {
    return Array.isArray(list) && list.every(function (x) { return typeof x === 'string'; });
  };
  if (!data || typeof data !== 'object' || !whole(data.max_items_per_batch) ||
      !whole(data.max_body_bytes) || !whole(data.max_variants) || !whole(data.max_prompt_chars) ||
      typeof data.default_model !== 'string' || !data.models || typeof data.models !== 'object' ||
      !Object.prototype.hasOwnProperty.call(data.models, data.default_model)) {
    return null;
  }
  const models = {};
  const names = Object.keys(data.models);
  for (let i = 0; i < names.length; i++) {
    const entry = data.models[names[i]];
    if (!entry || typeof entry !== 'object' || !texts(entry.aspect_ratios) ||
        !texts(entry.image_sizes)) {
      return null;
    }
    models[names[i]] = {
      aspectRatios: entry.aspect_ratios.slice(),
      imageSizes: entry.image_sizes.slice(),
      maxReferences: whole(entry.max_reference_images) ? entry.max_reference_images : null,
      maxCharacters: count(entry.max_character_references),
      maxObjects: count(entry.max_object_references),
      defaultImageSize: typeof entry.default_image_size === 'string' ? entry.default_image_size : null,
    };
  }
  const model = models[data.default_model];
  return {
    maxItems: data.max_items_per_batch,
    // The largest request body the server reads (UTF-8 bytes): larger selections are
    // sent in chunks (Chunks.gs).
    maxBodyBytes: data.max_body_bytes,
    maxVariants: data.max_variants,
    maxPromptChars: data.max_prompt_chars,
    model: data.default_model,
    aspectRatios: model.aspectRatios,
    imageSizes: model.imageSizes,
    maxReferences: model.maxReferences,
    models: models,
    // An answer without lanes is from before per-row lanes: the two the API knows.
    lanes: texts(data.lanes) ? data.lanes.slice() : ['live', 'economy'],
  };
}

/** The script cache, or null where there is none: the limits are then asked every run. */
function scriptCache_() {
  try {
    return CacheService.getScriptCache();
  } catch (err) {
    return null;
  }
}

function cacheGet_(cache, key) {
  try {
    return cache.get(key);
  } catch (err) {
    return null;
  }
}

function cachePut_(cache, key, value, seconds) {
  try {
    cache.put(key, value, seconds);
  } catch (err) {
    // A full or unavailable cache only means asking again next run.
  }
}

/**
 * POST /batch/images of `batch` (or of one chunk of it: chunkOf_); returns the parsed
 * answer or throws an ApiError.
 */
function postBatch_(settings, table, batch, runMode, extraHeaders, lane) {
  const body = batchBody_(table, batch, runMode, lane);
  const res = callApi_(settings, 'post', '/batch/images', body, extraHeaders);
  const ok = runMode === 'live' ? [200, 201, 202] : [200];
  if (ok.indexOf(res.status) < 0 || !res.json || typeof res.json !== 'object') {
    // Too large after all: the limits may have changed since they were read.
    if (res.status === 413) forgetLimits_(settings);
    throw apiError_(res, batch);
  }
  if (runMode === 'live' && !res.json.batch_id) {
    throw new ApiError('The server accepted the batch but sent no batch_id (HTTP ' +
      res.status + ').', res.status, '', true);
  }
  return res;
}

/** The JSON body of POST /batch/images for `batch` (its items: all, or one chunk's). */
function batchBody_(table, batch, runMode, lane) {
  const body = {
    items: batch.items,
    runMode: runMode,
    spreadsheet_id: table.ss.getId(),
    worksheet: table.sheet.getName(),
  };
  if (lane) body.lane = lane;
  if (batch.drafts) body.drafts = true;
  if (batch.styleRefs && batch.styleRefs.length) body.style_refs = batch.styleRefs;
  return body;
}

/** Drops the cached limits of this API URL: the next run asks GET /limits again. */
function forgetLimits_(settings) {
  const cache = scriptCache_();
  if (!cache) return;
  try {
    cache.remove(LIMITS_CACHE_PREFIX + sha256Hex_(settings.apiUrl));
  } catch (err) {
    // Expires by itself.
  }
}

/** GET /status/{job_id} for each id, STATUS_FETCH_BATCH at a time; answers in order. */
function fetchJobStatuses_(settings, jobIds) {
  const headers = authHeaders_(settings);
  const answers = [];
  for (let i = 0; i < jobIds.length; i += STATUS_FETCH_BATCH) {
    const requests = jobIds.slice(i, i + STATUS_FETCH_BATCH).map(function (jobId) {
      return {
        url: settings.apiUrl + '/status/' + encodeURIComponent(jobId),
        method: 'get',
        headers: headers,
        muteHttpExceptions: true,
      };
    });
    let responses;
    try {
      responses = UrlFetchApp.fetchAll(requests);
    } catch (err) {
      throw networkError_(settings, err);
    }
    responses.forEach(function (response) { answers.push(parseResponse_(response)); });
  }
  return answers;
}

/** One request with our auth headers; returns {status, json, text, headers}. */
function callApi_(settings, method, path, body, extraHeaders) {
  const headers = authHeaders_(settings);
  Object.keys(extraHeaders || {}).forEach(function (name) { headers[name] = extraHeaders[name]; });
  const options = {
    method: method,
    headers: headers,
    muteHttpExceptions: true,
    followRedirects: true,
  };
  if (body !== undefined) {
    options.contentType = 'application/json';
    options.payload = JSON.stringify(body);
  }
  let response;
  try {
    response = UrlFetchApp.fetch(settings.apiUrl + path, options);
  } catch (err) {
    throw networkError_(settings, err);
  }
  return parseResponse_(response);
}

function parseResponse_(response) {
  const text = response.getContentText();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (err) {
    json = null;
  }
  const headers = {};
  const raw = response.getAllHeaders ? response.getAllHeaders() : response.getHeaders();
  Object.keys(raw || {}).forEach(function (name) { headers[name.toLowerCase()] = raw[name]; });
  return { status: response.getResponseCode(), json: json, text: text, headers: headers };
}

function header_(res, name) {
  const value = res.headers[name.toLowerCase()];
  return Array.isArray(value) ? String(value[0]) : (value === undefined ? '' : String(value));
}

function networkError_(settings, err) {
  return new ApiError(
    'Could not reach the image service at ' + settings.apiUrl + ': ' +
    (err && err.message ? err.message : String(err)) +
    '\n\nCheck the API URL in AI images → Settings, or try again in a minute.',
    0, 'network', true);
}

/** The message for an error answer; field details are named by row when possible. */
function apiError_(res, batch) {
  const body = res.json && typeof res.json === 'object' ? res.json : {};
  const code = typeof body.error === 'string' ? body.error : '';
  const message = body.message ? String(body.message) : snippet_(res.text);
  const said = message ? ': ' + message : '';
  const tag = 'HTTP ' + res.status + (code ? ' ' + code : '');
  const status = res.status;
  let text;
  let uncertain = false;
  if (status === 400 || status === 422) {
    const lines = detailLines_(body.details, batch);
    text = 'The server refused the request (' + tag + ')' + said +
      (lines.length ? '\n\n' + lines.join('\n') : '');
  } else if (status === 401) {
    text = 'The server did not accept your sign-in (' + tag + ')' + said +
      '\n\nCheck the API key / sign-in in AI images → Settings.';
  } else if (status === 403) {
    text = 'Access denied (' + tag + ')' + said + '\n\nAsk the pipeline\'s administrator to ' +
      'allow your account (or API key) and this spreadsheet, or check AI images → Settings.';
  } else if (status === 404) {
    text = 'Not found (' + tag + ')' + said + '\n\nCheck the API URL in AI images → Settings.';
  } else if (status === 409) {
    uncertain = true;
    text = 'The same batch is being sent right now (' + tag + ')' + said;
  } else if (status === 413) {
    text = 'Too much for one request (' + tag + ')' + said + '\n\nThe service\'s limits may have ' +
      'changed: try again (they are read again), or select fewer rows.';
  } else if (status === 415) {
    text = 'The server does not accept this request format (' + tag + ')' + said;
  } else if (status === 429 && (code === 'budget_exceeded' || body.budget)) {
    const lines = budgetLines_(body.budget);
    text = 'The budget does not allow this batch (' + tag + ')' + said +
      (lines.length ? '\n\nBudget:\n' + lines.join('\n') : '');
  } else if (status === 429) {
    const wait = header_(res, 'retry-after');
    text = 'Too many requests right now (' + tag + ')' + said + '\n\nWait ' +
      (wait ? wait + ' seconds' : 'a minute') + ' and try again.';
  } else if (status === 408 || status >= 500) {
    uncertain = true;
    text = 'The image service had a problem (' + tag + ')' + said + '\n\nTry again in a minute.';
  } else {
    text = 'Unexpected answer from the image service (' + tag + ')' + said;
  }
  return new ApiError(text, status, code, uncertain);
}

function snippet_(text) {
  const t = String(text || '').replace(/\s+/g, ' ').trim();
  return t.length > 200 ? t.slice(0, 197) + '…' : t;
}

/** "items[2].variants" -> "Row 7 (scene_id "b"): variants must be ..." */
function detailLines_(details, batch) {
  if (!Array.isArray(details)) return [];
  return limitLines_(details.map(function (detail) {
    const field = String(detail.field || '');
    const reason = String(detail.reason || detail.message || '');
    const style = /^style_refs\[(\d+)\]$/.exec(field);
    if (style && batch && batch.styleRefs) {
      return '  • style_refs "' + batch.styleRefs[Number(style[1])] + '": ' + reason;
    }
    const match = /^items\[(\d+)\](?:\.(.+))?$/.exec(field);
    const scene = match && batch ? batch.scenes[Number(match[1])] : null;
    if (scene) {
      return '  • Row ' + scene.row + ' (scene_id "' + scene.scene_id + '"): ' +
        (match[2] || 'row') + ' ' + reason;
    }
    return '  • ' + (field || 'request') + ': ' + reason;
  }), MAX_ERROR_LINES);
}

/** The budget figures, in words for the known shape, else key by key. */
function budgetLines_(budget) {
  if (!budget || typeof budget !== 'object') return [];
  const b = budget;
  const lines = [];
  if ('images_remaining' in b || 'cost_remaining_usd' in b) {
    const day = b.day ? ' (' + b.day + ')' : '';
    if ('images_limit' in b) {
      lines.push('  Images today' + day + ': ' + b.images_used + ' of ' + b.images_limit +
        ' used, ' + b.images_remaining + ' left');
    }
    if ('cost_limit_usd' in b) {
      lines.push('  Spend today' + day + ': $' + b.cost_used_usd + ' of $' + b.cost_limit_usd +
        ' used, $' + b.cost_remaining_usd + ' left');
    }
    if ('images_requested' in b) {
      lines.push('  This batch: ' + plural_(b.images_requested, 'image') +
        ('cost_requested_usd' in b ? ', $' + b.cost_requested_usd : ''));
    }
    if (lines.length) return lines;
  }
  const flat = function (obj, prefix) {
    Object.keys(obj).forEach(function (key) {
      const value = obj[key];
      const label = (prefix ? prefix + ' ' : '') + key.replace(/_usd$/, '').replace(/_/g, ' ');
      if (value && typeof value === 'object' && !Array.isArray(value)) {
        flat(value, label);
      } else if (value !== null && value !== undefined && value !== '') {
        lines.push('  ' + label + ': ' + (/_usd$/.test(key) ? '$' : '') + value);
      }
    });
  };
  flat(b, '');
  return lines;
}
