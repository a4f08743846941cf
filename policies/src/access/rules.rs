//! A named set of rules, loaded from an oslo.policy file as it is.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::check::{Check, Rule};
use super::error::LoadError;
use super::value::{Credentials, Target};

/// Named rules (`"identity:get_user": "rule:admin_or_owner"`), as oslo.policy's `Rules`.
///
/// A `rule:NAME` reference to a name the set lacks fails, unless a default rule is set
/// ([`Rules::with_default_rule`], oslo.policy's `policy_default_rule`), in which case
/// the default rule decides, as in oslo.policy.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: HashMap<String, Rule>,
    default_rule: Option<String>,
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a policy file: `.json` files as JSON, anything else as YAML.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Self::from_json_str(&text)
        } else {
            Self::from_yaml_str(&text)
        }
    }

    /// Parses oslo.policy YAML: a mapping of rule names to rule strings. An empty string
    /// always passes; an empty file is an empty set.
    pub fn from_yaml_str(text: &str) -> Result<Self, LoadError> {
        let value: Value = serde_yaml::from_str(text).map_err(LoadError::Yaml)?;
        Self::from_value(value)
    }

    /// Parses the older JSON form of a policy file.
    pub fn from_json_str(text: &str) -> Result<Self, LoadError> {
        let value: Value = serde_json::from_str(text).map_err(LoadError::Json)?;
        Self::from_value(value)
    }

    fn from_value(value: Value) -> Result<Self, LoadError> {
        let map = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            _ => return Err(LoadError::NotAMapping),
        };
        let mut rules = Self::default();
        for (name, value) in map {
            let rule = match &value {
                Value::String(text) => Rule::parse(text).map_err(|source| LoadError::Parse {
                    rule: name.clone(),
                    source,
                })?,
                Value::Array(items) => Rule::from_check(
                    list_rule(items).ok_or_else(|| LoadError::BadValue { rule: name.clone() })?,
                ),
                _ => return Err(LoadError::BadValue { rule: name }),
            };
            rules.rules.insert(name, rule);
        }
        Ok(rules)
    }

    /// Sets the rule that decides for names the set lacks (oslo.policy's
    /// `policy_default_rule`, usually `default`).
    pub fn with_default_rule(mut self, name: impl Into<String>) -> Self {
        self.default_rule = Some(name.into());
        self
    }

    /// Adds or replaces one rule.
    pub fn insert(&mut self, name: impl Into<String>, rule: Rule) {
        self.rules.insert(name.into(), rule);
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    /// The rule a `rule:NAME` reference means, default rule included.
    pub(crate) fn resolve(&self, name: &str) -> Option<&Rule> {
        if let Some(rule) = self.rules.get(name) {
            return Some(rule);
        }
        match &self.default_rule {
            Some(default) if default != name => self.rules.get(default.as_str()),
            _ => None,
        }
    }

    /// Evaluates the named rule (oslo.policy's `enforce(rule_name, target, creds)`).
    /// An unknown name (and no default rule) denies.
    pub fn enforce(&self, name: &str, creds: &Credentials, target: &Target) -> bool {
        self.resolve(name)
            .is_some_and(|rule| rule.evaluate_with(creds, target, self))
    }
}

/// oslo.policy's old list-of-lists syntax: an "or" of "and"s of atoms.
fn list_rule(items: &[Value]) -> Option<Check> {
    if items.is_empty() {
        return Some(Check::True);
    }
    let mut ors = Vec::new();
    for inner in items {
        let atoms: Vec<&str> = match inner {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) if list.is_empty() => continue,
            Value::Array(list) => list.iter().map(Value::as_str).collect::<Option<_>>()?,
            _ => return None,
        };
        let mut ands: Vec<Check> = atoms
            .into_iter()
            .map(|a| Rule::parse_lenient(a).check().clone())
            .collect();
        ors.push(if ands.len() == 1 {
            ands.remove(0)
        } else {
            Check::And(ands)
        });
    }
    Some(match ors.len() {
        0 => Check::False,
        1 => ors.remove(0),
        _ => Check::Or(ors),
    })
}
