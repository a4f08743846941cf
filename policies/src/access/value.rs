//! The two inputs of a check: the caller's credentials and the target of the request.

use serde_json::{Map, Value};

/// What the caller is: oslo.context's `to_policy_values()` (`user_id`, `project_id`,
/// `domain_id`, `system_scope`, `roles`, `service_roles`, ...). Values are strings, lists
/// or nested maps; generic checks walk them with dotted paths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credentials(Map<String, Value>);

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds credentials from a JSON object; anything else gives empty credentials.
    pub fn from_json(value: Value) -> Self {
        match value {
            Value::Object(map) => Self::from_map(map),
            _ => Self::default(),
        }
    }

    /// As oslo.policy's `Enforcer.enforce`: a set `system_scope` is copied to `system`.
    pub fn from_map(mut map: Map<String, Value>) -> Self {
        if let Some(scope) = map.get("system_scope").filter(|v| truthy(v)).cloned() {
            map.insert("system".to_owned(), scope);
        }
        Self(map)
    }

    /// Sets one value (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        if key == "system_scope" && truthy(&value) {
            self.0.insert("system".to_owned(), value.clone());
        }
        self.0.insert(key.to_owned(), value);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The role names, when `roles` is a list of strings.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.0
            .get("roles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
}

/// What the request acts on: a flat map of attributes, such as a route's path parameters
/// (`{"project_id": "..."}`). `%(name)s` looks `name` up literally, as Python's `%`
/// formatting does; [`Target::flatten`] turns nested objects into the dotted keys that
/// Keystone's policies use (`target.token.user_id`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target(Map<String, Value>);

impl Target {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// Builds a target from a JSON object; anything else gives an empty target.
    pub fn from_json(value: Value) -> Self {
        match value {
            Value::Object(map) => Self(map),
            _ => Self::default(),
        }
    }

    /// Flattens nested objects into dotted keys: `{"target": {"token": {"user_id": "u"}}}`
    /// becomes `{"target.token.user_id": "u"}` (keystone's `utils.flatten_dict`).
    pub fn flatten(value: &Value) -> Self {
        let mut out = Map::new();
        if let Value::Object(map) = value {
            flatten_into(&mut out, "", map);
        }
        Self(out)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.to_owned(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

fn flatten_into(out: &mut Map<String, Value>, prefix: &str, map: &Map<String, Value>) {
    for (key, value) in map {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => flatten_into(out, &name, inner),
            other => {
                out.insert(name, other.clone());
            }
        }
    }
}

/// Python's truth value of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Python's `str()` of a JSON value, which is what oslo.policy compares.
pub(crate) fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            (None, None, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::String(s) if s.contains('\'') && !s.contains('"') => format!("\"{s}\""),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        python_repr(&Value::String(k.clone())),
                        python_repr(v)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `match % target` for a mapping: `%(key)s` substituted with `str(target[key])`,
/// `%%` with `%`. `None` when a key is missing or the format is not one oslo.policy
/// would accept (both make the check fail).
pub(crate) fn substitute(template: &str, target: &Target) -> Option<String> {
    if !template.contains('%') {
        return Some(template.to_owned());
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
            continue;
        }
        let inner = after.strip_prefix('(')?;
        // Python allows nested parentheses in the key; oslo.policy's keys never use them.
        let close = inner.find(')')?;
        let key = &inner[..close];
        let tail = &inner[close + 1..];
        let (conversion, tail) = match tail.chars().next()? {
            c @ ('s' | 'r') => (c, &tail[1..]),
            _ => return None,
        };
        let value = target.get(key)?;
        match conversion {
            's' => out.push_str(&python_str(value)),
            _ => out.push_str(&python_repr(value)),
        }
        rest = tail;
    }
    out.push_str(rest);
    Some(out)
}
