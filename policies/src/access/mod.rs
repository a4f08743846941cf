//! oslo.policy's rule language: `role:admin or project_id:%(project_id)s`.
//!
//! The grammar and the meaning of every atom follow oslo.policy (`_parser.py`,
//! `_checks.py`), because the real peer wins: a policy file written for an OpenStack
//! service must mean the same thing here. Atoms:
//!
//! - `@` always passes, `!` never does; an empty rule passes.
//! - `rule:NAME` evaluates another rule of the [`Rules`] set; an unknown name fails (or
//!   falls back to the set's default rule, as oslo.policy's `Rules` does).
//! - `role:NAME` passes when `NAME` (after `%(...)s` substitution from the target) is in
//!   the credentials' `roles`, compared case-insensitively.
//! - `KIND:MATCH` (generic check): `MATCH` is `%`-formatted with the target (a missing key
//!   fails the check). When `KIND` is a Python literal (`True`, `'member'`, `1`), its
//!   string form is compared with `MATCH`; otherwise `KIND` is a dotted path into the
//!   credentials (lists searched element-wise) compared as a string.
//!
//! Operators `not`, `and`, `or` (case-insensitive, `not` binds tightest, then `and`) and
//! parentheses. oslo.policy turns a rule it cannot parse into "never"; [`Rule::parse`]
//! reports it as a [`ParseError`] naming the position instead, and [`Rule::parse_lenient`]
//! behaves as oslo.policy does.
//!
//! `http:` checks (a remote call) are not supported: they parse as a check that never
//! passes, so a policy file that uses them fails closed.

mod check;
mod error;
mod layer;
mod parse;
mod rules;
mod value;

pub use check::{Check, Rule};
pub use error::{LoadError, ParseError, ParseErrorKind};
pub use layer::{Authorize, AuthorizeLayer, TargetFn};
pub use rules::Rules;
pub use value::{Credentials, Target};

#[cfg(test)]
mod tests;
