//! `Authorize`: a route's access rule as a tower middleware, behind RequireToken.
//!
//! The credentials are the validated user token's ([`crate::auth::Identity`] in the
//! request's extensions, put there by RequireToken); the target is built from the
//! request by a function the gateway gives (a route's path parameters). A request
//! without a confirmed user gets 401 (RequireToken adds `WWW-Authenticate` on the way
//! back); one the rule denies gets 403 with Keystone's error body.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{Rule, Rules, Target};
use crate::auth::Identity;

/// Builds the target of a request (e.g. from the route's path parameters).
pub type TargetFn = Arc<dyn Fn(&http::request::Parts) -> Target + Send + Sync>;

/// What a route requires: an expression, or the name of a rule in the policy file.
#[derive(Clone)]
pub struct AuthorizeLayer {
    name: Arc<str>,
    rule: Arc<Rule>,
    rules: Arc<Rules>,
    target: TargetFn,
}

impl std::fmt::Debug for AuthorizeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeLayer")
            .field("name", &self.name)
            .field("rule", &self.rule.text())
            .finish_non_exhaustive()
    }
}

impl AuthorizeLayer {
    /// `name` is what the 403 message names (a rule name, or the expression itself).
    pub fn new(name: impl Into<Arc<str>>, rule: Rule, rules: Arc<Rules>, target: TargetFn) -> Self {
        Self {
            name: name.into(),
            rule: Arc::new(rule),
            rules,
            target,
        }
    }

    /// The decision alone: `Ok(())`, or the status to answer (401 or 403).
    pub fn decide(&self, parts: &http::request::Parts) -> Result<(), StatusCode> {
        let target = (self.target)(parts);
        self.decide_for(parts, &target)
    }

    /// The decision against a target the caller built (an RPC call's or a driver call's
    /// arguments, read after the token was checked), instead of the layer's [`TargetFn`].
    pub fn decide_for(
        &self,
        parts: &http::request::Parts,
        target: &Target,
    ) -> Result<(), StatusCode> {
        let identity = parts.extensions.get::<Identity>();
        let Some(user) = identity.and_then(|i| i.user.as_deref()) else {
            return Err(StatusCode::UNAUTHORIZED);
        };
        // The token's credentials are built once per token (it is the cache's, unchanging);
        // a copy only when a service token adds its own.
        let creds = match identity.and_then(|i| i.service.as_deref()) {
            None => std::borrow::Cow::Borrowed(user.credentials_cached()),
            Some(service) => {
                let mut creds = user.credentials_cached().clone();
                creds.insert("service_user_id", service.user.id.clone());
                creds.insert("service_user_domain_id", service.user.domain.id.clone());
                if let Some(project) = service.project_id() {
                    creds.insert("service_project_id", project.to_owned());
                }
                let roles: Vec<serde_json::Value> =
                    service.role_names().map(|r| r.into()).collect();
                creds.insert("service_roles", serde_json::Value::Array(roles));
                std::borrow::Cow::Owned(creds)
            }
        };
        if self.rule.evaluate_with(&creds, target, &self.rules) {
            Ok(())
        } else {
            Err(StatusCode::FORBIDDEN)
        }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

impl<S, B, RB> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        match self.layer.decide(&parts) {
            Ok(()) => self.inner.call(Request::from_parts(parts, body)).boxed(),
            Err(status) => {
                let response = denied(status, &self.layer.name);
                async move { Ok(response) }.boxed()
            }
        }
    }
}

/// Keystone's 401 and 403 bodies.
fn denied<RB: From<Bytes>>(status: StatusCode, name: &str) -> Response<RB> {
    let (title, message) = if status == StatusCode::UNAUTHORIZED {
        (
            "Unauthorized",
            "The request you have made requires authentication.".to_owned(),
        )
    } else {
        (
            "Forbidden",
            format!("You are not authorized to perform the requested action: {name}."),
        )
    };
    let body =
        serde_json::json!({"error": {"code": status.as_u16(), "message": message, "title": title}});
    let mut response = Response::new(RB::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
