/**
 * Deployment: where this copy of the script may send requests.
 *
 * Set by the team that deploys the pipeline, before `clasp push`, from
 * `terraform output -raw http_function_url` (its host name). It is code, not a
 * Script Property: Script Properties can be changed by every editor of the
 * spreadsheet, and whoever sets the API URL receives everyone's API key or
 * Google sign-in token with their next request. The script checks the API URL
 * against this list every time it loads its settings and sends nothing to any
 * other host. (An editor of a bound script can also edit this file; see
 * README.md, "What the properties protect".)
 *
 * apiHosts: the host names the API URL may use, https only. "*.example.com"
 *   matches names that end in ".example.com". Never "*.cloudfunctions.net" or
 *   "*.run.app": anyone can deploy a function there. Empty: nothing is sent.
 */
const DEPLOYMENT = Object.freeze({
  apiHosts: Object.freeze([
    // 'europe-west1-my-project.cloudfunctions.net',
  ]),
});
