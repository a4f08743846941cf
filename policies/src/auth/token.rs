//! The facts of a validated token, whoever validated it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// An `{id, name}` pair (a domain, a role).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdName {
    pub id: String,
    pub name: String,
}

impl IdName {
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// The user a token was issued to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub domain: IdName,
}

/// What a token is scoped to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scope {
    #[default]
    Unscoped,
    Project {
        id: String,
        name: String,
        domain: IdName,
        #[serde(default)]
        is_domain: bool,
    },
    Domain(IdName),
    /// `{"system": {"all": true}}`.
    System,
}

/// One endpoint of a catalog service (the v3 shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub id: String,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub url: String,
}

/// One service of the catalog (the v3 shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// A validated token's facts: Keystone's token body (`render_token.py`) in typed form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: User,
    pub scope: Scope,
    /// Role names and ids; empty for unscoped tokens.
    pub roles: Vec<IdName>,
    pub catalog: Vec<Service>,
    pub methods: Vec<String>,
    pub audit_ids: Vec<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// `is_admin_project` of the token body; keystoneauth reads an absent one as true.
    pub is_admin_project: bool,
    /// The headers RequireToken sets for this token and the access rules' credentials,
    /// built on first use and kept with the token (in the token cache), so a cache hit
    /// does not rebuild them.
    pub forward_headers: ForwardHeaders,
}

/// The request headers derived from a token, computed once per token: the user headers
/// (`X-Roles`, the ten identity headers, the aliases...) and `X-Service-Catalog`; and the
/// token's credentials for the access rules. Never
/// part of a token's equality, and not copied by `clone` (a copy may be changed).
#[derive(Debug, Default)]
pub struct ForwardHeaders {
    /// [`TokenInfo::credentials`], for the access rules.
    pub(crate) credentials: std::sync::OnceLock<crate::access::Credentials>,
    /// The user headers as a block a request points at ([`crate::head`]): without
    /// (index 0) and with (index 1) `X-Service-Catalog`.
    pub(crate) blocks: [std::sync::OnceLock<crate::head::HeaderBlock>; 2],
}

impl PartialEq for ForwardHeaders {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ForwardHeaders {}

impl Clone for ForwardHeaders {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A token's user header blocks: index 0 without `X-Service-Catalog`, 1 with it (when the
/// token has a catalog). Built on first use.
impl crate::head::HoldsHeaderBlocks for TokenInfo {
    fn header_block(&self, index: usize) -> &crate::head::HeaderBlock {
        self.forward_headers.blocks[index & 1]
            .get_or_init(|| crate::auth::headers::user_header_block(self, index & 1 == 1))
    }
}

impl TokenInfo {
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| r.name.as_str())
    }

    /// Whether the token carries `role` (case-insensitive, as oslo.policy compares).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.name.eq_ignore_ascii_case(role))
    }

    pub fn project_id(&self) -> Option<&str> {
        match &self.scope {
            Scope::Project { id, .. } => Some(id),
            _ => None,
        }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at <= now
    }

    /// [`credentials`](Self::credentials) for a token that no longer changes (a
    /// validated token, shared by the cache): built on first use and kept with the token.
    pub fn credentials_cached(&self) -> &crate::access::Credentials {
        self.forward_headers
            .credentials
            .get_or_init(|| self.credentials())
    }

    /// oslo.context's `to_policy_values()` for this token, as credentials for the access
    /// rules (`user_id`, `project_id`, `domain_id`, `system_scope`, `roles`, ...).
    pub fn credentials(&self) -> crate::access::Credentials {
        use serde_json::Value;
        let opt = |v: Option<&str>| v.map_or(Value::Null, |s| Value::String(s.to_owned()));
        let (project_id, project_domain_id, domain_id, system_scope) = match &self.scope {
            Scope::Project { id, domain, .. } => {
                (Some(id.as_str()), Some(domain.id.as_str()), None, None)
            }
            Scope::Domain(d) => (None, None, Some(d.id.as_str()), None),
            Scope::System => (None, None, None, Some("all")),
            Scope::Unscoped => (None, None, None, None),
        };
        let roles: Vec<Value> = self
            .role_names()
            .map(|r| Value::String(r.to_owned()))
            .collect();
        crate::access::Credentials::new()
            .with("user_id", self.user.id.clone())
            .with("user_domain_id", self.user.domain.id.clone())
            .with("project_id", opt(project_id))
            .with("project_domain_id", opt(project_domain_id))
            .with("domain_id", opt(domain_id))
            .with("system_scope", opt(system_scope))
            .with("roles", Value::Array(roles))
            .with("is_admin_project", self.is_admin_project)
    }
}
