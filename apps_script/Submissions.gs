/**
 * Idempotency of "Generate".
 *
 * A double click in Apps Script is two executions running side by side, each
 * with its own confirmation dialog. Both compute the same hash of what they
 * send (spreadsheet, sheet and the items); under the document lock, the first
 * stores a record for that hash in the Document Properties — a random nonce,
 * the Idempotency-Key derived from hash and nonce, and "sending" — then
 * "sent" with the batch id once the 202 arrives. The second finds the "sent"
 * record and sends nothing. A record still "sending" (the answer never came)
 * makes the next click reuse its key, so the server replays the first answer
 * instead of running the batch twice. Records expire after
 * SUBMISSION_WINDOW_MS; sending identical rows again within that time needs an
 * explicit "yes, send again", which draws a new nonce and so a new key.
 */

const SUBMISSION_WINDOW_MS = 10 * 60 * 1000;
const SUBMISSION_PREFIX = 'AI_IMAGES_SUBMISSION_';

/** Hex SHA-256 of what a batch sends, scoped to this spreadsheet and sheet. */
function submissionHash_(table, items) {
  return sha256Hex_(JSON.stringify([table.ss.getId(), table.sheet.getName(), items]));
}

/** The record for this hash if it is younger than the window, else null. */
function getSubmission_(hash) {
  const raw = documentProperties_().getProperty(SUBMISSION_PREFIX + hash);
  const record = parseRecord_(raw);
  return record && Date.now() - record.at < SUBMISSION_WINDOW_MS ? record : null;
}

function newSubmission_(hash) {
  const nonce = Utilities.getUuid();
  return {
    nonce: nonce,
    key: 'sheets-' + sha256Hex_(hash + ':' + nonce),
    state: 'sending',
    at: Date.now(),
  };
}

function saveSubmission_(hash, record) {
  const props = documentProperties_();
  props.setProperty(SUBMISSION_PREFIX + hash, JSON.stringify(record));
  // Forget expired records so the properties never fill up.
  props.getKeys().forEach(function (name) {
    if (name.indexOf(SUBMISSION_PREFIX) !== 0 || name === SUBMISSION_PREFIX + hash) return;
    const old = parseRecord_(props.getProperty(name));
    if (!old || Date.now() - old.at >= SUBMISSION_WINDOW_MS) props.deleteProperty(name);
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
