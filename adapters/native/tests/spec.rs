//! `[[native.drivers]]` as the config file writes it: parsing, unknown keys, validation
//! naming the key, and the registry built from it.

use quartet_native::spec::{validate_drivers, DriverSettings, DriverSpec, HttpAuth};
use quartet_native::Registry;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    native: Native,
}

#[derive(Deserialize)]
struct Native {
    drivers: Vec<DriverSpec>,
}

fn parse(text: &str) -> Result<Vec<DriverSpec>, toml::de::Error> {
    toml::from_str::<Config>(text).map(|c| c.native.drivers)
}

fn example(root: &str) -> String {
    format!(
        r#"
[[native.drivers]]
name = "volumes"
kind = "qemu-img"
root = "{root}"

[[native.drivers]]
name = "array"
kind = "http"
policy = "storage"
base_url = "https://array.example/api/v1"
auth = {{ header = "X-Auth-Token", value = "secret" }}
[native.drivers.operations.create_volume]
method = "POST"
path = "/volumes"
body = {{ name = "{{id}}", size_gb = "{{size_gb}}" }}

[[native.drivers]]
name = "targets"
kind = "exec"
[native.drivers.commands.list_target]
executable = "/bin/ls"
args = ["-d", "/tmp/[a-z]+"]
idempotent = true
"#
    )
}

#[test]
fn the_example_parses_and_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("volumes");
    let specs = parse(&example(&root.display().to_string())).expect("parses");
    assert_eq!(specs.len(), 3);
    assert_eq!(specs[0].settings.kind(), "qemu-img");
    assert_eq!(specs[1].policy.as_deref(), Some("storage"));
    let DriverSettings::Http(http) = &specs[1].settings else {
        panic!("http");
    };
    assert!(matches!(&http.auth, Some(HttpAuth::Header(h)) if h.header == "X-Auth-Token"));
    // The secret never reaches a log.
    assert!(!format!("{:?}", specs[1]).contains("secret"));
    validate_drivers(&specs).expect("valid");

    let registry = Registry::build(&specs).expect("builds");
    assert_eq!(registry.len(), 3);
    assert!(root.is_dir(), "the qemu-img root is created");
    let volumes = registry.get("volumes").expect("volumes");
    assert_eq!(volumes.kind(), "qemu-img");
    assert!(volumes
        .operation("create_volume")
        .is_some_and(|o| !o.idempotent));
    assert!(volumes
        .operation("delete_volume")
        .is_some_and(|o| o.idempotent));
    let array = registry.get("array").expect("array");
    assert_eq!(array.policy(), Some("storage"));
    assert!(array
        .operation("create_volume")
        .is_some_and(|o| !o.idempotent));
    assert!(registry.get("nope").is_err());
}

#[test]
fn unknown_keys_are_rejected() {
    let cases = [
        // A key of another kind.
        "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\nbase_url = \"http://a\"\n",
        // A typo.
        "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nrot = \"/tmp/x\"\n",
        // An unknown kind.
        "[[native.drivers]]\nname = \"v\"\nkind = \"ceph\"\nroot = \"/tmp/x\"\n",
        // No kind.
        "[[native.drivers]]\nname = \"v\"\nroot = \"/tmp/x\"\n",
        // An unknown key in a nested table.
        "[[native.drivers]]\nname = \"t\"\nkind = \"exec\"\n[native.drivers.commands.x]\nexecutable = \"/bin/ls\"\nshell = true\n",
    ];
    for text in cases {
        assert!(parse(text).is_err(), "accepted:\n{text}");
    }
}

#[test]
fn validation_names_the_key() {
    let check = |text: &str| -> String {
        let specs = parse(text).expect("parses");
        validate_drivers(&specs).expect_err("invalid").key
    };
    assert_eq!(
        check("[[native.drivers]]\nname = \"a b\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n"),
        "native.drivers[0].name"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\nqemu_img = \"qemu-img\"\n"),
        "native.drivers[0].qemu_img"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/y\"\n"),
        "native.drivers[1].name"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"t\"\nkind = \"exec\"\n[native.drivers.commands.x]\nexecutable = \"ls\"\n"),
        "native.drivers[0].commands.x.executable"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"t\"\nkind = \"exec\"\n[native.drivers.commands.x]\nexecutable = \"/bin/ls\"\nargs = [\"(\"]\n"),
        "native.drivers[0].commands.x.args[0]"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"h\"\nkind = \"http\"\nbase_url = \"ftp://x\"\n[native.drivers.operations.a]\nmethod = \"GET\"\npath = \"/\"\n"),
        "native.drivers[0].base_url"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"h\"\nkind = \"http\"\nbase_url = \"http://x\"\n[native.drivers.operations.a]\nmethod = \"FETCH\"\npath = \"/\"\n"),
        "native.drivers[0].operations.a.method"
    );
    assert_eq!(
        check("[[native.drivers]]\nname = \"h\"\nkind = \"http\"\nbase_url = \"http://x\"\n[native.drivers.operations.a]\nmethod = \"GET\"\npath = \"/v/{id\"\n"),
        "native.drivers[0].operations.a.path"
    );
}

#[test]
fn building_checks_the_machine() {
    let text = "[[native.drivers]]\nname = \"t\"\nkind = \"exec\"\n[native.drivers.commands.x]\nexecutable = \"/nonexistent/tool\"\n";
    let specs = parse(text).expect("parses");
    let err = Registry::build(&specs).expect_err("missing executable");
    assert_eq!(err.key, "native.drivers[0].commands.x.executable");
}

#[test]
fn specs_serialize_back_to_the_same_config() {
    let specs = parse(&example("/tmp/volumes")).expect("parses");
    #[derive(serde::Serialize)]
    struct Out<'a> {
        drivers: &'a [DriverSpec],
    }
    let text = toml::to_string(&Out { drivers: &specs }).expect("serializes");
    let back: Native = toml::from_str(&text).expect("parses back");
    assert_eq!(back.drivers, specs);
}
