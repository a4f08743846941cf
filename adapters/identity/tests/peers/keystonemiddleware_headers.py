"""The real keystonemiddleware auth_token, pointed at Quartet's embedded identity, in
front of a WSGI app that echoes the identity headers it receives. For each case on
stdin (a JSON list of {"headers": {...}}) prints the status, the response headers
WWW-Authenticate/Content-Type, the body, and the headers the app saw.

usage: keystonemiddleware_headers.py AUTH_URL SERVICE_USER SERVICE_PASSWORD DELAY(true|false) [SERVICE_TOKEN] < cases

With SERVICE_TOKEN, keystonemiddleware authenticates with keystoneauth's `admin_token`
plugin (that token, AUTH_URL as the identity endpoint) instead of a password login: for an
identity whose catalog lists no `identity` endpoint (Quartet's lists its REST routes).
"""
import json
import logging
import sys

import webob
from keystonemiddleware import auth_token

logging.disable(logging.CRITICAL)
auth_url, user, password, delay = sys.argv[1:5]
service_token = sys.argv[5] if len(sys.argv) > 5 else None


def app(environ, start_response):
    seen = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and value is not None:
            seen[key[5:].replace("_", "-").lower()] = value
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


conf = {
    "www_authenticate_uri": "http://gw/v3",
    "auth_type": "password",
    "auth_url": auth_url,
    "username": user,
    "password": password,
    "user_domain_name": "Default",
    "project_name": "service",
    "project_domain_name": "Default",
    "interface": "public",
    "delay_auth_decision": delay,
    "include_service_catalog": "true",
}
if service_token:
    for key in ("auth_url", "username", "password", "user_domain_name", "project_name",
                "project_domain_name"):
        del conf[key]
    conf.update({"auth_type": "admin_token", "endpoint": auth_url, "token": service_token})
middleware = auth_token.filter_factory({}, **conf)(app)

results = []
for case in json.load(sys.stdin):
    req = webob.Request.blank("/compute/servers", headers=case["headers"])
    resp = req.get_response(middleware)
    try:
        body = json.loads(resp.body)
    except ValueError:
        body = resp.text
    results.append({
        "status": resp.status_int,
        "www_authenticate": resp.headers.get("WWW-Authenticate"),
        "content_type": resp.headers.get("Content-Type"),
        "body": body,
    })
print(json.dumps(results))
