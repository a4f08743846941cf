//! Keystone's token body (`{"token": {...}}`, `keystone/common/render_token.py`) to and
//! from [`TokenInfo`]: what a remote Keystone answers to `GET /v3/auth/tokens`, and what
//! the embedded identity answers itself.

use serde_json::{json, Map, Value};

use super::time;
use super::token::{Endpoint, IdName, Scope, Service, TokenInfo, User};

/// A token body that lacks something every Keystone token body has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token body has no valid `{field}`")]
pub struct BodyError {
    pub field: &'static str,
}

fn missing(field: &'static str) -> BodyError {
    BodyError { field }
}

fn string(v: &Value, field: &'static str) -> Result<String, BodyError> {
    v.as_str().map(str::to_owned).ok_or(missing(field))
}

fn id_name(v: &Value, field: &'static str) -> Result<IdName, BodyError> {
    Ok(IdName {
        id: string(&v["id"], field)?,
        name: v["name"].as_str().unwrap_or_default().to_owned(),
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl TokenInfo {
    /// Reads a Keystone v3 token body (`{"token": {...}}`).
    pub fn from_keystone_body(body: &Value) -> Result<Self, BodyError> {
        let token = body.get("token").ok_or(missing("token"))?;
        let user = &token["user"];
        let user = User {
            id: string(&user["id"], "user.id")?,
            name: user["name"].as_str().unwrap_or_default().to_owned(),
            domain: id_name(&user["domain"], "user.domain.id")?,
        };
        let scope = if let Some(project) = token.get("project").filter(|p| p.is_object()) {
            Scope::Project {
                id: string(&project["id"], "project.id")?,
                name: project["name"].as_str().unwrap_or_default().to_owned(),
                domain: id_name(&project["domain"], "project.domain.id")?,
                is_domain: token["is_domain"].as_bool().unwrap_or(false),
            }
        } else if let Some(domain) = token.get("domain").filter(|d| d.is_object()) {
            Scope::Domain(id_name(domain, "domain.id")?)
        } else if token["system"]["all"].as_bool() == Some(true) {
            Scope::System
        } else {
            Scope::Unscoped
        };
        let roles = token["roles"]
            .as_array()
            .map(|roles| {
                roles
                    .iter()
                    .map(|r| IdName {
                        id: r["id"].as_str().unwrap_or_default().to_owned(),
                        name: r["name"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let catalog = match token.get("catalog") {
            Some(c) => {
                serde_json::from_value::<Vec<Service>>(c.clone()).map_err(|_| missing("catalog"))?
            }
            None => Vec::new(),
        };
        let expires_at = token["expires_at"]
            .as_str()
            .and_then(time::parse)
            .ok_or(missing("expires_at"))?;
        let issued_at = token["issued_at"]
            .as_str()
            .and_then(time::parse)
            .ok_or(missing("issued_at"))?;
        Ok(Self {
            user,
            scope,
            roles,
            catalog,
            methods: strings(&token["methods"]),
            audit_ids: strings(&token["audit_ids"]),
            issued_at,
            expires_at,
            is_admin_project: token["is_admin_project"].as_bool().unwrap_or(true),
            forward_headers: Default::default(),
        })
    }

    /// Renders the Keystone v3 token body; the catalog only for scoped tokens and when
    /// asked (`?nocatalog` leaves it out).
    pub fn to_keystone_body(&self, include_catalog: bool) -> Value {
        let id_name = |x: &IdName| json!({"id": x.id, "name": x.name});
        let mut token = Map::new();
        token.insert("methods".into(), json!(self.methods));
        token.insert(
            "user".into(),
            json!({
                "domain": id_name(&self.user.domain),
                "id": self.user.id,
                "name": self.user.name,
                "password_expires_at": null,
            }),
        );
        token.insert("audit_ids".into(), json!(self.audit_ids));
        token.insert("expires_at".into(), json!(time::format(self.expires_at)));
        token.insert("issued_at".into(), json!(time::format(self.issued_at)));
        let scoped = match &self.scope {
            Scope::Unscoped => false,
            Scope::Project {
                id,
                name,
                domain,
                is_domain,
            } => {
                token.insert(
                    "project".into(),
                    json!({"domain": id_name(domain), "id": id, "name": name}),
                );
                token.insert("is_domain".into(), json!(is_domain));
                true
            }
            Scope::Domain(domain) => {
                token.insert("domain".into(), id_name(domain));
                true
            }
            Scope::System => {
                token.insert("system".into(), json!({"all": true}));
                true
            }
        };
        if scoped {
            let roles: Vec<Value> = self.roles.iter().map(id_name).collect();
            token.insert("roles".into(), Value::Array(roles));
            if !self.is_admin_project {
                token.insert("is_admin_project".into(), json!(false));
            }
            if include_catalog {
                token.insert("catalog".into(), catalog_json(&self.catalog));
            }
        }
        json!({ "token": token })
    }
}

/// The v3 catalog as Keystone renders it (`region_id` and `region` both set).
pub fn catalog_json(catalog: &[Service]) -> Value {
    Value::Array(
        catalog
            .iter()
            .map(|service| {
                let endpoints: Vec<Value> = service.endpoints.iter().map(endpoint_json).collect();
                let mut s = json!({"endpoints": endpoints, "id": service.id, "type": service.kind});
                if let Some(name) = &service.name {
                    s["name"] = json!(name);
                }
                s
            })
            .collect(),
    )
}

fn endpoint_json(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "interface": e.interface,
        "region_id": e.region,
        "url": e.url,
        "region": e.region,
    })
}
