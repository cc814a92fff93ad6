//! TLS client settings shared by the sinks: rustls with the ring provider (the stack kube uses).
//!
//! Takes: the PEM files of an exporter. Gives: a rustls `ClientConfig`. Must never: disable
//! verification; without `ca_file` the system's roots are trusted.

use std::{fs, path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::SinkError;
use crate::output::export::config::TlsFiles;

fn read(path: &Path) -> Result<Vec<u8>, SinkError> {
    fs::read(path).map_err(|e| SinkError::Config(format!("{}: {e}", path.display())))
}

/// The client configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, SinkError> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            let pem = read(ca)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SinkError::Config(format!("{}: {e}", ca.display())))?;
                roots.add(cert).map_err(|e| SinkError::Config(format!("{}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(SinkError::Config(format!("{}: no certificate", ca.display())));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::Config(format!("{}: {e}", cert.display())))?;
            let key_pem = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| SinkError::Config(format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| SinkError::Config(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
