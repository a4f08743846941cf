//! The parsed form of a rule and its evaluation.

use serde_json::Value;

use super::error::ParseError;
use super::parse;
use super::rules::Rules;
use super::value::{python_str, substitute, Credentials, Target};

/// How deep `rule:` references may nest before evaluation gives up (and fails closed);
/// a cycle (`a: rule:b`, `b: rule:a`) ends here instead of overflowing the stack.
const MAX_DEPTH: usize = 32;

/// One node of a parsed rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// `@`, the empty rule.
    True,
    /// `!`, and every atom oslo.policy cannot understand (lenient parsing).
    False,
    /// `rule:NAME`.
    Rule(String),
    /// `role:NAME`; the name may hold `%(...)s` substitutions.
    Role(String),
    /// `KIND:MATCH` where `KIND` is a Python literal: its string form is compared.
    Literal {
        value: String,
        matcher: String,
    },
    /// `KIND:MATCH` where `KIND` is a dotted path into the credentials.
    Generic {
        path: Vec<String>,
        matcher: String,
    },
    Not(Box<Check>),
    And(Vec<Check>),
    Or(Vec<Check>),
}

/// A parsed rule, with the text it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    text: String,
    check: Check,
}

impl Rule {
    /// Parses a rule; any part oslo.policy would silently turn into "never" is an error.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Ok(Self {
            text: text.to_owned(),
            check: parse::parse(text, true)?,
        })
    }

    /// Parses a rule exactly as oslo.policy does: an atom it cannot understand becomes
    /// `!`, and a rule it cannot parse never passes.
    pub fn parse_lenient(text: &str) -> Self {
        let check = parse::parse(text, false).unwrap_or(Check::False);
        Self {
            text: text.to_owned(),
            check,
        }
    }

    pub fn from_check(check: Check) -> Self {
        Self {
            text: String::new(),
            check,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Evaluates the rule alone: every `rule:` reference fails.
    pub fn evaluate(&self, creds: &Credentials, target: &Target) -> bool {
        self.check.evaluate(creds, target, &Rules::default(), 0)
    }

    /// Evaluates the rule with `rule:` references resolved in `rules`.
    pub fn evaluate_with(&self, creds: &Credentials, target: &Target, rules: &Rules) -> bool {
        self.check.evaluate(creds, target, rules, 0)
    }
}

impl std::str::FromStr for Rule {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Check {
    pub(crate) fn evaluate(
        &self,
        creds: &Credentials,
        target: &Target,
        rules: &Rules,
        depth: usize,
    ) -> bool {
        match self {
            Check::True => true,
            Check::False => false,
            Check::Rule(name) => {
                if depth >= MAX_DEPTH {
                    tracing::warn!(rule = %name, "policy rules nest too deep (a cycle?); denying");
                    return false;
                }
                match rules.resolve(name) {
                    Some(rule) => rule.check.evaluate(creds, target, rules, depth + 1),
                    None => false,
                }
            }
            Check::Role(matcher) => {
                let Some(wanted) = substitute(matcher, target) else {
                    return false;
                };
                let wanted = wanted.to_lowercase();
                creds.roles().any(|role| role.to_lowercase() == wanted)
            }
            Check::Literal { value, matcher } => {
                substitute(matcher, target).is_some_and(|m| &m == value)
            }
            Check::Generic { path, matcher } => match substitute(matcher, target) {
                Some(wanted) => creds
                    .as_map()
                    .get(path[0].as_str())
                    .is_some_and(|v| find(v, &path[1..], &wanted)),
                None => false,
            },
            Check::Not(inner) => !inner.evaluate(creds, target, rules, depth),
            Check::And(checks) => checks
                .iter()
                .all(|c| c.evaluate(creds, target, rules, depth)),
            Check::Or(checks) => checks
                .iter()
                .any(|c| c.evaluate(creds, target, rules, depth)),
        }
    }
}

/// oslo.policy's `GenericCheck._find_in_dict`, from the value found for the first
/// segment: lists are searched element-wise, the last value is compared as a string.
fn find(value: &Value, rest: &[String], wanted: &str) -> bool {
    if let Value::Array(items) = value {
        return items.iter().any(|item| walk(item, rest, wanted));
    }
    walk(value, rest, wanted)
}

fn walk(value: &Value, rest: &[String], wanted: &str) -> bool {
    match rest.split_first() {
        None => python_str(value) == wanted,
        Some((key, tail)) => match value {
            Value::Object(map) => map.get(key.as_str()).is_some_and(|v| find(v, tail, wanted)),
            _ => false,
        },
    }
}
