//! The Keystone v3 token API over `http::Request<Bytes>`, as a tower `Service`:
//! `GET /v3`, `POST /v3/auth/tokens`, `GET`/`HEAD`/`DELETE /v3/auth/tokens`, with
//! Keystone's status codes, headers and body shapes (`keystone/api/auth.py`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, VARY, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use quartet_policies::auth::{headers, InvalidReason, Scope, TokenInfo, ValidateError};

use crate::identity::{
    AuthError, Credential, DomainRef, Identity, ProjectRef, ScopeRequest, UserRef,
};

const X_SUBJECT_TOKEN: &str = "x-subject-token";
const REQUEST_ID: &str = "x-openstack-request-id";

/// The token API in front of an [`Identity`].
#[derive(Clone)]
pub struct IdentityApi {
    identity: Arc<Identity>,
    public_url: Option<String>,
}

impl std::fmt::Debug for IdentityApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityApi")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl IdentityApi {
    /// `public_url`: the `/v3` URL clients see; `None` derives it from `Host`.
    pub fn new(identity: Arc<Identity>, public_url: Option<String>) -> Self {
        Self {
            identity,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }

    /// Answers one request (the `Service` impl calls this).
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path().trim_end_matches('/');
        let mut response = match (request.method(), path) {
            (&Method::GET, "/v3") => self.version(&request),
            (&Method::POST, "/v3/auth/tokens") => self.issue(&request).await,
            (&Method::GET, "/v3/auth/tokens") => self.check(&request, Check::Validate).await,
            (&Method::HEAD, "/v3/auth/tokens") => self.check(&request, Check::Head).await,
            (&Method::DELETE, "/v3/auth/tokens") => self.check(&request, Check::Revoke).await,
            (_, "/v3" | "/v3/auth/tokens") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "The method is not allowed for the requested URL.",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "The requested URL was not found on the server.",
            ),
        };
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&format!("req-{}", uuid::Uuid::new_v4())) {
            headers.insert(REQUEST_ID, id);
        }
        headers.insert(VARY, HeaderValue::from_static("X-Auth-Token"));
        if response.status() == StatusCode::UNAUTHORIZED {
            let uri = self.base_url(&request);
            if let Some(value) = headers::www_authenticate(&uri) {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
        }
        response
    }

    fn base_url(&self, request: &Request<Bytes>) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        format!("http://{host}/v3")
    }

    /// `GET /v3`: the version document keystoneauth's discovery reads.
    fn version(&self, request: &Request<Bytes>) -> Response<Bytes> {
        let body = json!({"version": {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": format!("{}/", self.base_url(request))}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }});
        json_response(StatusCode::OK, &body)
    }

    async fn issue(&self, request: &Request<Bytes>) -> Response<Bytes> {
        let body: Value = match serde_json::from_slice(request.body()) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Malformed request body: expecting JSON.",
                )
            }
        };
        let (credential, scope) = match parse_auth(&body) {
            Ok(parsed) => parsed,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        match self.identity.authenticate(&credential, &scope).await {
            Ok(issued) => {
                let body = issued.info.to_keystone_body(!no_catalog(request));
                let mut response = json_response(StatusCode::CREATED, &body);
                if let Ok(v) = HeaderValue::from_str(&issued.token) {
                    response.headers_mut().insert(X_SUBJECT_TOKEN, v);
                }
                response
            }
            Err(AuthError::Unauthorized) => unauthorized(),
            Err(err) => server_error(&err),
        }
    }

    async fn check(&self, request: &Request<Bytes>, kind: Check) -> Response<Bytes> {
        let Some(caller_token) = headers::user_token(request.headers()) else {
            return unauthorized();
        };
        let caller = match self.identity.validate_token(caller_token).await {
            Ok(info) => info,
            Err(ValidateError::Invalid(_)) => return unauthorized(),
            Err(err) => return server_error(&err),
        };
        let Some(subject_token) = request
            .headers()
            .get(X_SUBJECT_TOKEN)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return error(StatusCode::BAD_REQUEST, "Expecting to find X-Subject-Token in request headers. The server could not comply with the request since it is either malformed or otherwise incorrect. The client is assumed to be in error.");
        };
        // Keystone: `?allow_expired=1` on GET and HEAD validates within
        // `[token] allow_expired_window` past the token's expiry.
        let subject = if allow_expired(request) && !matches!(kind, Check::Revoke) {
            self.identity
                .validate_token_allow_expired(subject_token)
                .await
        } else {
            self.identity.validate_token(subject_token).await
        };
        let subject = match subject {
            Ok(info) => info,
            Err(ValidateError::Invalid(InvalidReason::Revoked)) => {
                return error(StatusCode::NOT_FOUND, "Failed to validate token")
            }
            Err(ValidateError::Invalid(_)) => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Could not find token: {subject_token}."),
                )
            }
            Err(err) => return server_error(&err),
        };
        if !kind.allowed(&caller, &subject) {
            return error(
                StatusCode::FORBIDDEN,
                &format!(
                    "You are not authorized to perform the requested action: {}.",
                    kind.policy()
                ),
            );
        }
        let mut response = match kind {
            Check::Validate => json_response(
                StatusCode::OK,
                &subject.to_keystone_body(!no_catalog(request)),
            ),
            Check::Head => {
                let mut r = Response::new(Bytes::new());
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Check::Revoke => {
                if let Err(err) = self.identity.revoke(&subject).await {
                    return server_error(&err);
                }
                let mut r = Response::new(Bytes::new());
                *r.status_mut() = StatusCode::NO_CONTENT;
                return r;
            }
        };
        if let Ok(v) = HeaderValue::from_str(subject_token) {
            response.headers_mut().insert(X_SUBJECT_TOKEN, v);
        }
        response
    }
}

#[derive(Clone, Copy)]
enum Check {
    Validate,
    Head,
    Revoke,
}

impl Check {
    fn policy(self) -> &'static str {
        match self {
            Check::Validate => "identity:validate_token",
            Check::Head => "identity:check_token",
            Check::Revoke => "identity:revoke_token",
        }
    }

    /// Keystone's default policies (`keystone/common/policies/token.py`): admin, a
    /// system reader (not for revoke), the `service` role (validate only), or the
    /// token's own user.
    fn allowed(self, caller: &TokenInfo, subject: &TokenInfo) -> bool {
        let admin = caller.has_role("admin");
        let system_reader = caller.has_role("reader") && caller.scope == Scope::System;
        let own = caller.user.id == subject.user.id;
        match self {
            Check::Validate => admin || system_reader || caller.has_role("service") || own,
            Check::Head => admin || system_reader || own,
            Check::Revoke => admin || own,
        }
    }
}

impl tower::Service<Request<Bytes>> for IdentityApi {
    type Response = Response<Bytes>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(request).await) })
    }
}

fn no_catalog(request: &Request<Bytes>) -> bool {
    request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "nocatalog" || p.starts_with("nocatalog="))
    })
}

/// `allow_expired` as Keystone reads it (oslo's `strutils.bool_from_string`: `1`, `t`,
/// `true`, `on`, `y`, `yes`, any case; anything else, or absent, is false).
fn allow_expired(request: &Request<Bytes>) -> bool {
    request.uri().query().is_some_and(|q| {
        q.split('&').any(|p| {
            p.strip_prefix("allow_expired=").is_some_and(|v| {
                ["1", "t", "true", "on", "y", "yes"]
                    .iter()
                    .any(|t| v.trim().eq_ignore_ascii_case(t))
            })
        })
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Keystone's error body: `{"error": {"code", "message", "title"}}`.
fn error(status: StatusCode, message: &str) -> Response<Bytes> {
    let title = status.canonical_reason().unwrap_or("Error");
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "title": title}}),
    )
}

fn unauthorized() -> Response<Bytes> {
    error(
        StatusCode::UNAUTHORIZED,
        "The request you have made requires authentication.",
    )
}

/// Store or backend failures: logged here once, never sent to the client.
fn server_error(err: &(dyn std::error::Error + 'static)) -> Response<Bytes> {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "identity request failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The identity service is temporarily unavailable.",
    )
}

fn domain_ref(v: &Value) -> Option<DomainRef> {
    if let Some(id) = v["id"].as_str() {
        return Some(DomainRef::Id(id.to_owned()));
    }
    v["name"].as_str().map(|n| DomainRef::Name(n.to_owned()))
}

/// Reads `{"auth": {"identity": ..., "scope": ...}}`; the error is the 400 message.
fn parse_auth(body: &Value) -> Result<(Credential, ScopeRequest), &'static str> {
    let auth = body
        .get("auth")
        .ok_or("Expecting to find auth in request body.")?;
    let identity = auth
        .get("identity")
        .ok_or("Expecting to find identity in auth.")?;
    let methods: Vec<&str> = identity["methods"]
        .as_array()
        .ok_or("Expecting to find methods in identity.")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let credential = if methods.contains(&"password") {
        let user = &identity["password"]["user"];
        let password = user["password"]
            .as_str()
            .ok_or("Expecting to find password in user.")?
            .to_owned();
        let user = if let Some(id) = user["id"].as_str() {
            UserRef::Id(id.to_owned())
        } else {
            let name = user["name"]
                .as_str()
                .ok_or("Expecting to find id or name in user.")?;
            let domain = domain_ref(&user["domain"]).ok_or("Expecting to find domain in user.")?;
            UserRef::Name {
                name: name.to_owned(),
                domain,
            }
        };
        Credential::Password { user, password }
    } else if methods.contains(&"token") {
        let id = identity["token"]["id"]
            .as_str()
            .ok_or("Expecting to find id in token.")?;
        Credential::Token(id.to_owned())
    } else {
        return Err("Attempted to authenticate with an unsupported method.");
    };
    let scope = match auth.get("scope") {
        None | Some(Value::Null) => ScopeRequest::Unscoped,
        Some(Value::String(s)) if s == "unscoped" => ScopeRequest::Unscoped,
        Some(scope) => {
            if let Some(project) = scope.get("project") {
                if let Some(id) = project["id"].as_str() {
                    ScopeRequest::Project(ProjectRef::Id(id.to_owned()))
                } else {
                    let name = project["name"]
                        .as_str()
                        .ok_or("Expecting to find id or name in project.")?;
                    let domain = domain_ref(&project["domain"])
                        .ok_or("Expecting to find domain in project.")?;
                    ScopeRequest::Project(ProjectRef::Name {
                        name: name.to_owned(),
                        domain,
                    })
                }
            } else if let Some(domain) = scope.get("domain") {
                ScopeRequest::Domain(
                    domain_ref(domain).ok_or("Expecting to find id or name in domain.")?,
                )
            } else if scope["system"]["all"].as_bool() == Some(true) {
                ScopeRequest::System
            } else {
                return Err("Invalid scope: expecting project, domain or system.");
            }
        }
    };
    Ok((credential, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_captured_issue_request() {
        let body: Value = serde_json::from_str(include_str!(
            "../tests/data/keystone-jws-issue-request.json"
        ))
        .unwrap();
        let (credential, scope) = parse_auth(&body).unwrap();
        assert_eq!(
            credential,
            Credential::Password {
                user: UserRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Name("Default".into())
                },
                password: "***".into()
            }
        );
        assert_eq!(
            scope,
            ScopeRequest::Project(ProjectRef::Name {
                name: "admin".into(),
                domain: DomainRef::Name("Default".into())
            })
        );
        assert!(parse_auth(&json!({"auth": {}})).is_err());
        assert!(parse_auth(&json!({"auth": {"identity": {"methods": ["totp"]}}})).is_err());
        let (_, scope) = parse_auth(
            &json!({"auth": {"identity": {"methods": ["token"], "token": {"id": "t"}},
            "scope": {"system": {"all": true}}}}),
        )
        .unwrap();
        assert_eq!(scope, ScopeRequest::System);
    }

    #[test]
    fn allow_expired_is_read_as_keystone_reads_it() {
        let with = |query: &str| {
            allow_expired(
                &Request::get(format!("/v3/auth/tokens{query}"))
                    .body(Bytes::new())
                    .unwrap(),
            )
        };
        for yes in [
            "?allow_expired=1",
            "?nocatalog&allow_expired=True",
            "?allow_expired=yes",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in [
            "",
            "?allow_expired=0",
            "?allow_expired=false",
            "?allow_expired",
            "?nocatalog",
        ] {
            assert!(!with(no), "{no}");
        }
    }
}
