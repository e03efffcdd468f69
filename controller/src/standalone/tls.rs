//! TLS termination on `nexus up`'s listener: the NexusGateway's `tls` block as Envoy's
//! `DownstreamTlsContext`. The certificate reaches Envoy through file-based SDS: the secret
//! file names the certificate and key files, and Envoy re-reads them when their directory
//! sees a file moved into place (an atomic `mv` or a Kubernetes Secret's symlink swap), so a
//! rotated certificate is served without a restart or a dropped connection.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificate chain; a relative path is relative to DIR.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// Lowest protocol version accepted (default `TLSv1_2`).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// PEM CA bundle: with it, clients must present a certificate it signed (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(non_camel_case_types)]
pub enum TlsVersion {
    #[default]
    TLSv1_2,
    TLSv1_3,
}

/// SDS secret names.
const CERT: &str = "nexus-listener-cert";
const CLIENT_CA: &str = "nexus-client-ca";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

impl TlsSpec {
    /// Makes the file paths absolute (relative to `dir`); a missing file is a problem.
    pub fn resolve(&mut self, dir: &Path, problems: &mut Vec<String>) {
        let files = [
            ("certFile", Some(&mut self.cert_file)),
            ("keyFile", Some(&mut self.key_file)),
            ("clientCaFile", self.client_ca_file.as_mut()),
        ];
        for (field, path) in files {
            let Some(path) = path else { continue };
            if path.is_relative() {
                *path = dir.join(&*path);
            }
            if !path.is_file() {
                problems.push(format!(
                    "NexusGateway: $.spec.tls.{field}: {} is not a readable file",
                    path.display()
                ));
            }
        }
    }

    /// The listener's transport socket, its secrets read from the SDS file `sds`.
    pub fn transport_socket(&self, sds: &Path) -> Value {
        let source = json!({
            "path_config_source": {
                "path": sds.display().to_string(),
                "watched_directory": { "path": sds.parent().unwrap_or(sds).display().to_string() },
            },
            "resource_api_version": "V3",
        });
        let mut common = json!({
            "tls_params": { "tls_minimum_protocol_version": self.min_version },
            "tls_certificate_sds_secret_configs": [{ "name": CERT, "sds_config": source }],
            "alpn_protocols": ["h2", "http/1.1"],
        });
        if self.client_ca_file.is_some() {
            common["validation_context_sds_secret_config"] =
                json!({ "name": CLIENT_CA, "sds_config": source });
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": common,
                "require_client_certificate": self.client_ca_file.is_some(),
            },
        })
    }

    /// The SDS file's contents: the certificate (and client CA) by file name, so Envoy
    /// watches those files.
    pub fn secrets(&self, version: &str) -> Value {
        let file = |p: &Path| json!({ "filename": p.display().to_string() });
        let mut resources = vec![json!({
            "@type": SECRET_TYPE,
            "name": CERT,
            "tls_certificate": {
                "certificate_chain": file(&self.cert_file),
                "private_key": file(&self.key_file),
            },
        })];
        if let Some(ca) = &self.client_ca_file {
            resources.push(json!({
                "@type": SECRET_TYPE,
                "name": CLIENT_CA,
                "validation_context": { "trusted_ca": file(ca) },
            }));
        }
        json!({ "version_info": version, "resources": resources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_dir_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
        let mut tls = TlsSpec {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            min_version: TlsVersion::TLSv1_3,
            client_ca_file: None,
        };
        let mut problems = Vec::new();
        tls.resolve(dir.path(), &mut problems);
        assert_eq!(tls.cert_file, dir.path().join("cert.pem"));
        assert_eq!(
            problems,
            [format!(
                "NexusGateway: $.spec.tls.keyFile: {} is not a readable file",
                dir.path().join("key.pem").display()
            )]
        );
    }

    #[test]
    fn mtls_requires_a_client_certificate_checked_against_the_ca() {
        let tls = TlsSpec {
            cert_file: "/c/cert.pem".into(),
            key_file: "/c/key.pem".into(),
            min_version: TlsVersion::TLSv1_3,
            client_ca_file: Some("/c/ca.pem".into()),
        };
        let ts = tls.transport_socket(Path::new("/s/sds/sds.json"));
        let ctx = &ts["typed_config"];
        assert_eq!(ctx["require_client_certificate"], true);
        let common = &ctx["common_tls_context"];
        assert_eq!(
            common["tls_params"]["tls_minimum_protocol_version"],
            "TLSv1_3"
        );
        assert_eq!(
            common["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
                ["watched_directory"]["path"],
            "/s/sds"
        );
        let secrets = tls.secrets("v1");
        assert_eq!(
            secrets["resources"][0]["tls_certificate"]["private_key"]["filename"],
            "/c/key.pem"
        );
        assert_eq!(
            secrets["resources"][1]["validation_context"]["trusted_ca"]["filename"],
            "/c/ca.pem"
        );
    }
}
