//! The rule language compared with the real oslo.policy: every (rule, credentials,
//! target) case of the table below is evaluated by both, and they must agree.
//!
//! The interpreter is `$QUARTET_VENV/bin/python` (default `.venv` at the workspace root),
//! with oslo.policy installed by `bash tests/run.sh`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use quartet_policies::access::{Credentials, Rule, Rules, Target};
use serde_json::{json, Value};

const ORACLE: &str = r#"
import json, logging, sys
logging.disable(logging.CRITICAL)
from oslo_config import cfg
from oslo_policy import policy, _parser
conf = cfg.ConfigOpts()
conf([], project="quartet-test")
enforcer = policy.Enforcer(conf, use_conf=False)
out = []
for case in json.load(sys.stdin):
    # set_rules wraps the rules with the enforcer's default rule (policy_default_rule).
    enforcer.default_rule = case.get("default_rule")
    rules = {k: _parser.parse_rule(v) for k, v in case["rules"].items()}
    enforcer.set_rules(rules, overwrite=True, use_conf=False)
    try:
        out.append(bool(enforcer.enforce(_parser.parse_rule(case["rule"]), case["target"], case["creds"])))
    except Exception as exc:
        out.append("error: %r" % (exc,))
print(json.dumps(out))
"#;

fn python() -> PathBuf {
    let venv = std::env::var_os("QUARTET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python interpreter at {} (QUARTET_VENV or .venv at the workspace root): run `bash tests/run.sh` to create it with the real peers",
        python.display()
    );
    python
}

const RULES: &[&str] = &[
    "",
    "@",
    "!",
    "role:admin",
    "role:ADMIN",
    "role:member",
    "role:%(role_name)s",
    "project_id:%(project_id)s",
    "user_id:%(target.token.user_id)s",
    "user_id:%(missing)s",
    "is_admin:True",
    "is_admin:1",
    "True:%(enabled)s",
    "'member':%(role_name)s",
    "\"member\":%(role_name)s",
    "1:%(count)s",
    "None:%(nothing)s",
    "nested.list.id:b",
    "nested.list.id:%(item)s",
    "roles:member",
    "system:all",
    "system_scope:all",
    "not role:admin",
    "not role:admin and role:member",
    "role:admin or role:member",
    "role:admin or role:member and role:reader",
    "role:admin or (role:member and project_id:%(project_id)s)",
    "(role:admin or role:member) and project_id:%(project_id)s",
    "(role:admin or role:member) and not project_id:%(project_id)s",
    "@ or ! and !",
    "(@ or !) and !",
    "not (role:admin or role:foo)",
    "((role:member))",
    "not not role:member",
    "rule:admin_required",
    "rule:admin_or_owner",
    "rule:missing",
    "rule:missing or rule:everyone",
    "admin or role:member",
    "role:member and admin",
    "role:member or",
    "and role:member",
    "( role:member",
    "'quoted'",
    "role:member AND role:reader OR role:admin",
    "project_id:%(project_id)s%%",
    "user_id:%(user_id)s or user_id:%(target.token.user_id)s",
];

fn creds() -> Vec<Value> {
    vec![
        json!({"user_id": "u1", "project_id": "p1", "roles": ["Member", "reader"],
               "is_admin": true, "nested": {"list": [{"id": "a"}, {"id": "b"}]}}),
        json!({"user_id": "u2", "project_id": "p2", "roles": ["admin"], "is_admin": 1,
               "system_scope": "all"}),
        json!({"user_id": "u3", "roles": []}),
    ]
}

fn targets() -> Vec<Value> {
    vec![
        json!({"project_id": "p1", "role_name": "member", "target.token.user_id": "u1",
               "enabled": true, "count": 1, "nothing": null, "item": "a", "user_id": "u2"}),
        json!({"project_id": "p2", "role_name": "ADMIN", "target.token.user_id": "u2",
               "enabled": false, "count": "1", "item": "z"}),
    ]
}

fn named_rules() -> Value {
    json!({
        "admin_required": "role:admin or is_admin:1",
        "owner": "user_id:%(target.token.user_id)s",
        "admin_or_owner": "rule:admin_required or rule:owner",
        "everyone": "",
    })
}

#[test]
fn evaluator_agrees_with_oslo_policy() {
    let python = python();
    let named = named_rules();
    let mut cases = Vec::new();
    for rule in RULES {
        for creds in creds() {
            for target in targets() {
                for default_rule in [Value::Null, json!("owner")] {
                    cases.push(json!({"rule": rule, "creds": creds, "target": target,
                                      "rules": named, "default_rule": default_rule}));
                }
            }
        }
    }

    let mut child = Command::new(&python)
        .arg("-c")
        .arg(ORACLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the venv's python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_vec(&cases).expect("json").as_slice())
        .expect("write cases");
    let output = child.wait_with_output().expect("python output");
    assert!(
        output.status.success(),
        "oslo.policy oracle failed (is oslo.policy installed? run `bash tests/run.sh`)"
    );
    let answers: Vec<Value> = serde_json::from_slice(&output.stdout).expect("oracle json");
    assert_eq!(answers.len(), cases.len());

    let mut mismatches = Vec::new();
    for (case, answer) in cases.iter().zip(&answers) {
        let mut rules = Rules::new();
        for (name, text) in named.as_object().expect("object") {
            rules.insert(
                name.clone(),
                Rule::parse_lenient(text.as_str().expect("str")),
            );
        }
        if let Some(default) = case["default_rule"].as_str() {
            rules = rules.with_default_rule(default);
        }
        let ours = Rule::parse_lenient(case["rule"].as_str().expect("str")).evaluate_with(
            &Credentials::from_json(case["creds"].clone()),
            &Target::from_json(case["target"].clone()),
            &rules,
        );
        if answer != &Value::Bool(ours) {
            mismatches.push(format!(
                "rule {:?} creds {} target {} default {}: oslo.policy {answer}, ours {ours}",
                case["rule"], case["creds"], case["target"], case["default_rule"]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    eprintln!("{} cases agree with oslo.policy", cases.len());
}
