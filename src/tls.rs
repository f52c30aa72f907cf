//! HTTPS for the API: rustls with the *ring* provider (no C toolchain beyond what the build
//! already needs), TLS 1.2 and 1.3, HTTP/1.1 over ALPN. Enabled by setting
//! `server.tls_cert_path` and `server.tls_key_path` to PEM files; a file that is missing or
//! holds no certificate / key is a configuration error at start-up, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::Error;

fn config_error(message: String) -> Error {
    Error::Config { message }
}

/// The certificate chain of a PEM file (at least one certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(format!(
                "server.tls_cert_path {}: cannot read certificates: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "server.tls_cert_path {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    // The error names the file, never its content.
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        config_error(format!(
            "server.tls_key_path {}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// The server configuration for `cert_path` and `key_path`.
pub fn server_config(cert_path: &str, key_path: &str) -> Result<ServerConfig, Error> {
    let certs = load_certs(Path::new(cert_path))?;
    let key = load_key(Path::new(key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            config_error(format!(
                "server.tls_cert_path / tls_key_path: the key does not fit the certificate: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_clear_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = server_config(missing.to_str().expect("utf-8"), "k.pem")
            .expect_err("missing file")
            .to_string();
        assert!(
            err.contains("server.tls_cert_path") && err.contains("missing.pem"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").expect("write");
        let err = load_certs(&empty).expect_err("no certificate").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = load_key(&empty).expect_err("no key").to_string();
        assert!(err.contains("server.tls_key_path"), "{err}");
    }
}
