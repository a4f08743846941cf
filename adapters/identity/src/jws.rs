//! Keystone's JWS tokens: a compact JWT signed with ES256, with Keystone's claims
//! (`keystone/token/providers/jws/core.py`), and the key repository layout of
//! `keystone-manage create_jws_keypair`: `private/private.pem` (PKCS#8) signs,
//! every `*.pem` in `public/` (SubjectPublicKeyInfo) verifies.
//!
//! Verification accepts exactly one algorithm, ES256: a header naming `none`, an HMAC
//! (the "public key as HMAC secret" attack) or anything else is refused before any key
//! is tried. There is no `kid`: every public key is tried, as Keystone does.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};

use quartet_policies::auth::InvalidReason;

use crate::error::KeyError;

/// The claims of a Keystone JWS token; `None` values are omitted, as PyJWT does with
/// Keystone's payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub openstack_methods: Vec<String>,
    pub openstack_audit_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_domain_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_trust_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_group_ids: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_idp_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_protocol_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_access_token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_app_cred_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_thumbprint: Option<String>,
}

/// The header Keystone (PyJWT) writes: `{"alg": "ES256", "typ": "JWT"}`.
const HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// A key repository: one signing key and every verification key.
#[derive(Clone)]
pub struct KeyRepository {
    signing: Option<SigningKey>,
    verifying: Vec<VerifyingKey>,
    /// The verification keys as uncompressed SEC1 points, for `ring`'s verifier: about
    /// five times faster than p256's on this machine, and validation is the hot path.
    raw: Vec<Vec<u8>>,
}

fn raw_points(keys: &[VerifyingKey]) -> Vec<Vec<u8>> {
    keys.iter()
        .map(|k| k.to_encoded_point(false).as_bytes().to_vec())
        .collect()
}

impl std::fmt::Debug for KeyRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRepository")
            .field("can_sign", &self.signing.is_some())
            .field("public_keys", &self.verifying.len())
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

impl KeyRepository {
    /// Opens `dir` with Keystone's layout, creating a key pair when `private/private.pem`
    /// is missing (`private/private.pem` and `public/quartet.pem`, private key mode 0600).
    pub fn open_or_create(dir: &Path) -> Result<Self, KeyError> {
        let private = dir.join("private");
        let public = dir.join("public");
        let private_pem = private.join("private.pem");
        if !private_pem.exists() {
            std::fs::create_dir_all(&private).map_err(io(&private))?;
            std::fs::create_dir_all(&public).map_err(io(&public))?;
            let key = random_key();
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::BadKey {
                    path: private_pem.clone(),
                })?;
            write_private(&private_pem, pem.as_bytes())?;
            let public_pem = key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|_| KeyError::BadKey {
                    path: public.clone(),
                })?;
            let path = public.join("quartet.pem");
            std::fs::write(&path, public_pem).map_err(|source| KeyError::Write { path, source })?;
        }
        Self::open(&private, &public)
    }

    /// Opens Keystone's two repositories (`jws_private_key_repository`, which may be
    /// absent for a verifier only, and `jws_public_key_repository`).
    pub fn open(private_dir: &Path, public_dir: &Path) -> Result<Self, KeyError> {
        let private_pem = private_dir.join("private.pem");
        let signing = if private_pem.exists() {
            let text = std::fs::read_to_string(&private_pem).map_err(io(&private_pem))?;
            Some(
                SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::BadKey {
                    path: private_pem.clone(),
                })?,
            )
        } else {
            None
        };
        let mut verifying = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(public_dir)
            .map_err(io(public_dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let key = VerifyingKey::from_public_key_pem(&text)
                .map_err(|_| KeyError::BadKey { path: path.clone() })?;
            verifying.push(key);
        }
        Ok(Self::from_keys(signing, verifying))
    }

    /// A repository from keys in memory (tests, benchmarks).
    pub fn from_keys(signing: Option<SigningKey>, verifying: Vec<VerifyingKey>) -> Self {
        let raw = raw_points(&verifying);
        Self {
            signing,
            verifying,
            raw,
        }
    }

    /// A fresh key pair in memory.
    pub fn generate() -> Self {
        let key = random_key();
        let public = *key.verifying_key();
        Self::from_keys(Some(key), vec![public])
    }

    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    pub fn public_keys(&self) -> &[VerifyingKey] {
        &self.verifying
    }

    /// Signs claims into a compact JWS (`None` when this repository cannot sign).
    pub fn sign(&self, claims: &Claims) -> Option<String> {
        let key = self.signing.as_ref()?;
        let payload = serde_json::to_vec(claims).ok()?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature: Signature = key.sign(signing_input.as_bytes());
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// Verifies a token's signature with every public key, and its expiry against `now`.
    /// A token that is not a JWS at all is [`InvalidReason::Unrecognized`] (another
    /// validator may know it, e.g. a Fernet token for a remote Keystone).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, InvalidReason> {
        let claims = self.verify_signature(token)?;
        if quartet_policies::auth::time::from_epoch_secs(claims.exp) <= now {
            return Err(InvalidReason::Expired);
        }
        Ok(claims)
    }

    /// Verifies the signature only (Keystone checks expiry itself, for `allow_expired`).
    pub fn verify_signature(&self, token: &str) -> Result<Claims, InvalidReason> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidReason::Unrecognized);
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| InvalidReason::Unrecognized)?;
        let parsed: Header =
            serde_json::from_slice(&header_json).map_err(|_| InvalidReason::Unrecognized)?;
        if parsed.alg != "ES256" {
            return Err(InvalidReason::BadSignature);
        }
        // ES256 in JWS: the fixed-size `r || s` form, 64 bytes.
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .filter(|raw| raw.len() == 64)
            .ok_or(InvalidReason::BadSignature)?;
        let verified = self.raw.iter().any(|point| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signing_input.as_bytes(), &signature)
            .is_ok()
        });
        if !verified {
            return Err(InvalidReason::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| InvalidReason::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| InvalidReason::Malformed)
    }
}

fn random_key() -> SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        if let Ok(key) = SigningKey::from_bytes(&bytes.into()) {
            return key;
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(write)?;
    file.write_all(bytes).map_err(write)
}

/// A new audit id as Keystone makes them: 16 random bytes, url-safe base64, no padding.
pub fn new_audit_id() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}
