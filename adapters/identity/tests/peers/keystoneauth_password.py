"""keystoneauth1, the client every OpenStack service and CLI uses, against Quartet's
embedded identity: obtain a token with a password, validate it as keystonemiddleware
does, find the identity endpoint in the catalog, and revoke it. Prints a JSON report.

usage: keystoneauth_password.py AUTH_URL ADMIN_PASSWORD
"""
import json
import sys

from keystoneauth1 import access, exceptions, session
from keystoneauth1.identity import v3

auth_url, password = sys.argv[1], sys.argv[2]
report = {}


def password_auth(pw):
    return v3.Password(auth_url=auth_url, username="admin", password=pw,
                       user_domain_name="Default", project_name="admin",
                       project_domain_name="Default")


auth = password_auth(password)
sess = session.Session(auth=auth)
token = sess.get_token()
ref = auth.get_access(sess)
report["issued"] = {"user_id": ref.user_id, "project_name": ref.project_name,
                    "roles": sorted(ref.role_names), "expires": ref.expires.isoformat(),
                    "audit_id": ref.audit_id, "methods": ref._data["token"]["methods"]}
report["catalog_identity_url"] = ref.service_catalog.url_for(service_type="identity",
                                                             interface="public")

# keystonemiddleware's validation call: GET /v3/auth/tokens with X-Subject-Token.
resp = sess.get(auth_url + "/auth/tokens",
                headers={"X-Subject-Token": token, "OpenStack-Identity-Access-Rules": "1"})
validated = access.create(resp=resp, body=resp.json())
report["validate"] = {"status": resp.status_code,
                      "subject_header": resp.headers.get("X-Subject-Token") == token,
                      "user_id": validated.user_id, "project_id": validated.project_id,
                      "project_scoped": validated.project_scoped,
                      "roles": sorted(validated.role_names),
                      "is_admin_project": validated.is_admin_project}

# The same through the catalog, as services find Keystone.
resp = sess.get("/auth/tokens", endpoint_filter={"service_type": "identity", "interface": "public"},
                headers={"X-Subject-Token": token})
report["validate_via_catalog"] = resp.status_code
resp = sess.get(auth_url + "/auth/tokens?nocatalog", headers={"X-Subject-Token": token})
report["nocatalog_has_catalog"] = "catalog" in resp.json()["token"]
resp = sess.head(auth_url + "/auth/tokens", headers={"X-Subject-Token": token})
report["head"] = resp.status_code

try:
    password_auth("wrong-" + password).get_token(session.Session())
    report["wrong_password"] = "accepted"
except exceptions.Unauthorized as exc:
    report["wrong_password"] = exc.http_status

# Revoke a second token with the first, then validating it is a 404.
other_auth = password_auth(password)
other = other_auth.get_token(session.Session())
resp = sess.delete(auth_url + "/auth/tokens", headers={"X-Subject-Token": other})
report["revoke"] = resp.status_code
try:
    sess.get(auth_url + "/auth/tokens", headers={"X-Subject-Token": other})
    report["revoked_validate"] = "accepted"
except exceptions.NotFound as exc:
    report["revoked_validate"] = exc.http_status

print(json.dumps(report))
