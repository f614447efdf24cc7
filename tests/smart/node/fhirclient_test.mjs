// Standalone patient launch of fhirlake's embedded SMART server driven by npm `fhirclient`
// (the SMART JS client library), as a Node app would use it; this script also plays the
// member's browser (login and consent forms).
//
// node fhirclient_test.mjs SANDBOX_BINARY
// Spawns the sandbox example on loopback, runs the launch, reads and searches through the
// gate, refreshes (fhirclient refreshes public clients without client_id), revokes, and checks
// the audit log. Prints TAP-like lines and "N passed, N failed".
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const smart = require('fhirclient');

let passed = 0;
let failed = 0;
const check = (cond, name, detail = '') => {
  if (cond) { passed += 1; console.log(`ok - ${name}`); } else { failed += 1; console.log(`FAIL - ${name} ${detail}`); }
};

// fhirclient keeps its launch state in a storage object; one in-memory store suffices here.
const store = new Map();
const storage = {
  get: async (k) => store.get(k),
  set: async (k, v) => { store.set(k, v); return v; },
  unset: async (k) => store.delete(k),
};

const SCOPE = 'launch/patient openid fhirUser offline_access patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.read';
let fhirBase;
let client;
let appError;

// The app.
const app = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/launch') {
      await smart(req, res, storage).authorize({
        iss: fhirBase, clientId: 'fhirclient-test', scope: SCOPE, redirectUri: '/callback', pkceMode: 'required',
      });
    } else if (url.pathname === '/callback') {
      client = await smart(req, res, storage).ready();
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ready');
    } else {
      res.writeHead(404); res.end();
    }
  } catch (e) {
    appError = e;
    res.writeHead(500); res.end(String(e));
  }
});
await new Promise((r) => app.listen(0, '127.0.0.1', r));
const appOrigin = `http://127.0.0.1:${app.address().port}`;

// The server under test.
const dir = mkdtempSync(join(tmpdir(), 'fhirlake-sbx-'));
const sbx = spawn(process.argv[2], [dir, `${appOrigin}/callback`], { stdio: ['ignore', 'pipe', 'inherit'] });
const origin = await new Promise((resolve, reject) => {
  let buf = '';
  sbx.stdout.on('data', (d) => {
    buf += d;
    const m = buf.match(/LISTENING=(\S+)/);
    if (m) resolve(m[1]);
  });
  sbx.on('exit', (c) => reject(new Error(`sandbox exited ${c}`)));
  setTimeout(() => reject(new Error('sandbox did not start')), 30000);
});
fhirBase = `${origin}/fhir`;

const hidden = (html, name) => {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  if (!m) throw new Error(`no ${name} in page`);
  return m[1];
};
const form = (pairs) => new URLSearchParams(pairs).toString();
const post = (url, pairs) => fetch(url, {
  method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form(pairs),
});

try {
  // 1. The app starts the launch: fhirclient reads smart-configuration and redirects.
  let r = await fetch(`${appOrigin}/launch`, { redirect: 'manual' });
  const authorizeUrl = r.headers.get('location');
  check(r.status === 302 && authorizeUrl?.startsWith(`${origin}/auth/authorize?`), 'fhirclient redirects to the advertised authorize endpoint', `${r.status} ${authorizeUrl} ${appError ?? ''}`);
  const q = new URL(authorizeUrl).searchParams;
  check(q.get('code_challenge_method') === 'S256' && q.get('aud') === fhirBase, 'fhirclient sends PKCE S256 and aud');

  // 2. The member signs in and consents (the browser part).
  r = await fetch(authorizeUrl, { redirect: 'manual' });
  let html = await r.text();
  r = await post(`${origin}/auth/login`, [['request', hidden(html, 'request')], ['username', 'alice'], ['password', 'alice-pw']]);
  html = await r.text();
  const pairs = [['request', hidden(html, 'request')], ['decision', 'allow'], ['patient', hidden(html, 'patient')]];
  for (const s of SCOPE.split(' ')) pairs.push(['scope', s]);
  r = await post(`${origin}/auth/consent`, pairs);
  const callback = r.headers.get('location');
  check(callback?.startsWith(`${appOrigin}/callback?code=`), 'consent redirects to the app with a code', callback ?? '');

  // 3. The app's callback: fhirclient exchanges the code (with code_verifier).
  r = await fetch(callback, { redirect: 'manual' });
  check(r.status === 200 && client, 'fhirclient ready() completes the token exchange', `${r.status} ${appError ?? ''}`);
  check(client.getPatientId() === 'pat-sbx-1', 'token response names the patient');
  check(client.getFhirUser() === 'Patient/pat-sbx-1', 'id_token carries fhirUser');
  check(client.state.tokenResponse.expires_in === 3600, 'expires_in is 3600');

  // 4. Reads and searches through the gate.
  const pat = await client.patient.read();
  check(pat.resourceType === 'Patient' && pat.id === 'pat-sbx-1', 'client.patient.read()');
  const cov = await client.request('Coverage');
  check(cov.resourceType === 'Bundle' && cov.total === 1, 'Coverage search');
  let denied;
  try { await client.request('Condition'); } catch (e) { denied = e; }
  check(denied && denied.status === 403, 'a type without scope is refused with 403', String(denied));

  // 5. Refresh: fhirclient sends no client_id for a public client; the token rotates.
  const oldRefresh = client.state.tokenResponse.refresh_token;
  const oldAccess = client.getState('tokenResponse.access_token');
  await client.refresh();
  const newRefresh = client.state.tokenResponse.refresh_token;
  check(newRefresh && newRefresh !== oldRefresh && client.getState('tokenResponse.access_token') !== oldAccess, 'refresh rotates both tokens');
  check((await client.request('ExplanationOfBenefit')).total === 1, 'new access token works');

  // 6. Revocation (RFC 7009) at the advertised endpoint: the grant stops working.
  const conf = await (await fetch(`${fhirBase}/.well-known/smart-configuration`)).json();
  r = await post(conf.revocation_endpoint, [['token', newRefresh], ['token_type_hint', 'refresh_token']]);
  check(r.status === 200, 'revocation endpoint answers 200');
  let after;
  try { await client.request('Coverage'); } catch (e) { after = e; }
  check(after && after.status === 401, 'access token refused after revocation', String(after));

  // 7. The audit log recorded the accesses, with patients and counts.
  const audit = readFileSync(join(dir, 'audit.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  check(audit.some((e) => e.resource_type === 'Coverage' && e.outcome === 'success' && e.count === 1 && e.patients[0] === 'pat-sbx-1' && e.client_id === 'fhirclient-test'), 'audit records a successful Coverage search');
  check(audit.some((e) => e.resource_type === 'Condition' && e.outcome === 'denied' && e.status === 403), 'audit records the refusal');
} catch (e) {
  check(false, 'unexpected error', e.stack);
} finally {
  sbx.kill('SIGTERM');
  app.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
