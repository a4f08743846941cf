//! Password authentication: SCRAM-SHA-256 (RFC 5802 and RFC 7677, without channel
//! binding) on both sides, and PostgreSQL's md5 scheme.
//!
//! Passwords are taken as they are (no SASLprep): ASCII passwords behave exactly as in
//! PostgreSQL; others may not match a server that normalises them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const SCRAM_ITERATIONS: u32 = 4096;
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed scram message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("scram nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    BadProof,
    #[error("server signature mismatch")]
    BadServerSignature,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot happen.
        HmacSha256::new_from_slice(&[]).expect("empty hmac key")
    });
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256.
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// What the server keeps of a password (PostgreSQL's `SCRAM-SHA-256$` verifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// From a plaintext password, with a fresh random salt.
    pub fn from_password(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Self::with_salt(password, &salt, SCRAM_ITERATIONS)
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(verifier: &str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Self {
            iterations: iter.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

fn nonce() -> String {
    let raw: [u8; 18] = rand::random();
    B64.encode(raw)
}

fn attr(part: &str, name: char) -> Option<&str> {
    let mut chars = part.chars();
    (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ScramServer {
    /// Reads the client-first message and returns the server-first message.
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        let mut parts = msg.splitn(3, ',');
        let cb = parts.next().ok_or(ScramError::Malformed)?;
        let authzid = parts.next().ok_or(ScramError::Malformed)?;
        let bare = parts.next().ok_or(ScramError::Malformed)?;
        match cb {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed);
        }
        let mut client_nonce = None;
        for part in bare.split(',') {
            if let Some(r) = attr(part, 'r') {
                client_nonce = Some(r);
            }
            if part.starts_with("m=") {
                return Err(ScramError::Malformed);
            }
        }
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed)?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let gs2_header = format!("{cb},{authzid},");
        Ok((
            Self {
                secret,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                gs2_header,
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final message; returns the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut cb = None;
        let mut nonce = None;
        for part in without_proof.split(',') {
            if let Some(c) = attr(part, 'c') {
                cb = Some(c);
            } else if let Some(r) = attr(part, 'r') {
                nonce = Some(r);
            }
        }
        let cb = B64
            .decode(cb.ok_or(ScramError::Malformed)?)
            .map_err(|_| ScramError::Malformed)?;
        if cb != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed)?
            .try_into()
            .map_err(|_| ScramError::BadProof)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        if !constant_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The client side of one SCRAM-SHA-256 exchange (Quartet logging in to a server).
pub struct ScramClient {
    password: String,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Returns the client and its client-first message.
    pub fn start(password: &str) -> (Self, String) {
        let nonce = nonce();
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            Self {
                password: password.to_string(),
                client_first_bare,
                nonce,
                server_signature: None,
            },
            first,
        )
    }

    /// Reads the server-first message; returns the client-final message.
    pub fn answer(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in msg.split(',') {
            if let Some(r) = attr(part, 'r') {
                nonce = Some(r);
            } else if let Some(s) = attr(part, 's') {
                salt = Some(B64.decode(s).map_err(|_| ScramError::Malformed)?);
            } else if let Some(i) = attr(part, 'i') {
                iterations = Some(i.parse::<u32>().map_err(|_| ScramError::Malformed)?);
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed)?;
        let salt = salt.ok_or(ScramError::Malformed)?;
        let iterations = iterations
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or(ScramError::Malformed)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ client_signature[i];
        }
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        let v = msg
            .split(',')
            .find_map(|p| attr(p, 'v'))
            .ok_or(ScramError::Malformed)?;
        let v = B64.decode(v).map_err(|_| ScramError::Malformed)?;
        match &self.server_signature {
            Some(expected) if constant_eq(expected, &v) => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL's stored md5 form: `md5` + md5(password + user).
pub fn md5_stored(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// What a client sends for md5 authentication: `md5` + md5(md5(password + user) + salt).
/// `stored` is the `md5...` form of [`md5_stored`].
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]))
}

/// Compares a client's md5 answer with the expected one in constant time.
pub fn md5_check(stored: &str, salt: [u8; 4], answer: &str) -> bool {
    constant_eq(md5_response(stored, salt).as_bytes(), answer.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_client_and_server_agree() {
        let secret = ScramSecret::from_password("secret");
        let (mut client, first) = ScramClient::start("secret");
        let (server, server_first) = ScramServer::start(secret, first.as_bytes()).unwrap();
        let fin = client.answer(server_first.as_bytes()).unwrap();
        let server_final = server.finish(fin.as_bytes()).unwrap();
        client.verify(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn scram_wrong_password_refused() {
        let secret = ScramSecret::from_password("secret");
        let (mut client, first) = ScramClient::start("nope");
        let (server, server_first) = ScramServer::start(secret, first.as_bytes()).unwrap();
        let fin = client.answer(server_first.as_bytes()).unwrap();
        assert_eq!(server.finish(fin.as_bytes()), Err(ScramError::BadProof));
    }

    /// RFC 7677 section 3 test vector.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::with_salt("pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server = ScramServer {
            secret,
            client_first_bare: client_first_bare.into(),
            server_first: server_first.into(),
            gs2_header: "n,,".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let fin = format!("{without_proof},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            server.finish(fin.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn verifier_parses() {
        let s = ScramSecret::with_salt("pw", b"0123456789abcdef", 4096);
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            s.iterations,
            B64.encode(&s.salt),
            B64.encode(s.stored_key),
            B64.encode(s.server_key)
        );
        assert_eq!(ScramSecret::parse(&text), Some(s));
        assert_eq!(ScramSecret::parse("md5abc"), None);
    }

    #[test]
    fn md5_matches_postgres() {
        // select 'md5' || md5('secret' || 'app');
        assert_eq!(
            md5_stored("app", "secret"),
            "md5".to_string() + &md5_hex(&[b"secretapp"])
        );
        let stored = md5_stored("app", "secret");
        let answer = md5_response(&stored, [1, 2, 3, 4]);
        assert!(md5_check(&stored, [1, 2, 3, 4], &answer));
        assert!(!md5_check(&stored, [1, 2, 3, 5], &answer));
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=x,,n=,r=a",
            b"n,,r=",
            b"\xff\xfe",
            b"x,y,z",
        ] {
            let _ = ScramServer::start(ScramSecret::with_salt("a", b"s", 1), input);
            let (mut c, _) = ScramClient::start("a");
            let _ = c.answer(input);
            let _ = c.verify(input);
        }
    }
}
