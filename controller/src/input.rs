//! Reading NexusRoutes and Secrets from YAML files (for the offline CLI and tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::crd::NexusRoute;
use crate::model::SecretData;

/// Everything found in a set of YAML files.
#[derive(Default)]
pub struct Inputs {
    /// With the file each came from.
    pub routes: Vec<(PathBuf, NexusRoute)>,
    pub secrets: BTreeMap<(String, String), SecretData>,
    /// File → problem (unparseable documents).
    pub errors: Vec<(PathBuf, String)>,
}

/// Reads every YAML document of every file; `NexusRoute`s and `Secret`s are kept, other kinds
/// ignored. A route without a namespace gets `default`.
pub fn read_files(files: &[PathBuf]) -> anyhow::Result<Inputs> {
    let mut inputs = Inputs::default();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
        read_str(f, &text, &mut inputs);
    }
    Ok(inputs)
}

pub fn read_str(file: &Path, text: &str, inputs: &mut Inputs) {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: serde_yaml would yield it again forever.
                inputs.errors.push((file.to_path_buf(), e.to_string()));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "NexusRoute" => match serde_path_to_error::deserialize::<_, NexusRoute>(value) {
                Ok(mut r) => {
                    if r.metadata.namespace.is_none() {
                        r.metadata.namespace = Some("default".to_string());
                    }
                    inputs.routes.push((file.to_path_buf(), r));
                }
                Err(e) => {
                    let path = e.path().to_string();
                    let path = if path == "." {
                        "$".to_string()
                    } else {
                        format!("$.{path}")
                    };
                    inputs
                        .errors
                        .push((file.to_path_buf(), format!("{path}: {}", e.inner())));
                }
            },
            "Secret" => match serde_yaml::from_value::<Secret>(value) {
                Ok(s) => {
                    let ns = s
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".to_string());
                    let name = s.metadata.name.clone().unwrap_or_default();
                    inputs.secrets.insert((ns, name), secret_data(&s));
                }
                Err(e) => inputs
                    .errors
                    .push((file.to_path_buf(), format!("Secret: {e}"))),
            },
            _ => {}
        }
    }
}

/// `data` (decoded) and `stringData` of a Secret.
pub fn secret_data(s: &Secret) -> SecretData {
    let mut out: SecretData = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}
