"""Standalone patient launch against the real `fhirlake serve` (embedded SMART authorization
server over the sample lake) driven by PyPI `fhirclient` (smart-on-fhir/client-py), as a Python
app would use it. client-py finds the authorization server from the CapabilityStatement only
(`/metadata`, `rest[0].security` extension
http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris); it never reads
`.well-known/smart-configuration`. This script also plays the member's browser: it parses the
login and consent pages' HTML forms and posts them, so the launch runs unattended.

python3 pyfhirclient_test.py FHIR_BASE REDIRECT_URI AUDIT_LOG
FHIR_BASE is the server's base URL (http://127.0.0.1:PORT/fhir); REDIRECT_URI is the registered
redirect URI of the public client `pyfhirclient-test`. Member: john / john-pw (patient 567834).
Prints `ok - ...` / `FAIL - ...` lines and "N passed, M failed"; exits 1 on any failure.
"""

import json
import sys
import traceback
import urllib.parse as up
from html.parser import HTMLParser

import requests
from fhirclient import client as fhirclient_client
from fhirclient.models.bundle import Bundle
from fhirclient.server import (
    FHIRNotFoundException,
    FHIRPermissionDeniedException,
    FHIRUnauthorizedException,
)

if len(sys.argv) != 4:
    print("usage: python3 pyfhirclient_test.py FHIR_BASE REDIRECT_URI AUDIT_LOG", file=sys.stderr)
    sys.exit(2)
FHIR_BASE, REDIRECT, AUDIT = sys.argv[1:]
ORIGIN = "{0.scheme}://{0.netloc}".format(up.urlsplit(FHIR_BASE))
CLIENT_ID = "pyfhirclient-test"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# client-py prepends `launch/patient` itself (no patient_id in the settings, wants_patient).
SCOPE = "openid fhirUser offline_access patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.read"
EOB_IDS = ["inpatient-333333222222", "outpatient-1234567890", "pharmacy-89", "professional-9991831999"]

passed = 0
failed = 0


def check(cond, name, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"FAIL - {name} {detail}")


def raised(fn):
    """Runs fn; returns the exception it raised, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the caller checks the type
        return e
    return None


class FormParser(HTMLParser):
    """The first <form> of a page: action, method, inputs and buttons."""

    def __init__(self):
        super().__init__()
        self.form = None
        self.done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.done:
            return
        if tag == "form" and self.form is None:
            self.form = {"action": a.get("action") or "", "method": (a.get("method") or "get").lower(), "fields": [], "buttons": []}
        elif self.form is not None and tag == "input":
            self.form["fields"].append({
                "name": a.get("name"), "value": a.get("value") or "", "type": (a.get("type") or "text").lower(),
                "checked": "checked" in a,
            })
        elif self.form is not None and tag == "button":
            self.form["buttons"].append({"name": a.get("name"), "value": a.get("value") or ""})

    def handle_endtag(self, tag):
        if tag == "form" and self.form is not None:
            self.done = True


def parse_form(html, page_url):
    p = FormParser()
    p.feed(html)
    if p.form is None:
        raise AssertionError(f"no form in page: {html[:300]}")
    p.form["action"] = up.urljoin(page_url, p.form["action"])
    return p.form


def submit(browser, form, fill=None, button=None):
    """Posts a form like a browser: hidden fields, text fields from `fill`, checkboxes as ticked,
    and the named submit button. Does not follow redirects."""
    fill = fill or {}
    body = []
    for f in form["fields"]:
        if not f["name"]:
            continue
        if f["type"] in ("checkbox", "radio"):
            if f["checked"]:
                body.append((f["name"], f["value"]))
        elif f["type"] == "hidden":
            body.append((f["name"], f["value"]))
        else:
            body.append((f["name"], fill.get(f["name"], f["value"])))
    if button is not None:
        if not any(b["name"] == button[0] and b["value"] == button[1] for b in form["buttons"]):
            raise AssertionError(f"no button {button[0]}={button[1]} in {form['buttons']}")
        body.append(button)
    return browser.post(form["action"], data=body, allow_redirects=False)


def main():
    # The library's own HTTP traffic (metadata, token, FHIR reads), recorded by a session hook.
    seen = []
    saved = []
    settings = {"app_id": CLIENT_ID, "api_base": FHIR_BASE, "redirect_uri": REDIRECT, "scope": SCOPE}
    smart = fhirclient_client.FHIRClient(settings=settings, save_func=saved.append)
    smart.server.session.hooks["response"].append(lambda r, *a, **k: seen.append((r.request.method, r.url, r.status_code)))

    # 1. Discovery from /metadata only: authorize_url fetches and parses (strictly, with the
    #    library's R4 models) the CapabilityStatement and takes the oauth-uris extension.
    authorize_url = smart.authorize_url
    check(authorize_url is not None and authorize_url.startswith(f"{ORIGIN}/auth/authorize?"),
          "authorize_url is the embedded /auth/authorize", str(authorize_url))
    urls = [u for _, u, _ in seen]
    check(any(up.urlsplit(u).path == up.urlsplit(FHIR_BASE).path + "/metadata" for u in urls),
          "client-py fetched /metadata", str(seen))
    check(not any("well-known" in u for u in urls), "client-py did not read .well-known/smart-configuration", str(urls))
    cap = requests.get(f"{FHIR_BASE}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30).json()
    ext = {}
    for e in (cap.get("rest") or [{}])[0].get("security", {}).get("extension", []):
        if e.get("url") == OAUTH_URIS:
            ext = {x["url"]: x.get("valueUri") for x in e.get("extension", [])}
    check(ext.get("authorize") == f"{ORIGIN}/auth/authorize" and ext.get("token") == f"{ORIGIN}/auth/token",
          "CapabilityStatement oauth-uris extension names authorize and token", json.dumps(ext))
    auth = smart.server.auth
    check(type(auth).__name__ == "FHIROAuth2Auth" and auth._authorize_uri == ext.get("authorize") and auth._token_uri == ext.get("token"),
          "client-py's oauth2 endpoints are the extension's", f"{type(auth).__name__} {auth._authorize_uri} {auth._token_uri}")
    q = dict(up.parse_qsl(up.urlsplit(authorize_url).query))
    check(q.get("response_type") == "code" and q.get("client_id") == CLIENT_ID and q.get("redirect_uri") == REDIRECT
          and q.get("aud") == FHIR_BASE and q.get("state"),
          "authorize_url carries response_type, client_id, redirect_uri, aud and state", json.dumps(q))
    check(q.get("code_challenge_method") == "S256" and q.get("code_challenge"), "client-py sends PKCE S256", json.dumps(q))
    check(q.get("scope") == f"launch/patient {SCOPE}", "scope is launch/patient plus the requested scopes", q.get("scope", ""))

    # 2. The member's browser: login, consent (approve), redirect to the app with code and state.
    browser = requests.Session()
    r = browser.get(authorize_url, allow_redirects=False, timeout=30)
    login = parse_form(r.text, authorize_url)
    check(r.status_code == 200 and login["action"] == f"{ORIGIN}/auth/login" and any(f["type"] == "password" for f in login["fields"]),
          "authorize shows the login form", f"{r.status_code} {login['action']}")
    r = submit(browser, login, fill={"username": "john", "password": "john-pw"})
    consent = parse_form(r.text, login["action"])
    offered = [f["value"] for f in consent["fields"] if f["name"] == "scope"]
    check(r.status_code == 200 and consent["action"] == f"{ORIGIN}/auth/consent" and " ".join(offered) == q.get("scope"),
          "login leads to the consent form listing the requested scopes", f"{r.status_code} {' '.join(offered)}")
    r = submit(browser, consent, button=("decision", "allow"))
    callback = r.headers.get("location", "")
    cq = dict(up.parse_qsl(up.urlsplit(callback).query))
    check(r.status_code in (302, 303) and callback.startswith(f"{REDIRECT}?") and cq.get("code") and cq.get("state") == q.get("state"),
          "consent redirects to the app with a code and the state", f"{r.status_code} {callback}")

    # 3. The app's callback: client-py exchanges the code (with code_verifier) at the token URI.
    seen.clear()
    err = raised(lambda: smart.handle_callback(callback))
    check(err is None and smart.ready, "handle_callback completes the token exchange", repr(err))
    check(any(m == "POST" and u == ext.get("token") and s == 200 for m, u, s in seen), "the token request went to the extension's token URI", str(seen))
    check(smart.patient_id == "567834", "client.patient_id is 567834", str(smart.patient_id))
    ctx = smart.launch_context or {}
    check(ctx.get("token_type", "").lower() == "bearer" and auth.refresh_token and auth.expires_at is not None,
          "bearer token with expiry and a refresh token (offline_access)", json.dumps({k: v for k, v in ctx.items() if k != "id_token"}))
    check(saved and saved[-1]["server"]["auth"].get("access_token") == auth.access_token, "client state saved through save_func")

    # 4. Reads and searches through the gate, over the sample lake.
    pat = smart.server.request_json("Patient/567834")
    check(pat.get("resourceType") == "Patient" and pat.get("id") == "567834" and any(n.get("family") == "Doe" for n in pat.get("name", [])),
          "request_json('Patient/567834') returns family Doe", json.dumps(pat.get("name")))
    model = smart.patient
    check(model is not None and model.id == "567834" and any(n.family == "Doe" for n in model.name or []),
          "client.patient parses as the library's R4 Patient model", repr(model))
    cov = smart.server.request_json("Coverage")
    cov_ids = sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in cov.get("entry", []))
    check(cov.get("resourceType") == "Bundle" and cov_ids == ["Coverage/567834-part-a", "Coverage/567834-part-b", "Coverage/567834-part-d"],
          "Coverage search: 3 entries, parts A, B and D", ",".join(cov_ids))
    eob = smart.server.request_json("ExplanationOfBenefit")
    eob_ids = sorted(e["resource"]["id"] for e in eob.get("entry", []))
    check(eob.get("resourceType") == "Bundle" and eob.get("total") == 4 and eob_ids == EOB_IDS,
          "ExplanationOfBenefit search: total 4 with the sample ids", f"{eob.get('total')} {','.join(eob_ids)}")
    check(all(e["resource"].get("patient", {}).get("reference") == "Patient/567834" for e in eob.get("entry", [])), "every EOB is the member's")
    err = raised(lambda: Bundle(eob))
    check(err is None, "the EOB Bundle parses with the library's R4 models", repr(err))
    err = raised(lambda: smart.server.request_json("Patient/M1001"))
    check(isinstance(err, FHIRNotFoundException), "another member's Patient/M1001 reads as 404", repr(err))
    err = raised(lambda: smart.server.request_json("Practitioner"))
    check(isinstance(err, FHIRPermissionDeniedException), "a type without scope (Practitioner) is refused with 403", repr(err))

    # 5. Refresh: client-py's reauthorize() posts grant_type=refresh_token with client_id.
    old_access, old_refresh = auth.access_token, auth.refresh_token
    ok = smart.reauthorize()
    check(ok and auth.access_token and auth.access_token != old_access, "reauthorize() gets a new access token")
    check(auth.refresh_token and auth.refresh_token != old_refresh, "the refresh token rotates")
    check(smart.patient_id == "567834", "the refreshed grant still names patient 567834", str(smart.patient_id))
    eob2 = smart.server.request_json("ExplanationOfBenefit")
    check(eob2.get("total") == 4, "the new access token works (EOB total 4)", str(eob2.get("total")))
    r = requests.post(ext["token"], data={"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": CLIENT_ID}, timeout=30)
    check(r.status_code == 400 and r.json().get("error") == "invalid_grant", "the rotated-out refresh token is refused (invalid_grant)", str(r.status_code))
    r = requests.get(f"{FHIR_BASE}/Coverage", headers={"Authorization": f"Bearer {old_access}x"}, timeout=30)
    check(r.status_code == 401, "a forged access token is refused with 401", str(r.status_code))

    # 6. The audit log names the client, the user and the patient.
    with open(AUDIT, encoding="utf-8") as fh:
        audit = [json.loads(l) for l in fh if l.strip()]
    john = [e for e in audit if e.get("patients") == ["567834"] and e.get("client_id") == CLIENT_ID]
    check(any(e.get("resource_type") == "Coverage" and e.get("outcome") == "success" and e.get("count") == 3 for e in john),
          "audit records the Coverage search (count 3) for client pyfhirclient-test")
    check(any(e.get("resource_type") == "ExplanationOfBenefit" and e.get("outcome") == "success" and e.get("count") == 4 for e in john),
          "audit records the EOB search (count 4)")
    check(any(e.get("resource_type") == "Practitioner" and e.get("outcome") == "denied" and e.get("status") == 403 for e in audit),
          "audit records the 403 refusal")


try:
    main()
except Exception:  # noqa: BLE001 - reported as a failed check
    check(False, "unexpected error", traceback.format_exc())
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
