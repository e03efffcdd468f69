//! The committed JSON Schemas are what the Rust types generate. After changing a type, run
//! `NEXUS_BLESS=1 cargo test -p nexus-events --test schema` and commit the files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn check(file: &str, generated: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(file);
    if std::env::var_os("NEXUS_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run NEXUS_BLESS=1 cargo test -p nexus-events --test schema",
        path.display()
    );
}

#[test]
fn the_event_schema_file_is_current() {
    check("event.v1.json", nexus_events::schema::event());
}

#[test]
fn the_command_schema_file_is_current() {
    check("command.v1.json", nexus_events::schema::command());
}

#[test]
fn every_event_validates_against_its_schema_shape() {
    // The schema names the CloudEvents attributes as required properties.
    let schema: serde_json::Value = serde_json::from_str(&nexus_events::schema::event()).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for attr in [
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "nexusversion",
        "data",
    ] {
        assert!(
            required.contains(&attr),
            "{attr} not required in {required:?}"
        );
    }
}
