//! The one guard: RequireToken, then an access rule, in front of any handler of the
//! public listener (a REST route's stack, `POST /rpc/{topic}`, an `[[rpc.routes]]` entry,
//! `POST /native/{driver}/{operation}`, `GET /native/jobs/{id}`).
//!
//! A guarded handler names three things: its auth mode (`auth`, defaulting to `required`
//! with `[identity]` and `none` without), its access rule (`access`), and the target the
//! rule sees (what `%(name)s` in the rule looks up). The guard runs in two steps, so a
//! handler that builds its target from the request body reads the body only after the
//! token was checked:
//!
//! 1. [`Guard::authenticate`]: keystonemiddleware's `auth_token` on the request's headers
//!    (spoofed identity headers removed, the token validated through the shared cache, the
//!    validated tokens put in the request's extensions as
//!    [`quartet_policies::auth::Identity`]).
//! 2. [`Guard::authorize`]: the access rule against the token's credentials and the
//!    handler's target.
//!
//! A refusal is a [`Refused`] error, answered by the one error edge (`error.rs`): 401 with
//! keystonemiddleware's body and `WWW-Authenticate: Keystone uri="..."`, 403 with
//! Keystone's body naming the rule, 503 when the identity backend cannot answer. The
//! guard runs before the handler's policy stack, so a refused request takes no
//! concurrency slot or rate token and never counts as a backend failure.

use super::{load_rules, parse_access, public_origin};
use crate::config::{Config, KeyPath};
use crate::stack::{BuildError, Shared};
use http::header::HeaderValue;
use http::request::Parts;
use quartet_policies::access::{AuthorizeLayer, Rules, Target};
use quartet_policies::auth::{headers, AuthMode, Decision, RequireTokenConfig, RequireTokenLayer};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Why the guard refused a request. Edge: 401 (with `WWW-Authenticate`), 403 or 503.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No valid token (or an invalid service token) under `auth = "required"`.
    #[error("the request requires a valid token")]
    Unauthorized {
        www_authenticate: Option<HeaderValue>,
    },
    /// The access rule denied the caller.
    #[error("access rule {rule} denied the request")]
    Forbidden { rule: Arc<str> },
    /// The identity backend could not say whether the token is valid (or `[identity]`
    /// was added by a reload and is not running: fail closed).
    #[error("identity backend unavailable")]
    Unavailable,
}

impl Refused {
    /// The `WWW-Authenticate` value a 401 carries, if this is one.
    pub fn www_authenticate(&self) -> Option<&HeaderValue> {
        match self {
            Refused::Unauthorized { www_authenticate } => www_authenticate.as_ref(),
            _ => None,
        }
    }
}

/// An access rule as built: the layer (rule, rule set) and the name a 403 gives.
#[derive(Clone)]
struct Access {
    layer: AuthorizeLayer,
    name: Arc<str>,
}

/// One guarded handler's check.
#[derive(Clone)]
pub struct Guard {
    /// `None`: `[identity]` is configured but not running (added by a reload): 503.
    require: Option<RequireTokenLayer>,
    access: Option<Access>,
    /// `WWW-Authenticate` when `identity.public_url` is set (built once); `None`: from
    /// each request's host.
    public_www: Option<Option<HeaderValue>>,
    /// Whether a checked request keeps its validated
    /// [`Identity`](quartet_policies::auth::Identity) in its extensions (the RPC and native
    /// handlers read it there); see [`for_rest_route`](Self::for_rest_route).
    keep_identity: bool,
}

/// What a 401's `WWW-Authenticate` needs from a request, kept for when the service behind
/// answers 401: the value is built then, not on every request.
pub struct WwwSource {
    fixed: Option<Option<HeaderValue>>,
    authority: Option<http::uri::Authority>,
    host: Option<HeaderValue>,
    tls: bool,
}

impl WwwSource {
    /// `Keystone uri="<public /v3 url>"` for this request.
    pub fn value(&self) -> Option<HeaderValue> {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        let host = match &self.authority {
            Some(a) => a.as_str(),
            None => self.host.as_ref()?.to_str().ok()?,
        };
        let scheme = if self.tls { "https" } else { "http" };
        headers::www_authenticate(&format!("{scheme}://{host}/v3"))
    }
}

impl Guard {
    /// Step 1: the token check on the request's headers. On success the validated tokens
    /// are in `parts.extensions` (for the access rule and the RPC context).
    pub async fn authenticate(&self, parts: &mut Parts) -> Result<(), Refused> {
        let Some(require) = &self.require else {
            return Err(Refused::Unavailable);
        };
        let (decision, identity) =
            match require.decide_cached(&mut parts.headers, &mut parts.extensions) {
                Some(decided) => decided,
                None => {
                    require
                        .decide(&mut parts.headers, &mut parts.extensions)
                        .await
                }
            };
        self.conclude(parts, decision, identity)
    }

    /// [`authenticate`](Self::authenticate) when the token cache alone decides (the
    /// common case: a cached token, no service token), with no future; `None` when a
    /// validator must be asked: then call `authenticate`.
    pub fn authenticate_cached(&self, parts: &mut Parts) -> Option<Result<(), Refused>> {
        let Some(require) = &self.require else {
            return Some(Err(Refused::Unavailable));
        };
        let (decision, identity) =
            require.decide_cached(&mut parts.headers, &mut parts.extensions)?;
        Some(self.conclude(parts, decision, identity))
    }

    fn conclude(
        &self,
        parts: &mut Parts,
        decision: Decision,
        identity: quartet_policies::auth::Identity,
    ) -> Result<(), Refused> {
        match decision {
            Decision::Forward => {
                if self.keep_identity {
                    parts.extensions.insert(identity);
                }
                Ok(())
            }
            Decision::Unauthorized => Err(Refused::Unauthorized {
                www_authenticate: self.www_authenticate(parts),
            }),
            Decision::Unavailable => Err(Refused::Unavailable),
        }
    }

    /// Step 2: the access rule (if any) against `target`. A request without a confirmed
    /// user (`auth = "delay"`) is refused with 401 when there is a rule.
    pub fn authorize(&self, parts: &Parts, target: &Target) -> Result<(), Refused> {
        let Some(access) = &self.access else {
            return Ok(());
        };
        match access.layer.decide_for(parts, target) {
            Ok(()) => Ok(()),
            Err(status) if status == http::StatusCode::UNAUTHORIZED => Err(Refused::Unauthorized {
                www_authenticate: self.www_authenticate(parts),
            }),
            Err(_) => Err(Refused::Forbidden {
                rule: access.name.clone(),
            }),
        }
    }

    /// Both steps, for a handler whose target is known from the headers and path.
    pub async fn check(&self, parts: &mut Parts, target: &Target) -> Result<(), Refused> {
        self.authenticate(parts).await?;
        self.authorize(parts, target)
    }

    /// Whether the handler has an access rule (a target is worth building).
    pub fn has_access_rule(&self) -> bool {
        self.access.is_some()
    }

    /// The guard of a REST route: what goes upstream is the token's headers, so the
    /// validated identity is kept in the request only for the route's access rule (one
    /// extension less per request on a route without one).
    pub fn for_rest_route(mut self) -> Self {
        self.keep_identity = self.access.is_some();
        self
    }

    /// What `WWW-Authenticate` needs from this request, for a 401 of the service behind
    /// (cheap: a few reference-counted copies, no formatting).
    pub fn www_source(&self, parts: &Parts) -> WwwSource {
        if let Some(fixed) = &self.public_www {
            return WwwSource {
                fixed: Some(fixed.clone()),
                authority: None,
                host: None,
                tls: false,
            };
        }
        WwwSource {
            fixed: None,
            authority: parts.uri.authority().cloned(),
            host: parts.headers.get(http::header::HOST).cloned(),
            tls: parts
                .extensions
                .get::<crate::routes::ConnInfo>()
                .is_some_and(|c| c.tls),
        }
    }

    /// `Keystone uri="<public /v3 url>"`: `identity.public_url`, else the request's host.
    pub fn www_authenticate(&self, parts: &Parts) -> Option<HeaderValue> {
        if let Some(fixed) = &self.public_www {
            return fixed.clone();
        }
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
            })?;
        let tls = parts
            .extensions
            .get::<crate::routes::ConnInfo>()
            .is_some_and(|c| c.tls);
        let scheme = if tls { "https" } else { "http" };
        headers::www_authenticate(&format!("{scheme}://{host}/v3"))
    }
}

/// Builds guards for one config: the rules file read once, one RequireToken per mode.
pub struct GuardBuilder {
    default_mode: AuthMode,
    rules: Arc<Rules>,
    www: String,
    runtime: Option<Arc<super::Runtime>>,
    public_url: Option<String>,
}

impl GuardBuilder {
    /// `None` without `[identity]`: nothing is guarded.
    pub fn new(config: &Config, shared: &Shared) -> Result<Option<Self>, BuildError> {
        let Some(cfg) = &config.identity else {
            return Ok(None);
        };
        let rules = load_rules(cfg).map_err(|message| BuildError::Identity {
            key: KeyPath::root("identity").key("policy_file"),
            message,
        })?;
        let www = shared
            .identity
            .as_ref()
            .and_then(|rt| rt.config.public_url.clone())
            .unwrap_or_else(|| format!("{}/v3", public_origin(config)));
        Ok(Some(Self {
            default_mode: AuthMode::Required,
            rules: Arc::new(rules),
            www,
            runtime: shared.identity.clone(),
            public_url: cfg.public_url.clone(),
        }))
    }

    /// The guard of a handler with `auth = mode` (absent: `required`) and `access`
    /// (`key` names the handler's table, for errors).
    pub fn guard(
        &self,
        mode: Option<AuthMode>,
        access: Option<&str>,
        key: &KeyPath,
    ) -> Result<Guard, BuildError> {
        let mode = mode.unwrap_or(self.default_mode);
        let require = self.runtime.as_ref().map(|rt| {
            RequireTokenLayer::new(
                RequireTokenConfig::new(mode, self.www.clone()),
                rt.cache.clone(),
                rt.validator.clone(),
            )
        });
        if require.is_none() {
            tracing::warn!(key = %key, "[identity] is not running (added by a reload?): this handler answers 503 until a restart");
        }
        let access = match access {
            None => None,
            Some(text) => {
                let rule = parse_access(text).map_err(|message| BuildError::Identity {
                    key: key.clone().key("access"),
                    message,
                })?;
                let name = access_name(text);
                // The target is given per request (`decide_for`); this function is unused.
                let target: quartet_policies::access::TargetFn = Arc::new(|_| Target::new());
                Some(Access {
                    layer: AuthorizeLayer::new(name.clone(), rule, self.rules.clone(), target),
                    name,
                })
            }
        };
        Ok(Guard {
            require,
            access,
            public_www: self.public_url.as_deref().map(headers::www_authenticate),
            keep_identity: true,
        })
    }
}

/// The name a 403 message gives: the rule's name for `rule:NAME`, else the expression.
pub fn access_name(text: &str) -> Arc<str> {
    text.trim()
        .strip_prefix("rule:")
        .map(str::trim)
        .unwrap_or(text.trim())
        .into()
}

/// The guards of the RPC and native handlers of one config (REST routes carry theirs in
/// their service). Empty without `[identity]`: nothing is checked.
#[derive(Clone, Default)]
pub struct Guards {
    rpc_topics: HashMap<String, Guard>,
    /// By the index of the `[[rpc.routes]]` entry.
    rpc_routes: Vec<Guard>,
    native: HashMap<String, DriverGuard>,
}

/// A driver's guards: one per operation with its own rule, one for every other operation.
#[derive(Clone)]
struct DriverGuard {
    operations: HashMap<String, Guard>,
    other: Guard,
}

impl Guards {
    /// `native` is the native channel as built, to refuse an access rule for an operation
    /// its driver does not have (a typo would otherwise leave the operation unguarded).
    pub fn build(
        config: &Config,
        shared: &Shared,
        native: &crate::native::Native,
    ) -> Result<Self, BuildError> {
        let Some(builder) = GuardBuilder::new(config, shared)? else {
            return Ok(Self::default());
        };
        let mut guards = Self::default();
        for (i, t) in config.rpc.topics.iter().enumerate() {
            let key = KeyPath::root("rpc").key("topics").index(i);
            let guard = builder.guard(t.auth, t.access.as_deref(), &key)?;
            guards.rpc_topics.insert(t.topic.clone(), guard);
        }
        for (i, r) in config.rpc.routes.iter().enumerate() {
            let key = KeyPath::root("rpc").key("routes").index(i);
            let (mode, access) = rpc_route_protection(config, r);
            guards.rpc_routes.push(builder.guard(mode, access, &key)?);
        }
        for (i, d) in config.native.drivers.iter().enumerate() {
            let key = KeyPath::root("native").key("drivers").index(i);
            let mut operations = HashMap::new();
            let mut other = None;
            for (op, rule) in &d.access {
                let guard = builder.guard(d.caller_auth, Some(rule), &key)?;
                if op == "*" {
                    other = Some(guard);
                } else if !native.has_operation(&d.name, op) {
                    return Err(BuildError::Identity {
                        key: key.clone().key("access").key(op.clone()),
                        message: format!("driver {:?} has no operation {op:?}", d.name),
                    });
                } else {
                    operations.insert(op.clone(), guard);
                }
            }
            let other = match other {
                Some(g) => g,
                None => builder.guard(d.caller_auth, None, &key)?,
            };
            guards
                .native
                .insert(d.name.clone(), DriverGuard { operations, other });
        }
        Ok(guards)
    }

    /// The guard of `POST /rpc/{topic}` (`None`: no check).
    pub fn rpc_topic(&self, topic: &str) -> Option<&Guard> {
        self.rpc_topics.get(topic)
    }

    /// The guard of the `[[rpc.routes]]` entry at `index`.
    pub fn rpc_route(&self, index: usize) -> Option<&Guard> {
        self.rpc_routes.get(index)
    }

    /// The guard of `operation` of `driver`.
    pub fn native(&self, driver: &str, operation: &str) -> Option<&Guard> {
        let d = self.native.get(driver)?;
        Some(d.operations.get(operation).unwrap_or(&d.other))
    }
}

/// Step 1 of an optional guard (`None`: no `[identity]`, nothing to check).
pub async fn authenticate(guard: Option<&Guard>, parts: &mut Parts) -> Result<(), Refused> {
    match guard {
        Some(g) => g.authenticate(parts).await,
        None => Ok(()),
    }
}

/// Step 2 of an optional guard; `target` is built only when there is a rule.
pub fn authorize(
    guard: Option<&Guard>,
    parts: &Parts,
    target: impl FnOnce() -> Target,
) -> Result<(), Refused> {
    match guard {
        Some(g) if g.has_access_rule() => g.authorize(parts, &target()),
        _ => Ok(()),
    }
}

/// An `[[rpc.routes]]` entry's `auth` and `access`: its own, else its topic's (so a route
/// never opens a topic wider than `POST /rpc/{topic}` is).
pub fn rpc_route_protection<'a>(
    config: &'a Config,
    route: &'a quartet_amqp::config::RpcRoute,
) -> (Option<AuthMode>, Option<&'a str>) {
    let topic = config.rpc.topics.iter().find(|t| t.topic == route.topic);
    let mode = route.auth.or_else(|| topic.and_then(|t| t.auth));
    let access = route
        .access
        .as_deref()
        .or_else(|| topic.and_then(|t| t.access.as_deref()));
    (mode, access)
}

/// The effective mode of a guarded handler: its own, else by `[identity]`.
pub fn effective_mode(config: &Config, mode: Option<AuthMode>) -> AuthMode {
    mode.unwrap_or(if config.identity.is_some() {
        AuthMode::Required
    } else {
        AuthMode::None
    })
}

/// The target of a call: the top-level arguments (nested objects flattened to dotted
/// keys, as Keystone's policies read them), then `extra` (which wins: a caller cannot
/// pass its own `topic` or `driver`).
pub fn call_target(args: &Value, extra: &[(&str, &str)]) -> Target {
    let mut target = Target::flatten(args);
    for (k, v) in extra {
        target.insert(k, Value::String((*v).to_owned()));
    }
    target
}

/// A REST route's `path_params` templates: `/compute/v2.1/{project_id}/servers/{id}`.
/// A template matches a request path whose first segments it matches (literal segments
/// equal, `{name}` any one segment, percent-decoded); the first template that matches
/// gives the target.
#[derive(Clone, Debug, Default)]
pub struct PathParams(Vec<Vec<Seg>>);

#[derive(Clone, Debug)]
enum Seg {
    Literal(String),
    Param(String),
}

impl PathParams {
    /// Parses the templates; the message says what is wrong with the first bad one.
    pub fn parse(templates: &[String]) -> Result<Self, String> {
        let mut all = Vec::new();
        for t in templates {
            if !t.starts_with('/') {
                return Err(format!("{t:?} must start with '/'"));
            }
            let mut segs = Vec::new();
            let mut seen = Vec::new();
            for s in t.split('/').filter(|s| !s.is_empty()) {
                match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(name) => {
                        let ok = !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
                        if !ok {
                            return Err(format!(
                                "{t:?}: {{{name}}} must name a parameter of letters, digits, '_' or '.'"
                            ));
                        }
                        if seen.contains(&name) {
                            return Err(format!("{t:?}: {{{name}}} appears twice"));
                        }
                        seen.push(name);
                        segs.push(Seg::Param(name.to_owned()));
                    }
                    None if s.contains(['{', '}']) => {
                        return Err(format!(
                            "{t:?}: a parameter must be a whole segment, such as {{project_id}}"
                        ));
                    }
                    None => segs.push(Seg::Literal(s.to_owned())),
                }
            }
            all.push(segs);
        }
        Ok(Self(all))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The target of `path`: the parameters of the first template that matches.
    pub fn target(&self, path: &str) -> Target {
        let got: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for segs in &self.0 {
            if segs.len() > got.len() {
                continue;
            }
            let mut params = BTreeMap::new();
            let matched = segs.iter().zip(&got).all(|(seg, part)| match seg {
                Seg::Literal(l) => l == part,
                Seg::Param(name) => {
                    params.insert(name.clone(), percent_decode(part));
                    true
                }
            });
            if matched {
                let mut target = Target::new();
                for (k, v) in params {
                    target.insert(&k, Value::String(v));
                }
                return target;
            }
        }
        Target::new()
    }
}

/// `%XX` decoding of a path segment or query value (invalid sequences kept as written),
/// for the access rule's target here and the RPC routes' arguments.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_fill_the_target_from_the_first_matching_template() {
        let p = PathParams::parse(&[
            "/compute/v2.1/{project_id}/servers/{server_id}".to_owned(),
            "/compute/v2.1/{project_id}".to_owned(),
        ])
        .unwrap();
        let t = p.target("/compute/v2.1/p1/servers/s%201/action");
        assert_eq!(t.get("project_id"), Some(&Value::from("p1")));
        assert_eq!(t.get("server_id"), Some(&Value::from("s 1")));
        let t = p.target("/compute/v2.1/p2/flavors");
        assert_eq!(t.get("project_id"), Some(&Value::from("p2")));
        assert!(t.get("server_id").is_none());
        assert!(p.target("/image/v2").as_map().is_empty());
        assert!(p.target("/compute").as_map().is_empty());
    }

    #[test]
    fn bad_templates_are_named() {
        assert!(PathParams::parse(&["x/{a}".to_owned()])
            .unwrap_err()
            .contains("must start with '/'"));
        assert!(PathParams::parse(&["/a/{}".to_owned()]).is_err());
        assert!(PathParams::parse(&["/a/x{id}".to_owned()])
            .unwrap_err()
            .contains("whole segment"));
        assert!(PathParams::parse(&["/{a}/{a}".to_owned()])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn a_call_target_has_the_args_and_the_fixed_keys_win() {
        let args = serde_json::json!({"project_id": "p", "volume": {"size": 1}, "topic": "spoof"});
        let t = call_target(&args, &[("topic", "compute"), ("method", "boot")]);
        assert_eq!(t.get("project_id"), Some(&Value::from("p")));
        assert_eq!(t.get("volume.size"), Some(&Value::from(1)));
        assert_eq!(t.get("topic"), Some(&Value::from("compute")));
        assert_eq!(t.get("method"), Some(&Value::from("boot")));
    }
}
