/**
 * Settings: where the pipeline is and how requests sign in.
 *
 * - API URL and sign-in mode: Script Properties, shared by everyone using this
 *   spreadsheet. Not secret — but every editor of the spreadsheet can open the
 *   script editor and read (and change) Script Properties. So the API URL is
 *   checked, every time it is loaded, against the hosts the deploying team
 *   put in Deployment.gs (code, not a property).
 * - API key: User Properties of the person who enters it. Only that person's
 *   own executions of the script can read it; other editors cannot see it in
 *   the editor, and it can be revoked per person. That is why the key is
 *   never put in Script Properties. Prefer the Google sign-in mode: then
 *   nothing secret is stored at all.
 * - "Email me about my batches": User Properties of each person, off by default
 *   (Notify.gs keeps the batches being watched there too).
 */

const PROP_API_URL = 'AI_IMAGES_API_URL';
const PROP_AUTH_MODE = 'AI_IMAGES_AUTH_MODE';
const PROP_API_KEY = 'AI_IMAGES_API_KEY';
const AUTH_GOOGLE = 'google';
const AUTH_KEY = 'api_key';

function loadSettings_() {
  const props = PropertiesService.getScriptProperties();
  const apiUrl = normaliseApiUrl_(props.getProperty(PROP_API_URL) || '');
  if (!apiUrl) {
    throw new UserError(
      'The API URL is not set yet.\n\nOpen AI images → Settings and enter the address of ' +
      'the image pipeline (ask its administrator).');
  }
  // Checked on every load, not only in the dialog: any editor can change the
  // property directly, and the next request would carry your key or token there.
  const problem = apiUrlProblem_(apiUrl);
  if (problem) {
    throw new UserError(
      'The API URL in this spreadsheet\'s settings ("' + clip_(apiUrl) + '") is not allowed: ' +
      problem + '.\n\nNothing was sent. Someone may have changed it: tell the pipeline\'s ' +
      'administrator, then set it again in AI images → Settings.');
  }
  const authMode = props.getProperty(PROP_AUTH_MODE) === AUTH_GOOGLE ? AUTH_GOOGLE : AUTH_KEY;
  return { apiUrl: apiUrl, authMode: authMode };
}

function normaliseApiUrl_(url) {
  return String(url).trim().replace(/\/+$/, '');
}

const LOOPBACK_HOSTS = ['127.0.0.1', 'localhost', '[::1]'];

/**
 * Why `url` may not be the API URL, or null if it may: https, no user name,
 * query or fragment, on a host of DEPLOYMENT.apiHosts (Deployment.gs). Plain
 * http to this machine only where the deployment says `loopbackHttp` (the
 * local test stack; never in a pushed copy).
 */
function apiUrlProblem_(url) {
  const parts = /^([a-z]+):\/\/([^/?#\s@\\]+)(\/[^?#\s\\]*)?$/i.exec(url);
  const authority = parts && /^([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?$/.exec(parts[2].toLowerCase());
  if (!parts || !authority) {
    return 'it must be an https:// address without a user name, query or fragment';
  }
  const scheme = parts[1].toLowerCase();
  const host = authority[1].replace(/\.$/, '');
  if (scheme === 'http' && DEPLOYMENT.loopbackHttp === true && LOOPBACK_HOSTS.indexOf(host) >= 0) {
    return null;
  }
  if (scheme !== 'https') return 'it must start with https://';
  const hosts = DEPLOYMENT.apiHosts || [];
  if (!hosts.length) {
    return 'this copy of the script names no API host yet (the deploying team sets it in ' +
      'Deployment.gs)';
  }
  if (!hosts.some((pattern) => hostMatches_(host, String(pattern).toLowerCase()))) {
    return 'its host ' + host + ' is not one this copy of the script was deployed for (' +
      hosts.join(', ') + ')';
  }
  return null;
}

function hostMatches_(host, pattern) {
  if (pattern.indexOf('*.') === 0) {
    const suffix = pattern.slice(1);  // ".example.com"
    return host.length > suffix.length && host.slice(-suffix.length) === suffix;
  }
  return host === pattern;
}

function authHeaders_(settings) {
  if (settings.authMode === AUTH_GOOGLE) {
    let token = null;
    try {
      token = ScriptApp.getIdentityToken();
    } catch (err) {
      token = null;
    }
    if (!token) {
      throw new UserError(
        'Could not get your Google sign-in token for the image service.\n\nCheck the sign-in ' +
        'in AI images → Settings; if it asks, allow the script to "see your email address" ' +
        'and "associate you with your personal info" (the openid scope).');
    }
    return { Authorization: 'Bearer ' + token };
  }
  const key = PropertiesService.getUserProperties().getProperty(PROP_API_KEY);
  if (!key) {
    throw new UserError(
      'No API key is set for you yet.\n\nOpen AI images → Settings and enter the API key ' +
      'you got from the pipeline\'s administrator, or switch the sign-in to "google".');
  }
  return { 'X-API-Key': key };
}

/** Three prompts: API URL, sign-in mode, API key (only in key mode); then a summary. */
function settingsDialog_(ui) {
  const title = dialogTitle_('Settings');
  const scriptProps = PropertiesService.getScriptProperties();
  const userProps = PropertiesService.getUserProperties();
  const oldUrl = scriptProps.getProperty(PROP_API_URL) || '';
  const oldMode = scriptProps.getProperty(PROP_AUTH_MODE) === AUTH_GOOGLE ? AUTH_GOOGLE : AUTH_KEY;
  const oldKey = userProps.getProperty(PROP_API_KEY) || '';
  const cancelled = 'Settings were not changed.';

  const urlAnswer = ui.prompt(title,
    'Step 1 of 3 — API URL: the HTTPS address of the image pipeline\'s function, e.g.\n' +
    'https://europe-west1-my-project.cloudfunctions.net/http_api\n\n' +
    'Current: ' + (oldUrl || '(not set)') + '\nLeave empty to keep it.',
    ui.ButtonSet.OK_CANCEL);
  if (urlAnswer.getSelectedButton() !== ui.Button.OK) throw new UserError(cancelled);
  const url = normaliseApiUrl_(urlAnswer.getResponseText() || oldUrl);
  const problem = apiUrlProblem_(url);
  if (problem) {
    throw new UserError('The API URL "' + clip_(url) + '" is not allowed: ' + problem + '. ' +
      cancelled);
  }

  const modeAnswer = ui.prompt(title,
    'Step 2 of 3 — sign-in: how requests prove who you are.\n\n' +
    '  google — your Google account (an identity token; nothing secret is stored)\n' +
    '  key — an API key from the pipeline\'s administrator\n\n' +
    'Current: ' + (oldMode === AUTH_GOOGLE ? 'google' : 'key') +
    '\nType google or key (leave empty to keep it).',
    ui.ButtonSet.OK_CANCEL);
  if (modeAnswer.getSelectedButton() !== ui.Button.OK) throw new UserError(cancelled);
  const modeText = modeAnswer.getResponseText().trim().toLowerCase();
  let mode = oldMode;
  if (/^(google|token|id[ _-]?token|identity)$/.test(modeText)) {
    mode = AUTH_GOOGLE;
  } else if (/^(key|api[ _-]?key)$/.test(modeText)) {
    mode = AUTH_KEY;
  } else if (modeText) {
    throw new UserError('Type "google" or "key" for the sign-in (found "' + clip_(modeText) +
      '"). ' + cancelled);
  }

  let key = oldKey;
  if (mode === AUTH_KEY) {
    const keyAnswer = ui.prompt(title,
      'Step 3 of 3 — your API key.\n\n' +
      'It is saved in your User Properties: only your own runs of this script can read it, ' +
      'not the other editors of this spreadsheet. It is never put in Script Properties, ' +
      'which every editor of the script can read.\n\n' +
      'Current: ' + (oldKey ? maskKey_(oldKey) : '(none)') +
      '\nLeave empty to keep it; type - to remove it.',
      ui.ButtonSet.OK_CANCEL);
    if (keyAnswer.getSelectedButton() !== ui.Button.OK) throw new UserError(cancelled);
    const typed = keyAnswer.getResponseText().trim();
    if (typed === '-') key = '';
    else if (typed) key = typed;
    if (!key) {
      throw new UserError('An API key is needed for the "key" sign-in. ' + cancelled);
    }
  }

  const shared = {};
  shared[PROP_API_URL] = url;
  shared[PROP_AUTH_MODE] = mode;
  scriptProps.setProperties(shared);
  if (key !== oldKey) {
    if (key) userProps.setProperty(PROP_API_KEY, key);
    else userProps.deleteProperty(PROP_API_KEY);
  }

  const lines = ['Saved.', '', 'API URL: ' + url];
  if (mode === AUTH_GOOGLE) {
    lines.push('Sign-in: your Google account (identity token)');
    lines.push(identityTokenText_());
  } else {
    lines.push('Sign-in: API key ' + maskKey_(key) + ', kept in your User Properties');
  }
  lines.push('');
  lines.push('Note: the API URL and the sign-in mode are kept in Script Properties, which ' +
    'every editor of this spreadsheet\'s script can read and change. Never put an API key ' +
    'or any other secret there.');
  ui.alert(title, lines.join('\n'), ui.ButtonSet.OK);
}

function maskKey_(key) {
  return key.length <= 4 ? '••••' : '••••' + key.slice(-4);
}

/** What the server must accept: the token's audience (client id) and email. */
function identityTokenText_() {
  let token = null;
  try {
    token = ScriptApp.getIdentityToken();
  } catch (err) {
    token = null;
  }
  if (!token) {
    return 'No Google sign-in token is available yet: reload the spreadsheet, run a menu ' +
      'item and allow the requested access (the openid and email scopes).';
  }
  try {
    let part = token.split('.')[1];
    while (part.length % 4) part += '=';
    const claims = JSON.parse(
      Utilities.newBlob(Utilities.base64DecodeWebSafe(part)).getDataAsString());
    return 'Token audience (give this to the administrator for the server\'s allowed ' +
      'audiences): ' + claims.aud + '\nSigned in as: ' + (claims.email || '(no email in token)');
  } catch (err) {
    return 'A Google sign-in token is available.';
  }
}

/**
 * "Email me about my batches…": a setting of each user (User Properties, off by
 * default). When on, each batch this user sends with Generate is watched and an
 * email goes to them when it ends or needs attention (Notify.gs).
 */
function emailSettingDialog_(ui) {
  const title = dialogTitle_('Email me');
  const on = emailMeIsOn_();
  const email = activeEmail_();
  const answer = ui.alert(title,
    'Email me' + (email ? ' (' + email + ')' : '') + ' when a batch I send with "Generate ' +
    'selected rows" ends or needs attention (scenes failing, paused for the daily Gemini ' +
    'quota or the spending cap)?\n\n' +
    'Now: ' + (on ? 'on' : 'off') + '.\n\n' +
    'Yes: turn it on. No: turn it off.\n\n' +
    'This is your setting only (kept in your User Properties). The emails are sent from ' +
    'your account to you, by a timer of yours that checks your batches every ' +
    MAIL_EVERY_MINUTES + ' minutes while one is running.',
    ui.ButtonSet.YES_NO_CANCEL);
  if (answer !== ui.Button.YES && answer !== ui.Button.NO) {
    throw new UserError('The email setting was not changed (' + (on ? 'on' : 'off') + ').');
  }
  const props = PropertiesService.getUserProperties();
  if (answer === ui.Button.YES) {
    if (!email) {
      throw new UserError('Apps Script does not give this script your email address, so it ' +
        'cannot email you. The setting was not changed.');
    }
    props.setProperty(PROP_EMAIL_ME, 'on');
    ui.alert(title, 'On: the batches you send from now on are followed, and you get an ' +
      'email at ' + email + ' when each ends or needs attention.', ui.ButtonSet.OK);
    return;
  }
  props.deleteProperty(PROP_EMAIL_ME);
  stopBatchMail_();
  ui.alert(title, 'Off: no more emails about your batches (those being followed are no ' +
    'longer followed).', ui.ButtonSet.OK);
}
