//! The objects Nexus writes to the API server, typed by kind.
//!
//! Rendering builds each object's body as JSON (Istio's CRDs have no Rust types here), but
//! the kind is a closed enum: the apply, prune and watch code asks an [`Object`] for its kind,
//! namespace and name instead of reading `o["kind"]`, and a kind Nexus does not write cannot
//! be spelled at all (an unknown kind used to become a ConfigMap silently).

use kube::core::{ApiResource, GroupVersionKind};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// Every kind of object the controller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    EnvoyFilter,
    VirtualService,
    DestinationRule,
    ConfigMap,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::EnvoyFilter,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ConfigMap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// `None` for a kind Nexus does not write.
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// API group, version and plural. Istio serves EnvoyFilter only as `v1alpha3`; the
    /// networking kinds Nexus writes as `v1beta1`, which every supported Istio serves.
    fn gvp(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::EnvoyFilter => ("networking.istio.io", "v1alpha3", "envoyfilters"),
            Kind::VirtualService => ("networking.istio.io", "v1beta1", "virtualservices"),
            Kind::DestinationRule => ("networking.istio.io", "v1beta1", "destinationrules"),
            Kind::ConfigMap => ("", "v1", "configmaps"),
        }
    }

    pub fn api_version(self) -> String {
        match self.gvp() {
            ("", version, _) => version.to_string(),
            (group, version, _) => format!("{group}/{version}"),
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, plural) = self.gvp();
        let gvk = GroupVersionKind::gvk(group, version, self.as_str());
        ApiResource::from_gvk_with_plural(&gvk, plural)
    }
}

/// One object to apply: its kind, and its JSON with `apiVersion`, `kind` and `metadata`.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    kind: Kind,
    value: Value,
}

impl Object {
    /// `metadata` and the kind's top-level fields (`spec`, `data`): `apiVersion` and `kind`
    /// come from `kind`, so they always agree with it.
    pub fn new(kind: Kind, metadata: Value, fields: Map<String, Value>) -> Object {
        let mut value = Map::new();
        value.insert("apiVersion".into(), Value::String(kind.api_version()));
        value.insert("kind".into(), Value::String(kind.as_str().to_string()));
        value.insert("metadata".into(), metadata);
        value.extend(fields);
        Object {
            kind,
            value: Value::Object(value),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn as_value(&self) -> &Value {
        &self.value
    }

    pub fn into_value(self) -> Value {
        self.value
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_refused() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("Secret"), None);
        assert_eq!(Kind::ConfigMap.api_version(), "v1");
        assert_eq!(
            Kind::EnvoyFilter.api_version(),
            "networking.istio.io/v1alpha3"
        );
        assert_eq!(
            Kind::DestinationRule.api_resource().plural,
            "destinationrules"
        );
    }

    #[test]
    fn an_object_carries_its_kind_in_its_json() {
        let mut spec = Map::new();
        spec.insert("spec".into(), json!({ "hosts": ["a"] }));
        let o = Object::new(
            Kind::VirtualService,
            json!({ "name": "n", "namespace": "ns" }),
            spec,
        );
        assert_eq!(
            (o.kind(), o.namespace(), o.name()),
            (Kind::VirtualService, "ns", "n")
        );
        assert_eq!(o.as_value()["kind"], "VirtualService");
        assert_eq!(o.as_value()["apiVersion"], "networking.istio.io/v1beta1");
    }
}
