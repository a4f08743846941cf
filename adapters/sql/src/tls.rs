//! TLS on both sides of the PostgreSQL proxy, with rustls (ring), as the REST listener.
//!
//! - Toward clients: a listener with `tls = { cert, key }` answers `SSLRequest` with `S`
//!   and runs the handshake; without it, with `N`. ALPN `postgresql` is offered (what
//!   PostgreSQL 17 servers select); clients offering no ALPN are accepted.
//! - Toward servers: the backend URL's `sslmode`, as libpq reads it: `disable` (the
//!   default here, unlike libpq, so a plain URL keeps meaning a plain connection) and
//!   `allow` connect in plain; `prefer` asks and falls back to plain on `N`; `require`
//!   asks and fails on `N`; neither checks the certificate (as libpq without a root
//!   certificate). `verify-ca` checks the chain against `sslrootcert`, `verify-full` the
//!   chain and that the certificate names the URL's host.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN protocol id of PostgreSQL (since 17).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// `sslmode` of a backend URL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    #[default]
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether an `SSLRequest` is sent at all.
    pub fn asks(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Allow)
    }

    /// Whether a server answering `N` is refused.
    pub fn required(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} file {}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} file {} holds no {what}", path.display())]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("tls certificate, key or root certificate not usable")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The rustls server config of a listener's `tls = { cert, key }`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs("tls.cert", cert)?;
    let read = |source| TlsError::Read {
        key: "tls.key",
        path: key.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(key).map_err(read)?;
    let private = rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(read)?
        .ok_or_else(|| TlsError::Empty {
            key: "tls.key",
            path: key.to_path_buf(),
            what: "PEM private key",
        })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, private)?;
    cfg.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(cfg))
}

/// The rustls client config for one backend's `sslmode` (and `sslrootcert`).
pub fn client_config(
    mode: SslMode,
    root: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = if mode.verifies() {
        let path = root.ok_or_else(|| TlsError::Empty {
            key: "sslrootcert",
            path: PathBuf::new(),
            what: "root certificate (verify-ca and verify-full need sslrootcert)",
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs("sslrootcert", path)? {
            roots.add(c)?;
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        Arc::new(Verify {
            webpki: Some(webpki),
            check_name: mode == SslMode::VerifyFull,
            provider,
        })
    } else {
        Arc::new(Verify {
            webpki: None,
            check_name: false,
            provider,
        })
    };
    let mut cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(cfg))
}

/// The name a server certificate is checked against (and sent as SNI for host names).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Rustls(rustls::Error::General(format!("bad host name {host}"))))
}

/// What a backend's server connections need for TLS: its mode, the connector and the
/// name its certificate is checked against.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    pub connector: tokio_rustls::TlsConnector,
    pub name: ServerName<'static>,
}

impl ServerTls {
    /// `None` when the URL's `sslmode` sends no `SSLRequest`.
    pub fn for_url(url: &crate::backend::BackendUrl) -> Result<Option<Self>, TlsError> {
        if !url.sslmode.asks() {
            return Ok(None);
        }
        let config = client_config(url.sslmode, url.sslrootcert.as_deref())?;
        Ok(Some(Self {
            mode: url.sslmode,
            connector: tokio_rustls::TlsConnector::from(config),
            name: server_name(&url.host)?,
        }))
    }
}

/// libpq's certificate checks: none (`prefer`, `require`), the chain (`verify-ca`), the
/// chain and the name (`verify-full`). Handshake signatures are always checked.
#[derive(Debug)]
struct Verify {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes() {
        assert_eq!(SslMode::parse("verify-full"), Some(SslMode::VerifyFull));
        assert_eq!(SslMode::parse("VERIFY"), None);
        assert!(!SslMode::Allow.asks());
        assert!(SslMode::Prefer.asks() && !SslMode::Prefer.required());
        assert!(SslMode::Require.required() && !SslMode::Require.verifies());
    }

    #[test]
    fn verify_needs_a_root() {
        assert!(client_config(SslMode::VerifyCa, None).is_err());
        assert!(client_config(SslMode::Require, None).is_ok());
        let missing = client_config(SslMode::VerifyFull, Some(Path::new("/nonexistent.pem")));
        assert!(matches!(
            missing,
            Err(TlsError::Read {
                key: "sslrootcert",
                ..
            })
        ));
    }
}
