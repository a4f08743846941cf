//! The rule language against oslo.policy's documented examples (`doc/source/admin/
//! policy-yaml-file.rst`, `policy.py` module docs). The comparison with the real
//! oslo.policy is `policies/tests/oslo_policy.rs`.

use serde_json::json;

use super::*;

fn creds() -> Credentials {
    Credentials::from_json(json!({
        "user_id": "u1",
        "user_domain_id": "default",
        "project_id": "p1",
        "project_domain_id": "default",
        "roles": ["Member", "reader"],
        "is_admin": true,
        "is_admin_project": true,
        "service_roles": [],
        "nested": {"list": [{"id": "a"}, {"id": "b"}]},
    }))
}

fn target() -> Target {
    Target::from_json(json!({
        "project_id": "p1",
        "user_id": "u2",
        "target.token.user_id": "u1",
        "role.name": "member",
        "user.enabled": true,
        "network.shared": "shared",
    }))
}

fn check(rule: &str) -> bool {
    Rule::parse(rule)
        .unwrap_or_else(|e| panic!("{rule}: {e}"))
        .evaluate(&creds(), &target())
}

#[test]
fn atoms() {
    assert!(check("@"));
    assert!(!check("!"));
    assert!(check(""));
    assert!(check("role:member"), "roles compare case-insensitively");
    assert!(check("role:MEMBER"));
    assert!(!check("role:admin"));
    assert!(check("role:%(role.name)s"));
    assert!(check("project_id:%(project_id)s"));
    assert!(!check("user_id:%(user_id)s"));
    assert!(check("user_id:%(target.token.user_id)s"));
    assert!(check("is_admin:True"));
    assert!(!check("is_admin:False"));
    assert!(check("True:%(user.enabled)s"));
    assert!(check("'member':%(role.name)s"));
    assert!(!check("'Member':%(role.name)s"), "literal compare is exact");
    assert!(check("'shared':%(network.shared)s"));
    assert!(check("nested.list.id:b"), "lists are searched element-wise");
    assert!(!check("nested.list.id:c"));
    assert!(
        !check("project_id:%(missing)s"),
        "a missing target key fails"
    );
    assert!(!check("missing:x"));
    assert!(check("user_domain_id:default"));
}

#[test]
fn operators_and_precedence() {
    assert!(check("role:admin or role:member"));
    assert!(!check("role:admin and role:member"));
    assert!(check("not role:admin"));
    assert!(check("NOT role:admin AND role:reader"));
    assert!(check(
        "role:admin or (project_id:%(project_id)s and role:member)"
    ));
    assert!(check(
        "(role:admin or role:member) and project_id:%(project_id)s"
    ));
    // `and` binds tighter than `or`: `@ or (! and !)`.
    assert!(check("@ or ! and !"));
    assert!(!check("(@ or !) and !"));
    assert!(check("not (role:admin or role:foo)"));
    assert!(check("((role:member))"));
    assert!(check("not not role:member"));
}

#[test]
fn rules_reference_each_other() {
    let rules = Rules::from_yaml_str(
        r#"
# comments are fine
"admin_required": "role:admin or is_admin:1"
"owner": "user_id:%(target.token.user_id)s"
"admin_or_owner": "rule:admin_required or rule:owner"
"identity:validate_token": "rule:admin_or_owner"
"everyone": ""
"loop_a": "rule:loop_b"
"loop_b": "rule:loop_a"
"#,
    )
    .unwrap();
    assert_eq!(rules.len(), 7);
    assert!(rules.enforce("identity:validate_token", &creds(), &target()));
    assert!(rules.enforce("everyone", &Credentials::new(), &Target::new()));
    assert!(!rules.enforce("admin_required", &creds(), &target()));
    assert!(
        !rules.enforce("nope", &creds(), &target()),
        "unknown rule denies"
    );
    assert!(
        !rules.enforce("loop_a", &creds(), &target()),
        "a cycle denies"
    );
    let rule = Rule::parse("rule:nope or rule:owner").unwrap();
    assert!(rule.evaluate_with(&creds(), &target(), &rules));
    let with_default = rules.clone().with_default_rule("owner");
    assert!(with_default.enforce("nope", &creds(), &target()));
}

#[test]
fn json_and_list_syntax() {
    let rules = Rules::from_json_str(
        r#"{"a": "role:reader", "b": [["role:admin"], ["role:member", "role:reader"]], "c": [], "d": [[]]}"#,
    )
    .unwrap();
    assert!(rules.enforce("a", &creds(), &target()));
    assert!(rules.enforce("b", &creds(), &target()));
    assert!(rules.enforce("c", &creds(), &target()));
    assert!(!rules.enforce("d", &creds(), &target()));
}

#[test]
fn errors_name_the_rule_and_position() {
    let err = Rule::parse("role:admin or").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::UnexpectedEnd);
    let err = Rule::parse("role:admin and )").unwrap_err();
    assert_eq!(err.position, 15);
    assert_eq!(err.kind, ParseErrorKind::Unexpected(")".into()));
    let err = Rule::parse("(role:admin or role:x").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::Unclosed);
    assert_eq!(err.position, 0);
    let err = Rule::parse("role:a  admin").unwrap_err();
    assert_eq!(
        (err.position, err.kind),
        (8, ParseErrorKind::NoKind("admin".into()))
    );
    let err = Rule::parse("'x'").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::StringLiteral("x".into()));
    let err = Rule::parse("http://example.com").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::Remote("http".into()));
    assert_eq!(
        err.to_string(),
        "remote `http:` checks are not supported at byte 0 of rule `http://example.com`"
    );

    let err = Rules::from_yaml_str("\"good\": \"@\"\n\"bad\": \"role:a or or\"\n").unwrap_err();
    match err {
        LoadError::Parse { rule, source } => {
            assert_eq!(rule, "bad");
            assert_eq!(source.position, 10);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        Rules::from_yaml_str("- a\n- b\n"),
        Err(LoadError::NotAMapping)
    ));
    assert!(matches!(
        Rules::from_yaml_str("a: 1\n"),
        Err(LoadError::BadValue { .. })
    ));
}

#[test]
fn lenient_parsing_is_oslo_policy() {
    // An atom without `kind:` is `!`, the rest of the rule still counts.
    assert!(Rule::parse_lenient("admin or role:member").evaluate(&creds(), &target()));
    assert!(!Rule::parse_lenient("role:member and admin").evaluate(&creds(), &target()));
    // A rule that does not parse never passes.
    assert!(!Rule::parse_lenient("role:member or").evaluate(&creds(), &target()));
    assert!(!Rule::parse_lenient("http://x").evaluate(&creds(), &target()));
}

#[test]
fn system_scope_is_copied_to_system() {
    let creds = Credentials::new()
        .with("system_scope", "all")
        .with("roles", json!(["reader"]));
    assert!(
        Rule::parse("role:reader and system_scope:all and system:all")
            .unwrap()
            .evaluate(&creds, &Target::new())
    );
}

#[test]
fn flatten_target() {
    let t = Target::flatten(&json!({"target": {"token": {"user_id": "u1"}}, "x": 1}));
    assert_eq!(t.get("target.token.user_id"), Some(&json!("u1")));
    assert!(Rule::parse("user_id:%(target.token.user_id)s and 1:%(x)s")
        .unwrap()
        .evaluate(&creds(), &t));
}
