'use strict';
/**
 * The API URL is checked against the deployment (Deployment.gs: code, not a
 * Script Property) every time the script loads its settings, so an editor who
 * changes the URL in Script Properties cannot collect colleagues' API keys or
 * ID tokens: nothing is sent to a host the deploying team did not name.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { createHarness } = require('./harness');
const { startServer } = require('./servers');
const { stackEnv, sceneId, addScenes, rowsA1, harnessFor } = require('./stack');

let env;
let collector;

test.before(async () => {
  env = stackEnv();
  collector = await startServer({ routes: [] });  // an editor's server on loopback
});

test.after(async () => {
  await collector.close();
});

const PRODUCTION = { apiHosts: ['api.example.com'] };  // as a team deploys it: https, one host

test('a URL changed in Script Properties to another host sends nothing', async () => {
  const [row] = await addScenes(env, [{ scene_id: sceneId('collect'), prompt: 'x', variants: 1 }]);
  const port = new URL(collector.url).port;
  for (const [mode, url] of [
    ['api_key', collector.url],
    ['api_key', `https://127.0.0.1:${port}`],
    ['google', collector.url],
  ]) {
    const h = harnessFor(env, {
      apiUrl: url,
      authMode: mode,
      harness: { deployment: PRODUCTION, selection: [rowsA1(row)], identityToken: 'h.p.s' },
    });
    for (const action of ['estimateSelectedRows', 'refreshStatus']) {
      const run = h.run(action);
      assert.equal(run.thrown, null);
      assert.deepEqual(run.fetches, [], `${action} sent a request to ${url}`);
      assert.match(run.lastDialog.text, /^The API URL in this spreadsheet's settings \(".+"\) is not allowed: [\s\S]*Nothing was sent\./);
    }
  }
  assert.deepEqual(await collector.log(), []);
});

test('as shipped, Deployment.gs names no host: nothing is sent anywhere', () => {
  for (const url of [env.API_URL, 'https://api.example.com']) {
    const h = createHarness({ env, deployment: 'shipped', scriptProperties: { AI_IMAGES_API_URL: url } });
    assert.match(h.context.apiUrlProblem_(url), /must start with https:\/\/|names no API host yet \(the deploying team sets it in Deployment\.gs\)/);
  }
});

test('the Settings dialog refuses a host outside the deployment and keeps the old URL', () => {
  const h = createHarness({ env, deployment: PRODUCTION, scriptProperties: { AI_IMAGES_API_URL: 'https://api.example.com' } });
  h.answer({ button: 'OK', text: 'https://collector.example.net/http_api' });
  assert.match(h.run('openSettings').lastDialog.text,
    /^The API URL "https:\/\/collector\.example\.net\/http_api" is not allowed: its host collector\.example\.net is not one this copy of the script was deployed for \(api\.example\.com\)\. Settings were not changed\.$/);
  assert.equal(h.scriptProps.getProperty('AI_IMAGES_API_URL'), 'https://api.example.com');
});

test('host rules: exact names or "*." suffixes, https only, nothing that hides another host', () => {
  const h = createHarness({ env, deployment: { apiHosts: ['api.example.com', '*.corp.example'] } });
  const allowed = [
    'https://api.example.com',
    'https://API.Example.com/http_api',
    'https://api.example.com.:443/x',
    'https://eu.corp.example',
    'https://a.b.corp.example:8443/http_api',
  ];
  const refused = [
    'http://api.example.com',
    'ftp://api.example.com',
    'https://api.example.com.evil.test',
    'https://evilapi.example.com',
    'https://corp.example',
    'https://xcorp.example',
    'https://api.example.com@evil.test',
    'https://user:pw@api.example.com',
    'https://evil.test/?api.example.com',
    'https://evil.test#@api.example.com',
    'https://api.example.com\\@evil.test',
    'https://evil.test\\api.example.com',
    'https://api.example.com/x?y=1',
    'http://127.0.0.1:8080',
    'http://localhost',
    'javascript:alert(1)',
    '',
  ];
  for (const url of allowed) assert.equal(h.context.apiUrlProblem_(url), null, url);
  for (const url of refused) assert.equal(typeof h.context.apiUrlProblem_(url), 'string', url);
});
