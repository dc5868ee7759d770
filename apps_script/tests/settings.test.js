'use strict';
/**
 * Settings and the project files: where each setting is stored, the Script
 * Properties warning, the manifest's scopes, what clasp pushes.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { createHarness, SCRIPT_DIR } = require('./harness');
const { stackEnv } = require('./stack');

let env;
test.before(() => { env = stackEnv(); });

function fakeIdToken(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'RS256' })}.${part(claims)}.c2ln`;
}

test('API key mode: URL and mode in Script Properties, the key in User Properties, with the warning', () => {
  const h = createHarness({ env });
  h.answer(
    { button: 'OK', text: 'https://europe-west1-p.cloudfunctions.net/http_api/', expect: /Step 1 of 3 — API URL/ },
    { button: 'OK', text: 'key', expect: /Step 2 of 3 — sign-in/ },
    { button: 'OK', text: 'secret-key-1234', expect: /saved in your User Properties[\s\S]*never put in Script Properties/ },
  );
  const run = h.run('openSettings');
  assert.equal(run.thrown, null);
  assert.deepEqual(h.scriptProps.getProperties(), {
    AI_IMAGES_API_URL: 'https://europe-west1-p.cloudfunctions.net/http_api',
    AI_IMAGES_AUTH_MODE: 'api_key',
  });
  assert.deepEqual(h.userProps.getProperties(), { AI_IMAGES_API_KEY: 'secret-key-1234' });
  const text = run.lastDialog.text;
  assert.match(text, /Sign-in: API key ••••1234, kept in your User Properties/);
  assert.match(text, /kept in Script Properties, which every editor of this spreadsheet's script can read and change\. Never put an API key/);
  assert.ok(!text.includes('secret-key-1234'), 'the key is never shown');
  assert.deepEqual(h.answers, []);

  // Empty answers keep what is there; "-" would remove the key.
  h.answer({ button: 'OK', text: '' }, { button: 'OK', text: '' }, { button: 'OK', text: '' });
  h.run('openSettings');
  assert.equal(h.scriptProps.getProperty('AI_IMAGES_API_URL'), 'https://europe-west1-p.cloudfunctions.net/http_api');
  assert.equal(h.userProps.getProperty('AI_IMAGES_API_KEY'), 'secret-key-1234');
});

test('Google sign-in mode: no key asked, and the token audience and email are shown', () => {
  const h = createHarness({ env, identityToken: fakeIdToken({ aud: '1234-abc.apps.googleusercontent.com', email: 'ana@example.com' }) });
  h.answer({ button: 'OK', text: 'https://api.example.com' }, { button: 'OK', text: 'google' });
  const run = h.run('openSettings');
  assert.equal(run.thrown, null);
  assert.equal(h.scriptProps.getProperty('AI_IMAGES_AUTH_MODE'), 'google');
  assert.equal(run.dialogs.filter((d) => d.kind === 'prompt').length, 2);
  assert.match(run.lastDialog.text, /Sign-in: your Google account \(identity token\)/);
  assert.match(run.lastDialog.text, /Token audience .*: 1234-abc\.apps\.googleusercontent\.com\nSigned in as: ana@example\.com/);
});

test('a plain-http or malformed URL, a bad mode, or Cancel change nothing', () => {
  const h = createHarness({ env, scriptProperties: { AI_IMAGES_API_URL: 'https://old.example.com' } });
  h.answer({ button: 'OK', text: 'http://api.example.com' });
  assert.match(h.run('openSettings').lastDialog.text, /^The API URL "http:\/\/api\.example\.com" is not allowed: it must start with https:\/\/\. Settings were not changed\.$/);
  h.answer({ button: 'OK', text: '' }, { button: 'OK', text: 'password' });
  assert.match(h.run('openSettings').lastDialog.text, /Type "google" or "key"/);
  h.answer({ button: 'CANCEL' });
  assert.equal(h.run('openSettings').lastDialog.text, 'Settings were not changed.');
  assert.deepEqual(h.scriptProps.getProperties(), { AI_IMAGES_API_URL: 'https://old.example.com' });
  assert.deepEqual(h.userProps.getProperties(), {});
});

test('the manifest asks for the narrowest scopes that work', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(SCRIPT_DIR, 'appsscript.json'), 'utf8'));
  assert.equal(manifest.runtimeVersion, 'V8');
  // send_mail and scriptapp: the email about a batch (MailApp, its time-driven trigger).
  assert.deepEqual([...manifest.oauthScopes].sort(), [
    'https://www.googleapis.com/auth/script.container.ui',
    'https://www.googleapis.com/auth/script.external_request',
    'https://www.googleapis.com/auth/script.scriptapp',
    'https://www.googleapis.com/auth/script.send_mail',
    'https://www.googleapis.com/auth/spreadsheets.currentonly',
    'https://www.googleapis.com/auth/userinfo.email',
    'openid',
  ]);
});

test('clasp pushes only the manifest and the .gs files', () => {
  const ignore = fs.readFileSync(path.join(SCRIPT_DIR, '.claspignore'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
  assert.deepEqual(ignore, ['**/**', '!appsscript.json', '!*.gs']);
  const example = JSON.parse(fs.readFileSync(path.join(SCRIPT_DIR, '.clasp.json.example'), 'utf8'));
  assert.ok(example.scriptId);
  assert.equal(example.rootDir, '.');
});

test('the sources load in any file order, and every menu item has its function', () => {
  for (const loadOrder of ['sorted', 'reversed']) {
    const h = createHarness({ env, loadOrder });
    h.run('onOpen');
    const items = h.menus[0].items.filter((i) => !i.separator);
    assert.equal(h.menus[0].name, 'AI images');
    for (const item of items) assert.equal(typeof h.context[item.functionName], 'function', item.functionName);
  }
});
