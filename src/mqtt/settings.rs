//! [`Settings`]: everything needed to connect, resolved from `[mqtt]` at start (broker address,
//! password file, TLS client configuration with rustls), so that a bad file stops the service
//! before it connects.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{MqttConfig, TlsConfig, UrlError};

/// Errors preparing the connection (before anything is sent).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `mqtt.url` is malformed.
    #[error("mqtt.url: {0}")]
    Url(#[from] UrlError),
    /// A credential or TLS file could not be read.
    #[error("{key} = {path}: cannot read: {source}")]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    /// A TLS file holds no usable PEM item, or rustls refused it.
    #[error("{key} = {path}: {message}")]
    Tls { key: &'static str, path: PathBuf, message: String },
    /// The TLS client configuration could not be built.
    #[error("mqtt.tls: {0}")]
    TlsSetup(String),
}

/// Everything needed to connect, resolved and checked from `[mqtt]` ([`MqttConfig`]) by
/// [`Settings::from_config`]: files are read here, so a bad file stops the service at start.
#[derive(Clone)]
pub struct Settings {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker TCP port.
    pub port: u16,
    /// User name and password, when configured.
    pub(super) credentials: Option<(String, String)>,
    /// rustls client configuration, when TLS is on.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Settings {
    /// Resolve the broker address, read the password file and build the TLS configuration.
    ///
    /// # Errors
    /// [`TransportError`] naming the key and file that failed.
    pub fn from_config(m: &MqttConfig) -> Result<Settings, TransportError> {
        let (host, port) = m.broker_address()?;
        let password = match (&m.password, &m.password_file) {
            (Some(p), _) => p.0.clone(),
            (None, Some(path)) => read_file("mqtt.password_file", path).map(|b| {
                let text = String::from_utf8_lossy(&b).into_owned();
                text.trim_end_matches(['\r', '\n']).to_string()
            })?,
            (None, None) => String::new(),
        };
        let credentials = m.username.clone().map(|user| (user, password));
        let tls = m.tls().as_ref().map(tls_client_config).transpose()?;
        Ok(Settings { host, port, credentials, tls })
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read { key, path: path.to_path_buf(), source })
}

/// Build a rustls client configuration (ring provider) from `[mqtt.tls]`: the CA file or the
/// system roots, and the optional client certificate and key.
///
/// # Errors
/// [`TransportError::Read`] / [`TransportError::Tls`] naming the file; [`TransportError::TlsSetup`]
/// when no root certificate is available.
pub fn tls_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in pem_certs("mqtt.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| TransportError::Tls { key: "mqtt.tls.ca_file", path: path.clone(), message: e.to_string() })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TransportError::TlsSetup("no system root certificates found: set mqtt.tls.ca_file".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs("mqtt.tls.client_cert_file", cert)?;
            let bytes = read_file("mqtt.tls.client_key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TransportError::Tls {
                key: "mqtt.tls.client_key_file",
                path: key.clone(),
                message: format!("no usable private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| TransportError::Tls {
                key: "mqtt.tls.client_key_file",
                path: key.clone(),
                message: format!("does not match the client certificate: {e}"),
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// All certificates of a PEM file; an error when there is none.
fn pem_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read_file(key, path)?;
    let bad = |message: String| TransportError::Tls { key, path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::super::config::Secret;
    use super::*;

    #[test]
    fn missing_tls_files_are_named() {
        let tls = TlsConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = tls_client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("mqtt.tls.ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("mcm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = TlsConfig { ca_file: Some(path.clone()), ..Default::default() };
        let e = tls_client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn password_file_is_read_without_its_newline_and_never_debug_printed() {
        let dir = std::env::temp_dir().join(format!("mcm-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut config = MqttConfig { username: Some("dev".into()), password_file: Some(path), ..Default::default() };
        let s = Settings::from_config(&config).unwrap();
        assert_eq!(s.credentials, Some(("dev".into(), "s3cret".into())));
        config.password_file = None;
        config.password = Some(Secret("hunter2".into()));
        assert!(!format!("{config:?}").contains("hunter2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

