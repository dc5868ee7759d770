/**
 * The email when a batch ends or needs attention, sent from the sheet.
 *
 * Who asked: the "Email me about my batches…" setting (Settings.gs), per user,
 * off by default. When it is on and Generate's batch is accepted, the batch is
 * recorded in that user's User Properties ({batch_id, email, sent: [], ...}),
 * and one time-driven trigger of that user (checkBatchMail, every 5 minutes)
 * asks GET /batches/{id} for each recorded batch. Each event the answer lists
 * (`events`: ended, failures, paused_daily_quota, paused_spend_cap) that is not
 * yet in `sent` becomes one email to the user, from the user's own account.
 * A batch that ended is forgotten after its email; the trigger deletes itself
 * when no batch is left.
 *
 * At most once per event: under the user lock (so two runs of the trigger never
 * overlap), an event is recorded in `sent` and saved BEFORE its email is sent.
 * A run that dies between the two loses that email; none is ever sent twice.
 * (The server keeps its own record of what it told the team's chat; the two are
 * independent.)
 */

const MAIL_HANDLER = 'checkBatchMail';
const MAIL_EVERY_MINUTES = 5;
/** User property: "on" when this user asked for the emails. */
const PROP_EMAIL_ME = 'AI_IMAGES_EMAIL_ME';
/** User properties, one per batch being watched: PREFIX + batch id -> JSON record. */
const WATCH_PREFIX = 'AI_IMAGES_BATCH_MAIL_';
/** A batch still not ended after this long is no longer watched (economy ends within 24 h). */
const WATCH_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000;
const BATCH_EVENTS = ['ended', 'failures', 'paused_daily_quota', 'paused_spend_cap'];

/** Whether this user asked to be emailed about their batches. */
function emailMeIsOn_() {
  return PropertiesService.getUserProperties().getProperty(PROP_EMAIL_ME) === 'on';
}

/** The signed-in user's address ('' when Apps Script does not give it). */
function activeEmail_() {
  try {
    return String(Session.getActiveUser().getEmail() || '');
  } catch (err) {
    return '';
  }
}

/**
 * After Generate's batch was accepted: if this user asked, records the batch and
 * makes sure the trigger runs. Returns the line for Generate's message ('' when
 * not asked). Never throws: the batch is sent whatever happens to its email.
 */
function watchIfAsked_(batchId, table) {
  if (!batchId || !emailMeIsOn_()) return '';
  try {
    const email = activeEmail_();
    if (!email) {
      return 'No email will be sent about this batch: Apps Script did not give your email ' +
        'address (AI images → Email me about my batches…).';
    }
    const sheetUrl = table.ss.getUrl() + '#gid=' + table.sheet.getSheetId();
    withUserLock_(function () {
      const props = PropertiesService.getUserProperties();
      const key = WATCH_PREFIX + batchId;
      if (!props.getProperty(key)) {
        props.setProperty(key, JSON.stringify({
          batch_id: String(batchId), email: email, sent: [], sheet_url: sheetUrl, at: Date.now(),
        }));
      }
      ensureMailTrigger_();
    });
    return 'You will get an email at ' + email + ' when this batch ends or needs attention.';
  } catch (err) {
    console.error(err && err.stack ? err.stack : String(err));
    return 'Could not arrange the email about this batch: ' +
      (err && err.message ? err.message : String(err)) + '. The batch was sent all the same.';
  }
}

/** Runs fn under this user's lock (one trigger run or Generate at a time). */
function withUserLock_(fn) {
  const lock = LockService.getUserLock();
  if (!lock.tryLock(LOCK_WAIT_MS)) {
    throw new UserError('Another run of this script for you is busy; try again in a minute.');
  }
  try {
    return fn();
  } finally {
    lock.releaseLock();
  }
}

/** One time-driven trigger of this user for checkBatchMail: created if none, never two. */
function ensureMailTrigger_() {
  const exists = ScriptApp.getProjectTriggers().some(function (trigger) {
    return trigger.getHandlerFunction() === MAIL_HANDLER;
  });
  if (!exists) {
    ScriptApp.newTrigger(MAIL_HANDLER).timeBased().everyMinutes(MAIL_EVERY_MINUTES).create();
  }
}

function removeMailTriggers_() {
  ScriptApp.getProjectTriggers().forEach(function (trigger) {
    if (trigger.getHandlerFunction() === MAIL_HANDLER) ScriptApp.deleteTrigger(trigger);
  });
}

/** This user's watched batches: [{key, record}], unreadable ones dropped. */
function watchedBatches_(props) {
  const out = [];
  props.getKeys().forEach(function (key) {
    if (key.indexOf(WATCH_PREFIX) !== 0) return;
    let record = null;
    try {
      record = JSON.parse(props.getProperty(key));
    } catch (err) {
      record = null;
    }
    if (!record || !record.batch_id || !Array.isArray(record.sent)) {
      props.deleteProperty(key);
      return;
    }
    out.push({ key: key, record: record });
  });
  return out;
}

/**
 * The trigger: for each watched batch, one email per new event. A run that finds
 * another one busy (the user lock) leaves it to the next.
 */
function checkBatchMail() {
  const lock = LockService.getUserLock();
  if (!lock.tryLock(LOCK_WAIT_MS)) return;
  try {
    checkBatchMailLocked_();
  } finally {
    lock.releaseLock();
  }
}

function checkBatchMailLocked_() {
  const props = PropertiesService.getUserProperties();
  let watched = watchedBatches_(props);
  if (!watched.length) {
    removeMailTriggers_();
    return;
  }
  let settings;
  try {
    settings = loadSettings_();
  } catch (err) {
    console.warn('Batch emails: the settings cannot be used now: ' + err.message);
    return;  // kept: the next run tries again
  }
  watched.forEach(function (entry) {
    const record = entry.record;
    if (Date.now() - (Number(record.at) || 0) > WATCH_MAX_AGE_MS) {
      props.deleteProperty(entry.key);
      return;
    }
    let res;
    try {
      res = callApi_(settings, 'get', '/batches/' + encodeURIComponent(record.batch_id));
    } catch (err) {
      console.warn('Batch emails: ' + record.batch_id + ': ' + err.message);
      return;
    }
    if (res.status === 404) {
      // Not a batch of this sign-in on this server: it never will be.
      console.warn('Batch emails: ' + record.batch_id + ' not found; no longer watched.');
      props.deleteProperty(entry.key);
      return;
    }
    if (res.status !== 200 || !res.json || typeof res.json !== 'object') {
      console.warn('Batch emails: ' + record.batch_id + ': HTTP ' + res.status);
      return;
    }
    const events = (Array.isArray(res.json.events) ? res.json.events : []).filter(function (e) {
      return BATCH_EVENTS.indexOf(e) >= 0 && record.sent.indexOf(e) < 0;
    });
    // The end last: its email carries the batch's final figures.
    events.sort(function (a, b) { return (a === 'ended') - (b === 'ended'); });
    for (let i = 0; i < events.length; i++) {
      if (mailQuotaLeft_() < 1) {
        console.warn('Batch emails: no email quota left today; trying again later.');
        return;  // nothing recorded: the next run sends it
      }
      record.sent.push(events[i]);
      props.setProperty(entry.key, JSON.stringify(record));  // recorded, then sent: never twice
      try {
        const mail = batchMail_(events[i], record, res.json);
        MailApp.sendEmail(record.email, mail.subject, mail.body);
      } catch (err) {
        console.error('Batch emails: ' + record.batch_id + ' ' + events[i] + ' not sent: ' +
          (err && err.message ? err.message : String(err)));
      }
    }
    if (record.sent.indexOf('ended') >= 0) props.deleteProperty(entry.key);
  });
  if (!watchedBatches_(props).length) removeMailTriggers_();
}

function mailQuotaLeft_() {
  try {
    return MailApp.getRemainingDailyQuota();
  } catch (err) {
    return 1;  // unknown: try, the send says if it cannot
  }
}

/** The subject and plain-text body of one event's email. */
function batchMail_(event, record, view) {
  const counts = view.counts && typeof view.counts === 'object' ? view.counts : {};
  const failed = (Number(counts.failed) || 0) + (Number(counts.partial) || 0);
  const id = record.batch_id;
  let what;
  let more;
  if (event === 'ended') {
    what = failed ? 'ended with failures' : 'is done';
    more = 'Every scene of the batch has ended.';
  } else if (event === 'failures') {
    what = 'needs attention: scenes are failing';
    more = 'Several scenes failed while the others are still being made; their rows say why.';
  } else if (event === 'paused_daily_quota') {
    what = 'is paused: Gemini\'s daily quota is used up';
    more = 'It resumes by itself after midnight Pacific time.';
  } else {
    what = 'is paused: the project\'s spending cap is reached';
    more = 'It resumes when the cap allows (an administrator can raise it in AI Studio).';
  }
  const scenes = Object.keys(counts).sort().map(function (state) {
    return state + ' ' + counts[state];
  }).join(', ');
  const lines = [
    'Batch ' + id + ' ' + what + '.',
    more,
    '',
    'Scenes: ' + (scenes || 'none'),
    'Images: ' + (view.image_count === undefined ? '?' : view.image_count),
    'Cost so far: $' + (view.cost_usd === undefined ? '?' : view.cost_usd) +
      (view.estimated_cost_usd !== undefined ? ' (estimated $' + view.estimated_cost_usd + ')' : ''),
    'Sheet: ' + record.sheet_url,
    '',
    'You get this email because you turned on AI images → Email me about my batches… in ' +
      'the sheet. Choose it again to turn it off.',
  ];
  return { subject: 'AI images: batch ' + id + ' ' + what, body: lines.join('\n') };
}

/** Turns the emails off for this user: forgets the watched batches and the trigger. */
function stopBatchMail_() {
  withUserLock_(function () {
    const props = PropertiesService.getUserProperties();
    watchedBatches_(props).forEach(function (entry) { props.deleteProperty(entry.key); });
    removeMailTriggers_();
  });
}
