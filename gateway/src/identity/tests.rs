//! The config additions of the identity channel.

use crate::config::parse;
use quartet_policies::auth::AuthMode;

fn no_env(_: &str) -> Option<String> {
    None
}

const ROUTES: &str = r#"
[upstreams.compute]
endpoints = ["http://127.0.0.1:8774"]

[[routes]]
prefix = "/compute"
upstream = "compute"
"#;

fn err(src: &str) -> String {
    parse(src, "q.toml", no_env).unwrap_err().to_string()
}

#[test]
fn no_identity_means_no_token_checks() {
    let (c, _) = parse(ROUTES, "q.toml", no_env).unwrap();
    assert!(c.identity.is_none());
    assert_eq!(super::route_mode(&c, &c.routes[0]), AuthMode::None);
}

#[test]
fn identity_makes_required_the_default() {
    let src = format!("{ROUTES}\n[identity]\n");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    let identity = c.identity.as_ref().unwrap();
    assert_eq!(identity.database, "sqlite://quartet.db");
    assert_eq!(super::route_mode(&c, &c.routes[0]), AuthMode::Required);
    let src =
        format!("{ROUTES}auth = \"delay\"\naccess = \"role:admin or role:member\"\n[identity]\n");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    assert_eq!(super::route_mode(&c, &c.routes[0]), AuthMode::Delay);
    assert_eq!(
        c.routes[0].access.as_deref(),
        Some("role:admin or role:member")
    );
}

#[test]
fn auth_without_identity_names_the_route_key() {
    let src = format!("{ROUTES}auth = \"required\"\n");
    assert_eq!(
        err(&src),
        "q.toml:8: routes[0].auth: needs an [identity] section (no token can be checked without one)"
    );
    let src = format!("{ROUTES}auth = \"none\"\n");
    assert!(parse(&src, "q.toml", no_env).is_ok());
    let src = format!("{ROUTES}access = \"role:admin\"\n");
    assert!(err(&src).starts_with("q.toml:8: routes[0].access: needs an [identity]"));
    let src = format!("{ROUTES}auth = \"sometimes\"\n");
    assert!(
        err(&src).starts_with("q.toml:8: routes[0].auth: "),
        "{}",
        err(&src)
    );
}

#[test]
fn bad_access_rules_are_named() {
    let src = format!("{ROUTES}access = \"role:admin or (\"\n[identity]\n");
    assert!(
        err(&src).starts_with("q.toml:8: routes[0].access: "),
        "{}",
        err(&src)
    );
    let src = format!("{ROUTES}access = \"rule:admin_required\"\n[identity]\n");
    assert_eq!(
        err(&src),
        "q.toml:8: routes[0].access: no rule named \"admin_required\" in identity.policy_file"
    );
    let src = format!("{ROUTES}auth = \"none\"\naccess = \"role:admin\"\n[identity]\n");
    assert!(
        err(&src).starts_with("q.toml:9: routes[0].access: needs auth"),
        "{}",
        err(&src)
    );
}

#[test]
fn policy_file_rules_are_loaded_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "\"admin_required\": \"role:admin\"\n").unwrap();
    let src = format!(
        "{ROUTES}access = \"rule:admin_required\"\n[identity]\npolicy_file = {:?}\n",
        file.display().to_string()
    );
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    let rules = super::load_rules(c.identity.as_ref().unwrap()).unwrap();
    assert!(rules.get("admin_required").is_some());
    let src = format!("{ROUTES}[identity]\npolicy_file = \"/nonexistent/policy.yaml\"\n");
    assert!(
        err(&src)
            .starts_with("q.toml:9: identity.policy_file: cannot read policy file /nonexistent"),
        "{}",
        err(&src)
    );
}

#[test]
fn identity_keys_are_validated_and_named() {
    let src = "[identity]\ndatabase = \"oracle://x\"\n";
    assert_eq!(
        err(src),
        "q.toml:2: identity.database: must be a sqlite://, postgres:// or mysql:// url"
    );
    let src = "[identity]\nmode = \"keystone\"\n";
    assert!(
        err(src).starts_with("q.toml:1: identity.keystone: "),
        "{}",
        err(src)
    );
    let src = "[identity]\ndatabse = \"sqlite://x\"\n";
    assert!(
        err(src).contains("identity.databse: unknown field"),
        "{}",
        err(src)
    );
}

#[test]
fn database_env_override_is_applied_and_redacted() {
    let env = |name: &str| {
        (name == super::DATABASE_VAR).then(|| "postgres://q:secret@db:5432/quartet".to_string())
    };
    let (c, overrides) = parse("[identity]\n", "q.toml", env).unwrap();
    assert_eq!(
        c.identity.unwrap().database,
        "postgres://q:secret@db:5432/quartet"
    );
    assert_eq!(overrides[0].key, "identity.database");
    assert_eq!(overrides[0].value, "postgres://***@db:5432/quartet");
    // Without [identity] the variable changes nothing.
    let (c, overrides) = parse("", "q.toml", env).unwrap();
    assert!(c.identity.is_none() && overrides.is_empty());
}

#[test]
fn catalog_lists_each_route_on_the_public_listener() {
    let src = format!("[server]\nlisten = \"127.0.0.1:8080\"\n{ROUTES}\n[identity]\n");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    let catalog = super::catalog(&c);
    assert_eq!(catalog.len(), 1);
    assert_eq!(catalog[0].kind, "compute");
    assert_eq!(catalog[0].endpoints[0].interface, "public");
    assert_eq!(catalog[0].endpoints[0].url, "http://127.0.0.1:8080/compute");
    let src = format!("{ROUTES}\n[identity]\npublic_url = \"https://cloud.example/v3\"\n");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    assert_eq!(
        super::catalog(&c)[0].endpoints[0].url,
        "https://cloud.example/compute"
    );
}

#[test]
fn the_identity_section_of_the_default_config_parses_with_its_commented_keys() {
    let section: String = crate::config::DEFAULT_CONFIG
        .split("\n[identity]\n")
        .nth(1)
        .expect("an [identity] section in the default config")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with("policy_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let src = format!("[identity]\n{section}");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    let identity = c.identity.unwrap();
    assert_eq!(
        identity.public_url.as_deref(),
        Some("https://cloud.example/v3")
    );
    assert_eq!(identity.revocation_poll, std::time::Duration::from_secs(5));
    assert_eq!(
        identity.allow_expired_window,
        std::time::Duration::from_secs(48 * 3600)
    );
}

#[tokio::test]
async fn v3_is_served_unless_a_route_claims_it() {
    let dir = tempfile::tempdir().unwrap();
    let identity = format!(
        "[identity]\ndatabase = \"sqlite://{}\"\nkey_repository = \"{}\"\n",
        dir.path().join("id.db").display(),
        dir.path().join("keys").display()
    );
    let build = |routes: &str| {
        let src =
            format!("[upstreams.a]\nendpoints = [\"http://127.0.0.1:1\"]\n{routes}\n{identity}");
        parse(&src, "q.toml", no_env).unwrap().0
    };
    let catch_all = build("[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n");
    let mut shared = crate::stack::Shared::new(quartet_policies::metrics::Metrics::new());
    super::start(&mut shared, &catch_all).await.unwrap();
    let built = crate::stack::Built::build(catch_all, &shared).unwrap();
    assert!(super::serves_v3(&built, None, "/v3"));
    assert!(super::serves_v3(&built, None, "/v3/auth/tokens"));
    assert!(!super::serves_v3(&built, None, "/v3x"));
    assert!(!super::serves_v3(&built, None, "/compute"));
    let claimed = build("[[routes]]\nprefix = \"/v3\"\nupstream = \"a\"\n");
    let built = crate::stack::Built::build(claimed, &shared).unwrap();
    assert!(!super::serves_v3(&built, None, "/v3/auth/tokens"));
    // Readiness reports the store.
    let (ready, body) = super::readiness(&built).await.unwrap();
    assert!(ready, "{body}");
    assert_eq!(body["store"], "reachable");
}

const RPC: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[[rpc.topics]]
topic = "compute"
access = "role:admin"

[[rpc.routes]]
path = "/servers/{id}"
topic = "compute"
rpc_method = "get"
"#;

#[test]
fn rpc_topics_and_routes_default_to_required_and_routes_inherit_the_topics_rule() {
    // Without [identity]: the topic's access rule cannot be checked.
    assert_eq!(
        err(RPC),
        "q.toml:7: rpc.topics[0].access: needs an [identity] section"
    );
    let src = format!("{RPC}\n[identity]\n");
    let (c, _) = parse(&src, "q.toml", no_env).unwrap();
    assert_eq!(
        super::guard::effective_mode(&c, c.rpc.topics[0].auth),
        AuthMode::Required
    );
    let (mode, access) = super::guard::rpc_route_protection(&c, &c.rpc.routes[0]);
    assert_eq!((mode, access), (None, Some("role:admin")));
    let src = src.replace(
        "rpc_method = \"get\"",
        "rpc_method = \"get\"\nauth = \"none\"",
    );
    assert!(
        err(&src).starts_with("q.toml:9: rpc.routes[0].access: needs auth = \"required\""),
        "{}",
        err(&src)
    );
    let src = format!(
        "{}\n[identity]\n",
        RPC.replace("access = \"role:admin\"", "auth = \"delay\"")
    );
    assert!(
        err(&src.replace("[identity]\n", ""))
            .starts_with("q.toml:7: rpc.topics[0].auth: needs an [identity]"),
        "{}",
        err(&src.replace("[identity]\n", ""))
    );
}

#[test]
fn driver_caller_auth_and_access_are_validated() {
    let driver = "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/v\"\n";
    let src = format!("{driver}caller_auth = \"required\"\n");
    assert!(
        err(&src).starts_with("q.toml:5: native.drivers[0].caller_auth: needs an [identity]"),
        "{}",
        err(&src)
    );
    let src = format!(
        "{driver}[native.drivers.access]\ncreate_volume = \"role:admin or (\"\n\n[identity]\n"
    );
    assert!(
        err(&src).starts_with("q.toml:6: native.drivers[0].access.create_volume: "),
        "{}",
        err(&src)
    );
    let src = format!("{driver}caller_auth = \"none\"\n[native.drivers.access]\n\"*\" = \"role:admin\"\n\n[identity]\n");
    assert!(
        err(&src).contains("native.drivers[0].access.\"*\": needs caller_auth = \"required\""),
        "{}",
        err(&src)
    );
}

#[test]
fn route_path_params_are_validated() {
    let src = format!("{ROUTES}path_params = [\"compute/{{id}}\"]\n[identity]\n");
    assert!(
        err(&src).starts_with("q.toml:8: routes[0].path_params: "),
        "{}",
        err(&src)
    );
}
