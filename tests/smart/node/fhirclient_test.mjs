// Standalone patient launch against the real `fhirlake serve` (embedded SMART authorization
// server over the sample lake) driven by npm `fhirclient` (the SMART JS client library), as a
// Node app would use it; this script also plays the member's browser: it parses the login and
// consent pages' HTML forms and posts them, so the launch runs without anyone at a keyboard.
//
// node fhirclient_test.mjs FHIR_BASE APP_PORT AUDIT_LOG
// FHIR_BASE is the server's base URL (http://127.0.0.1:PORT/fhir); the app listens on
// 127.0.0.1:APP_PORT and its /callback is the registered redirect URI of the public client
// `fhirclient-test`. Members: john / john-pw (patient 567834), dora / dora-pw (delegate for
// M1002 and M1003). Runs the launch, reads and searches through the gate, refreshes
// (fhirclient refreshes public clients without client_id), revokes, runs a delegate launch
// with the patient picker, and checks the audit log. Prints TAP-like lines and
// "N passed, N failed".
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const smart = require('fhirclient');

const [fhirBase, appPort, auditPath] = process.argv.slice(2);
if (!fhirBase || !appPort || !auditPath) {
  console.error('usage: node fhirclient_test.mjs FHIR_BASE APP_PORT AUDIT_LOG');
  process.exit(2);
}
const origin = new URL(fhirBase).origin;

let passed = 0;
let failed = 0;
const check = (cond, name, detail = '') => {
  if (cond) { passed += 1; console.log(`ok - ${name}`); } else { failed += 1; console.log(`FAIL - ${name} ${detail}`); }
};

// fhirclient keeps its launch state in a storage object; one in-memory store per launch.
const newStorage = () => {
  const store = new Map();
  return {
    get: async (k) => store.get(k),
    set: async (k, v) => { store.set(k, v); return v; },
    unset: async (k) => store.delete(k),
  };
};

const SCOPE = 'launch/patient openid fhirUser offline_access patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.read';
const DELEGATE_SCOPE = 'launch/patient openid fhirUser patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs';
const EOB_IDS = ['inpatient-333333222222', 'outpatient-1234567890', 'pharmacy-89', 'professional-9991831999'];
let storage;
let scope;
let client;
let appError;

// The app.
const app = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/launch') {
      await smart(req, res, storage).authorize({
        iss: fhirBase, clientId: 'fhirclient-test', scope, redirectUri: '/callback', pkceMode: 'required',
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
await new Promise((r, j) => { app.once('error', j); app.listen(Number(appPort), '127.0.0.1', r); });
const appOrigin = `http://127.0.0.1:${app.address().port}`;

// The browser: a small HTML form reader (the pages are fhirlake's own, well-formed HTML).
const unescape = (s) => s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
const attr = (tag, name) => {
  const m = tag.match(new RegExp(`\\s${name}(?:="([^"]*)"|(?=[\\s>]))`));
  if (!m) return undefined;
  return m[1] === undefined ? '' : unescape(m[1]);
};
// Returns { action (absolute), fields: [{ name, value, type, checked }], buttons: [{ name, value }] }.
const parseForm = (html, pageUrl) => {
  const m = html.match(/<form\b[^>]*>([\s\S]*?)<\/form>/);
  if (!m) throw new Error(`no form in page: ${html.slice(0, 300)}`);
  const formTag = m[0].slice(0, m[0].indexOf('>') + 1);
  const action = new URL(attr(formTag, 'action') ?? '', pageUrl).toString();
  const fields = [...m[1].matchAll(/<input\b[^>]*>/g)].map(([t]) => ({
    name: attr(t, 'name'), value: attr(t, 'value') ?? '', type: attr(t, 'type') ?? 'text', checked: attr(t, 'checked') !== undefined,
  }));
  const buttons = [...m[1].matchAll(/<button\b[^>]*>/g)].map(([t]) => ({ name: attr(t, 'name'), value: attr(t, 'value') ?? '' }));
  return { action, method: (attr(formTag, 'method') ?? 'get').toLowerCase(), fields, buttons };
};
// Submits like a browser: hidden fields, text fields from `fill`, checkboxes as ticked (or as
// `tick(name, value, checked)` decides), and the named submit button.
const submit = (form, { fill = {}, tick, button } = {}) => {
  const body = new URLSearchParams();
  for (const f of form.fields) {
    if (!f.name) continue;
    if (f.type === 'checkbox' || f.type === 'radio') {
      if (tick ? tick(f.name, f.value, f.checked) : f.checked) body.append(f.name, f.value);
    } else if (f.type === 'hidden') {
      body.append(f.name, f.value);
    } else {
      body.append(f.name, fill[f.name] ?? f.value);
    }
  }
  if (button) {
    const b = form.buttons.find((x) => x.name === button.name && x.value === button.value);
    if (!b) throw new Error(`no button ${button.name}=${button.value}`);
    body.append(b.name, b.value);
  }
  return fetch(form.action, {
    method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: body.toString(),
  });
};

// One launch, from the app's /launch to ready(). Returns the authorize URL's query.
const launch = async (label, username, password, tick) => {
  client = undefined;
  appError = undefined;
  // 1. The app starts the launch: fhirclient reads smart-configuration and redirects.
  let r = await fetch(`${appOrigin}/launch`, { redirect: 'manual' });
  const authorizeUrl = r.headers.get('location');
  check(r.status === 302 && authorizeUrl?.startsWith(`${origin}/auth/authorize?`), `${label}: fhirclient redirects to the advertised authorize endpoint`, `${r.status} ${authorizeUrl} ${appError ?? ''}`);
  const q = new URL(authorizeUrl).searchParams;
  check(q.get('code_challenge_method') === 'S256' && q.get('code_challenge') && q.get('aud') === fhirBase && q.get('redirect_uri') === `${appOrigin}/callback`,
    `${label}: fhirclient sends PKCE S256, aud and the registered redirect_uri`, authorizeUrl);

  // 2. The member signs in and consents (the browser part), by the pages' forms.
  r = await fetch(authorizeUrl, { redirect: 'manual' });
  let html = await r.text();
  const login = parseForm(html, authorizeUrl);
  check(r.status === 200 && login.action === `${origin}/auth/login` && login.fields.some((f) => f.type === 'password'), `${label}: authorize shows the login form`, `${r.status} ${login.action}`);
  r = await submit(login, { fill: { username, password } });
  html = await r.text();
  const consent = parseForm(html, login.action);
  const offered = consent.fields.filter((f) => f.name === 'scope').map((f) => f.value);
  check(r.status === 200 && consent.action === `${origin}/auth/consent` && offered.join(' ') === scope, `${label}: login leads to the consent form listing the requested scopes`, `${r.status} ${offered.join(' ')}`);
  r = await submit(consent, { tick, button: { name: 'decision', value: 'allow' } });
  const callback = r.headers.get('location');
  check([302, 303].includes(r.status) && callback?.startsWith(`${appOrigin}/callback?code=`) && new URL(callback).searchParams.get('state') === q.get('state'),
    `${label}: consent redirects to the app with a code and the state`, `${r.status} ${callback ?? ''}`);

  // 3. The app's callback: fhirclient exchanges the code (with code_verifier).
  r = await fetch(callback, { redirect: 'manual' });
  check(r.status === 200 && client, `${label}: fhirclient ready() completes the token exchange`, `${r.status} ${appError ?? ''}`);
  return { consent, q };
};

const failure = async (p) => { try { await p; return undefined; } catch (e) { return e; } };

try {
  // 0. Discovery is public.
  const conf = await (await fetch(`${fhirBase}/.well-known/smart-configuration`)).json();
  check(conf.authorization_endpoint === `${origin}/auth/authorize` && conf.token_endpoint === `${origin}/auth/token`
    && conf.code_challenge_methods_supported?.includes('S256'), 'smart-configuration names the embedded endpoints and S256', JSON.stringify(conf));

  // ---- John: a member's own launch.
  storage = newStorage();
  scope = SCOPE;
  await launch('john', 'john', 'john-pw');
  check(client.getPatientId() === '567834', 'token response names the patient 567834', client.getPatientId());
  check(client.getFhirUser() === 'Patient/567834', 'id_token carries fhirUser Patient/567834', client.getFhirUser());
  check(client.state.tokenResponse.expires_in === 3600 && client.state.tokenResponse.refresh_token, 'expires_in is 3600 and a refresh token is issued');

  // 4. Reads and searches through the gate, over the sample lake.
  const pat = await client.patient.read();
  check(pat.resourceType === 'Patient' && pat.id === '567834' && pat.name?.some((n) => n.family === 'Doe'), 'client.patient.read() returns Patient 567834, family Doe', JSON.stringify(pat.name));
  const cov = await client.request('Coverage');
  const covIds = (cov.entry ?? []).map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();
  check(cov.resourceType === 'Bundle' && covIds.length === 3 && covIds.every((i) => i.startsWith('Coverage/567834-')), 'Coverage search: 3 entries, all Coverage/567834-*', covIds.join(','));
  check(covIds.join(',') === 'Coverage/567834-part-a,Coverage/567834-part-b,Coverage/567834-part-d', 'Coverage ids are parts A, B and D', covIds.join(','));
  const eob = await client.request('ExplanationOfBenefit');
  const eobIds = (eob.entry ?? []).map((e) => e.resource.id).sort();
  check(eob.resourceType === 'Bundle' && eob.total === 4 && eobIds.join(',') === EOB_IDS.join(','), 'ExplanationOfBenefit search: total 4 with the sample ids', `${eob.total} ${eobIds.join(',')}`);
  check((eob.entry ?? []).every((e) => e.resource.patient?.reference === 'Patient/567834'), 'every EOB is the member\'s');
  let denied = await failure(client.request('Practitioner'));
  check(denied && denied.status === 403, 'a type without scope (Practitioner) is refused with 403', String(denied));
  denied = await failure(client.request('Patient/M1001'));
  check(denied && denied.status === 404, 'another member\'s Patient reads as 404', String(denied));

  // 5. Refresh: fhirclient sends no client_id for a public client; the token rotates.
  const oldRefresh = client.state.tokenResponse.refresh_token;
  const oldAccess = client.getState('tokenResponse.access_token');
  await client.refresh();
  const newRefresh = client.state.tokenResponse.refresh_token;
  check(newRefresh && newRefresh !== oldRefresh && client.getState('tokenResponse.access_token') !== oldAccess, 'refresh (no client_id) rotates both tokens');
  check((await client.request('ExplanationOfBenefit')).total === 4, 'the new access token works');
  let r = await fetch(conf.token_endpoint, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: oldRefresh }).toString(),
  });
  check(r.status === 400 && (await r.json()).error === 'invalid_grant', 'the rotated-out refresh token is refused (invalid_grant)', String(r.status));

  // 6. Revocation (RFC 7009) at the advertised endpoint: the grant stops working.
  r = await fetch(conf.revocation_endpoint, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: client.state.tokenResponse.refresh_token, token_type_hint: 'refresh_token' }).toString(),
  });
  check(r.status === 200, 'revocation endpoint answers 200', String(r.status));
  const after = await failure(client.request('Coverage'));
  check(after && after.status === 401, 'access token refused with 401 after revocation', String(after));

  // ---- Dora: a delegate's launch with the patient picker; she shares M1003 only.
  storage = newStorage();
  scope = DELEGATE_SCOPE;
  const { consent } = await launch('dora', 'dora', 'dora-pw', (name, value, checked) => (name === 'patient' ? value === 'M1003' : checked));
  const choices = consent.fields.filter((f) => f.name === 'patient' && f.type === 'checkbox').map((f) => f.value);
  check(choices.join(',') === 'M1002,M1003', 'consent page offers a picker of M1002 and M1003', choices.join(','));
  check(client.getPatientId() === 'M1003', 'token response names the chosen patient M1003', client.getPatientId());
  check(client.getFhirUser() === 'RelatedPerson/dora', 'id_token carries fhirUser RelatedPerson/dora', client.getFhirUser());
  const chloe = await client.patient.read();
  check(chloe.id === 'M1003', 'client.patient.read() returns M1003', chloe.id);
  const dcov = await client.request('Coverage');
  const dpats = new Set((dcov.entry ?? []).map((e) => e.resource.beneficiary?.reference));
  check(dcov.entry?.length > 0 && dpats.size === 1 && dpats.has('Patient/M1003'), 'Coverage search returns only M1003\'s', [...dpats].join(','));
  const deob = await client.request('ExplanationOfBenefit');
  check((deob.entry ?? []).every((e) => e.resource.patient?.reference === 'Patient/M1003'), 'EOB search returns only M1003\'s', String(deob.total));
  const ben = await failure(client.request('Patient/M1002'));
  check(ben && ben.status === 404, 'the unchosen M1002\'s Patient reads as 404', String(ben));

  // 7. The audit log recorded the accesses, with clients, users, patients and counts.
  const audit = readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const john = audit.filter((e) => e.patients?.length === 1 && e.patients[0] === '567834');
  check(john.some((e) => e.resource_type === 'Coverage' && e.outcome === 'success' && e.count === 3 && e.client_id === 'fhirclient-test' && e.user === 'Patient/567834'),
    'audit records John\'s Coverage search (count 3, client, user)');
  check(john.some((e) => e.resource_type === 'ExplanationOfBenefit' && e.outcome === 'success' && e.count === 4), 'audit records John\'s EOB search (count 4)');
  check(john.some((e) => e.resource_type === 'Patient' && e.outcome === 'success' && e.count === 1), 'audit records John\'s Patient read');
  check(audit.some((e) => e.resource_type === 'Practitioner' && e.outcome === 'denied' && e.status === 403), 'audit records the 403 refusal');
  check(audit.some((e) => e.resource_type === 'Coverage' && e.outcome === 'denied' && e.status === 401), 'audit records the 401 after revocation');
  check(audit.some((e) => e.user === 'RelatedPerson/dora' && e.patients.join(',') === 'M1003' && e.resource_type === 'Coverage' && e.outcome === 'success'),
    'audit records Dora\'s access for M1003 only');
  check(!audit.some((e) => e.outcome === 'success' && e.patients?.includes('M1002')), 'audit shows no access to M1002');
} catch (e) {
  check(false, 'unexpected error', e.stack);
} finally {
  app.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
