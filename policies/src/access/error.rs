//! Errors of the rule language: where a rule could not be parsed, and why a policy file
//! could not be loaded.

use std::path::PathBuf;

/// A rule that could not be parsed; `position` is the byte offset into the rule text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {position} of rule `{text}`")]
pub struct ParseError {
    pub text: String,
    pub position: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("unexpected `{0}`")]
    Unexpected(String),
    #[error("unexpected end of rule")]
    UnexpectedEnd,
    #[error("unclosed parenthesis")]
    Unclosed,
    #[error("a quoted string `{0}` is not a check")]
    StringLiteral(String),
    #[error("check `{0}` has no `kind:match` form")]
    NoKind(String),
    #[error("remote `{0}:` checks are not supported")]
    Remote(String),
}

/// A policy file (or one of its rules) that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file is not valid yaml")]
    Yaml(#[source] serde_yaml::Error),
    #[error("policy file is not valid json")]
    Json(#[source] serde_json::Error),
    #[error("policy file must be a mapping of rule names to rules")]
    NotAMapping,
    #[error("rule `{rule}` must be a string (or an old-style list of lists)")]
    BadValue { rule: String },
    #[error("rule `{rule}` cannot be parsed")]
    Parse {
        rule: String,
        #[source]
        source: ParseError,
    },
}
