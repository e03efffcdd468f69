//! The JSON Schemas of the envelope, generated from the Rust types: `schema/event.v1.json`
//! (what `service.events` carries) and `schema/command.v1.json` (what `service.commands`
//! accepts). A test fails when the committed files differ from these.

use crate::command::CommandData;
use crate::envelope::Envelope;
use crate::event::EventData;

pub fn event() -> String {
    let mut schema = schemars::schema_for!(Envelope<EventData>);
    schema.insert(
        "title".into(),
        "Nexus event (service.events), envelope version 1".into(),
    );
    pretty(&schema)
}

pub fn command() -> String {
    let mut schema = schemars::schema_for!(Envelope<CommandData>);
    schema.insert(
        "title".into(),
        "Nexus command (service.commands), envelope version 1".into(),
    );
    pretty(&schema)
}

fn pretty(schema: &schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
