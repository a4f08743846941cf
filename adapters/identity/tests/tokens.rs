//! Keystone JWS tokens: round trip, the forgeries that must be refused, the key
//! repository layout, and interoperability with PyJWT as Keystone uses it.

mod common;

use std::process::Command;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use quartet_identity::jws::{new_audit_id, Claims, KeyRepository};
use quartet_policies::auth::time::epoch_secs;
use quartet_policies::auth::InvalidReason;
use sha2::{Digest, Sha256};

fn claims(exp_in: i64) -> Claims {
    let now = epoch_secs(SystemTime::now());
    Claims {
        sub: "4a2b6010d52842ac81b8e0ef29169188".into(),
        iat: now,
        exp: now.saturating_add_signed(exp_in),
        openstack_methods: vec!["password".into()],
        openstack_audit_ids: vec![new_audit_id()],
        openstack_project_id: Some("5e78fe57e75443aca521771d2b6dd113".into()),
        ..Claims::default()
    }
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), message].concat());
    Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
}

#[test]
fn round_trip_in_keystones_format() {
    let keys = KeyRepository::generate();
    let c = claims(3600);
    let token = keys.sign(&c).unwrap();
    assert_eq!(keys.verify(&token, SystemTime::now()).unwrap(), c);
    // Same header bytes as the token a real Keystone issued.
    let sample = include_str!("data/keystone-jws-token.txt").trim();
    assert_eq!(segments(&token)[0], segments(sample)[0]);
    // Same claims, same order, as Keystone's payload.
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&segments(&token)[1]).unwrap()).unwrap();
    let keys_order: Vec<&str> = [
        "sub",
        "iat",
        "exp",
        "openstack_methods",
        "openstack_audit_ids",
        "openstack_project_id",
    ]
    .to_vec();
    let mut last = 0;
    for k in keys_order {
        let at = payload.find(&format!("\"{k}\"")).unwrap();
        assert!(at >= last, "{k} out of order in {payload}");
        last = at;
    }
    let audit = &c.openstack_audit_ids[0];
    assert_eq!(
        audit.len(),
        22,
        "Keystone audit ids: 16 bytes, url-safe base64, no padding"
    );
}

#[test]
fn reads_a_real_keystone_token() {
    let sample = include_str!("data/keystone-jws-token.txt").trim();
    let payload = URL_SAFE_NO_PAD.decode(&segments(sample)[1]).unwrap();
    let parsed: Claims = serde_json::from_slice(&payload).unwrap();
    assert_eq!(parsed.sub, "875c1b1a98e54605bc6b408f272c8133");
    assert_eq!(
        parsed.openstack_project_id.as_deref(),
        Some("0a8f612af06942c2a1b931e64d5aba60")
    );
    let decoded: Claims = serde_json::from_str(include_str!("data/jws-claims.json")).unwrap();
    assert_eq!(decoded.openstack_audit_ids, ["buVxW-0yQo6kUO7k7xOczw"]);
    // Signed by a key we do not have.
    let keys = KeyRepository::generate();
    assert_eq!(
        keys.verify(sample, SystemTime::now()),
        Err(InvalidReason::BadSignature)
    );
}

#[test]
fn forgeries_are_refused() {
    let keys = KeyRepository::generate();
    let token = keys.sign(&claims(3600)).unwrap();
    let parts = segments(&token);
    let now = SystemTime::now();

    // A tampered payload (another user) with the original signature.
    let mut forged = claims(3600);
    forged.sub = "someone-else".into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_eq!(
        keys.verify(&tampered, now),
        Err(InvalidReason::BadSignature)
    );

    // Signed with another key.
    let other = KeyRepository::generate().sign(&claims(3600)).unwrap();
    assert_eq!(keys.verify(&other, now), Err(InvalidReason::BadSignature));

    // alg: none, with and without a signature segment.
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        keys.verify(&format!("{none_header}.{}.", parts[1]), now),
        Err(InvalidReason::BadSignature)
    );
    assert_eq!(
        keys.verify(&format!("{none_header}.{}.{}", parts[1], parts[2]), now),
        Err(InvalidReason::BadSignature)
    );
    let none_upper = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
    assert_eq!(
        keys.verify(&format!("{none_upper}.{}.", parts[1]), now),
        Err(InvalidReason::BadSignature)
    );

    // HS256 with the public key (PEM and raw point) as the HMAC secret.
    let public_pem = {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        keys.public_keys()[0]
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    };
    let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{hs_header}.{}", parts[1]);
    for secret in [
        public_pem.as_bytes().to_vec(),
        keys.public_keys()[0]
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    ] {
        let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(&secret, input.as_bytes()));
        assert_eq!(
            keys.verify(&format!("{input}.{sig}"), now),
            Err(InvalidReason::BadSignature)
        );
    }
    // Other algorithms named in the header, with a real ES256 signature.
    for alg in ["ES384", "RS256", "EdDSA", "es256"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        assert_eq!(
            keys.verify(&format!("{header}.{}.{}", parts[1], parts[2]), now),
            Err(InvalidReason::BadSignature)
        );
    }

    // Expired, and garbage.
    let expired = keys.sign(&claims(-10)).unwrap();
    assert_eq!(keys.verify(&expired, now), Err(InvalidReason::Expired));
    assert!(
        keys.verify_signature(&expired).is_ok(),
        "signature alone still verifies"
    );
    assert_eq!(
        keys.verify("gAAAAABfernet", now),
        Err(InvalidReason::Unrecognized)
    );
    assert_eq!(keys.verify("a.b.c", now), Err(InvalidReason::Unrecognized));
    assert_eq!(keys.verify("", now), Err(InvalidReason::Unrecognized));
}

#[test]
fn key_repository_layout() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("jws-keys");
    let first = KeyRepository::open_or_create(&repo).unwrap();
    assert!(repo.join("private/private.pem").exists());
    assert!(repo.join("public/quartet.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(repo.join("private/private.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let token = first.sign(&claims(60)).unwrap();
    let reopened = KeyRepository::open_or_create(&repo).unwrap();
    assert!(
        reopened.verify(&token, SystemTime::now()).is_ok(),
        "the same key on restart"
    );

    // A verifier holding only public keys (another node's key added): every key tried.
    let verifier = KeyRepository::open(&dir.path().join("none"), &repo.join("public")).unwrap();
    assert!(!verifier.can_sign());
    assert!(verifier.verify(&token, SystemTime::now()).is_ok());
    std::fs::write(repo.join("public/broken.pem"), "not a key").unwrap();
    assert!(KeyRepository::open_or_create(&repo).is_err());
}

fn peer(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/pyjwt_keystone.py");
    let out = Command::new(common::python())
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success() || args[0] == "verify",
        "peer {args:?} failed: {} (is PyJWT[crypto] installed? run `bash tests/run.sh`)",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Keys made as `keystone-manage create_jws_keypair` makes them, tokens signed as
/// Keystone signs them (PyJWT): we verify theirs, they verify ours.
#[test]
fn interoperates_with_pyjwt_as_keystone_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("keystone");
    std::fs::create_dir_all(&ks).unwrap();
    peer(&["keypair", ks.to_str().unwrap()]);
    let c = claims(3600);
    let out = peer(&[
        "sign",
        ks.to_str().unwrap(),
        &serde_json::to_string(&c).unwrap(),
    ]);
    let theirs = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    // Keystone's public repository holds public.pem.
    let public = dir.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::copy(ks.join("public.pem"), public.join("public.pem")).unwrap();
    let verifier = KeyRepository::open(&dir.path().join("absent"), &public).unwrap();
    assert_eq!(verifier.verify(&theirs, SystemTime::now()).unwrap(), c);

    // Keystone's private key signs for us too (a shared key), and PyJWT verifies ours.
    let ours = KeyRepository::open(&ks, &public).unwrap().sign(&c).unwrap();
    let out = peer(&["verify", public.to_str().unwrap(), &ours]);
    assert!(out.status.success(), "PyJWT refused our token");
    let verified: Claims = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified, c);

    // And a key Quartet created is one PyJWT reads.
    let repo = dir.path().join("quartet");
    let mine = KeyRepository::open_or_create(&repo)
        .unwrap()
        .sign(&c)
        .unwrap();
    let out = peer(&["verify", repo.join("public").to_str().unwrap(), &mine]);
    assert!(
        out.status.success(),
        "PyJWT refused a token signed with a Quartet-made key"
    );
    let out = peer(&["verify", public.to_str().unwrap(), &mine]);
    assert!(
        !out.status.success(),
        "PyJWT accepted a token signed with another key"
    );
}
