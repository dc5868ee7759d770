/**
 * Idempotency of "Generate".
 *
 * A double click in Apps Script is two executions running side by side, each
 * with its own confirmation dialog. Both compute the same hash of what they
 * send (spreadsheet, sheet and the items); under the document lock, the first
 * stores a record for that hash in the Document Properties — a random nonce,
 * the Idempotency-Key derived from hash and nonce, the chunks the rows are sent
 * in (Chunks.gs: rows per request) and "sending" — then each chunk's batch id as
 * its 202 arrives, and "sent" once every chunk has one. The second finds the
 * "sent" record and sends nothing.
 *
 * A record still "sending" (an answer never came, a chunk was refused, or the
 * execution was stopped part-way) makes the next Generate of the same rows take
 * the send up again: the chunks with a batch id are not sent again, the others are
 * sent with their own keys (chunkKey_: the send's key and the chunk's number), so
 * the server replays a chunk that did arrive instead of running it twice. Such a
 * record is kept for SENDING_WINDOW_MS from the start of the send, less than the
 * server keeps a key (IDEMPOTENCY_TTL_S, 24 hours by default). A "sent" record
 * expires after SUBMISSION_WINDOW_MS; sending identical rows again within that
 * time needs an explicit "yes, send again", which draws a new nonce and so new keys.
 */

const SUBMISSION_WINDOW_MS = 10 * 60 * 1000;
const SENDING_WINDOW_MS = 23 * 60 * 60 * 1000;
const SUBMISSION_PREFIX = 'AI_IMAGES_SUBMISSION_';

/** Hex SHA-256 of what a batch sends, scoped to this spreadsheet and sheet. */
function submissionHash_(table, items) {
  return sha256Hex_(JSON.stringify([table.ss.getId(), table.sheet.getName(), items]));
}

/**
 * The record for this hash if it has not expired, else null. A "sending" record
 * whose every chunk has its batch (the execution stopped just before it said so)
 * is "sent".
 */
function getSubmission_(hash) {
  const raw = documentProperties_().getProperty(SUBMISSION_PREFIX + hash);
  const record = parseRecord_(raw);
  if (!record || recordExpired_(record)) return null;
  if (record.state === 'sending' && Array.isArray(record.batches) && record.batches.length &&
      record.batches.every(function (id) { return !!id; })) {
    record.state = 'sent';
  }
  return record;
}

function recordExpired_(record) {
  if (record.state === 'sending') {
    return Date.now() - (record.started || record.at) >= SENDING_WINDOW_MS;
  }
  return Date.now() - record.at >= SUBMISSION_WINDOW_MS;
}

/** A new send of the batch in chunks of `sizes` rows (chunkSizes_). */
function newSubmission_(hash, sizes) {
  const nonce = Utilities.getUuid();
  const now = Date.now();
  return {
    nonce: nonce,
    key: 'sheets-' + sha256Hex_(hash + ':' + nonce),
    state: 'sending',
    at: now,
    started: now,
    chunks: sizes.slice(),
    batches: sizes.map(function () { return null; }),
  };
}

/**
 * The chunks of a record (rows per chunk) for a batch of `count` items, with
 * `batches` as long; a record of an older script, made before chunks, is one
 * chunk. Null if they do not add up to the batch.
 */
function recordChunks_(record, count) {
  const sizes = Array.isArray(record.chunks) && record.chunks.length ? record.chunks : [count];
  const total = sizes.reduce(function (n, size) { return n + size; }, 0);
  if (total !== count || !sizes.every(function (n) { return Number.isInteger(n) && n >= 1; })) {
    return null;
  }
  if (!Array.isArray(record.batches) || record.batches.length !== sizes.length) {
    record.batches = sizes.map(function (n, i) {
      return sizes.length === 1 && i === 0 && record.batch_id ? record.batch_id : null;
    });
  }
  record.chunks = sizes;
  return sizes;
}

/** The chunks of a record not answered yet. */
function pendingChunks_(record) {
  return record.chunks.map(function (n, i) { return i; }).filter(function (i) {
    return !record.batches[i];
  });
}

/**
 * The Idempotency-Key of chunk `index` of the send: the send's own key when it
 * is one request (as before chunks), else that key and "-<k>of<n>". Always the
 * same for the same chunk of the same send, and never the same for two.
 */
function chunkKey_(record, index) {
  const n = record.chunks.length;
  return n === 1 ? record.key : record.key + '-' + (index + 1) + 'of' + n;
}

/** "batch bat_1", or "3 batches: bat_1, bat_2, bat_3" (the first few). */
function recordBatchesText_(record) {
  const ids = (Array.isArray(record.batches) ? record.batches : [record.batch_id])
    .filter(function (id) { return !!id; });
  if (ids.length <= 1) return 'batch ' + (ids[0] || record.batch_id);
  return ids.length + ' batches: ' + ids.slice(0, 3).join(', ') + (ids.length > 3 ? ', …' : '');
}

function saveSubmission_(hash, record) {
  const props = documentProperties_();
  props.setProperty(SUBMISSION_PREFIX + hash, JSON.stringify(record));
  // Forget expired records so the properties never fill up.
  props.getKeys().forEach(function (name) {
    if (name.indexOf(SUBMISSION_PREFIX) !== 0 || name === SUBMISSION_PREFIX + hash) return;
    const old = parseRecord_(props.getProperty(name));
    if (!old || recordExpired_(old)) props.deleteProperty(name);
  });
}

function deleteSubmission_(hash) {
  documentProperties_().deleteProperty(SUBMISSION_PREFIX + hash);
}

function documentProperties_() {
  const props = PropertiesService.getDocumentProperties();
  if (!props) throw new UserError(NOT_BOUND_TEXT);
  return props;
}

/** Whether the user saw exactly this record when they said "send". */
function sameSubmission_(seen, current) {
  return !!seen && !!current && seen.nonce === current.nonce && seen.state === current.state;
}

function parseRecord_(raw) {
  if (!raw) return null;
  try {
    const record = JSON.parse(raw);
    return record && typeof record.at === 'number' && record.key ? record : null;
  } catch (err) {
    return null;
  }
}

function sha256Hex_(text) {
  const bytes = Utilities.computeDigest(
    Utilities.DigestAlgorithm.SHA_256, text, Utilities.Charset.UTF_8);
  return bytes.map(function (b) { return ((b & 0xff) + 0x100).toString(16).slice(1); }).join('');
}
