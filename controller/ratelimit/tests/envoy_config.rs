//! Files in envoyproxy/ratelimit's format: what its loader accepts loads here, what it refuses is
//! refused here, with an error naming the file and the JSON path. Each case below restates one
//! fact of envoyproxy/ratelimit's config loader (src/config/config_impl.go) and its tests
//! (test/config), in Nexus's own files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nexus_config::ratelimit::Unit;
use nexus_ratelimit_service::limits::parse_envoy;
use nexus_ratelimit_service::Limits;

fn load(files: &[(&str, &str)]) -> anyhow::Result<Limits> {
    load_with(files, false)
}

fn load_with(files: &[(&str, &str)], merge: bool) -> anyhow::Result<Limits> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    Limits::from_files(&files, merge)
}

/// The error loading `files` gives, which must name `file` and contain every one of `parts`.
fn refused(files: &[(&str, &str)], file: &str, parts: &[&str]) {
    let err = match load(files) {
        Ok(_) => panic!("{file} must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.starts_with(&format!("{file}: ")), "{err}");
    for part in parts {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

/// Upstream's example: replaces (of existing and unknown names), a limit of 0, shadow mode,
/// unlimited without a unit, detailed_metric, quota_mode and metadata: all load.
const EXAMPLE_LIKE: &str = r#"
---
domain: shop
descriptors:
  - key: category
    value: checkout
    rate_limit:
      replaces:
        - name: per_user
        - name: no_such_limit
      unit: minute
      requests_per_unit: 40
  - key: source
    value: web
    descriptors:
      - key: destination
        value: payments
        rate_limit:
          replaces: [{name: per_user}]
          unit: minute
          requests_per_unit: 20
      - key: destination
        value: named
        rate_limit: {name: named_limit, unit: minute, requests_per_unit: 2}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
    descriptors:
      - key: item
        value: gift
        rate_limit: {name: per_user, unit: minute, requests_per_unit: 1}
      - key: item
        value: banned
        rate_limit: {name: banned_item, unit: minute, requests_per_unit: 0}
      - key: item
        value: soft
        shadow_mode: true
        rate_limit: {unit: minute, requests_per_unit: 3}
      - key: free
        rate_limit:
          unlimited: true
  - key: any
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: tenant
    value: t1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
    metadata:
      quota_owner:
        name: "t1"
        tiers: [gold, 3, true]
"#;

#[test]
fn an_example_with_every_feature_loads() {
    let l = load(&[("example.yaml", EXAMPLE_LIKE)]).unwrap();
    assert!(l.warnings().is_empty(), "{:?}", l.warnings());
    let r = l
        .resolve("shop", &[("user", "u1"), ("item", "gift")])
        .unwrap();
    assert_eq!((r.name.as_str(), r.requests_per_unit), ("per_user", 1));
    let r = l.resolve("shop", &[("category", "checkout")]).unwrap();
    assert_eq!(r.replaces, ["per_user", "no_such_limit"]);
    let r = l
        .resolve("shop", &[("user", "u1"), ("item", "banned")])
        .unwrap();
    assert_eq!(r.requests_per_unit, 0);
    assert!(
        l.resolve("shop", &[("user", "u1"), ("free", "x")])
            .unwrap()
            .unlimited
    );
    assert!(l.resolve("shop", &[("tenant", "t1")]).unwrap().quota_mode);
    assert_eq!(
        l.resolve("shop", &[("any", "v")]).unwrap().metric_key,
        "shop.any_v"
    );
}

/// Nested levels, key-only defaults, exact overrides, a value without a limit (whitelisted),
/// a named limit, every unit.
const BASIC: &str = r#"
# comments are fine
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: key2
    value: value3
  - key: key3
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: key4
    rate_limit: {name: key4_rate_limit, unit: day, requests_per_unit: 1}
  - key: key5
    rate_limit: {unit: week, requests_per_unit: 1}
  - key: key6
    rate_limit: {unit: MONTH, requests_per_unit: 1}
  - key: key7
    rate_limit: {unit: Year, requests_per_unit: 1}
"#;

#[test]
fn basic_tree_loads_and_matches_level_by_level() {
    let l = load(&[("basic.yaml", BASIC)]).unwrap();
    let rpu = |entries: &[(&str, &str)]| {
        l.resolve("test-domain", entries)
            .map(|r| r.requests_per_unit)
    };
    assert_eq!(rpu(&[("key1", "something")]), None);
    assert_eq!(rpu(&[("key1", "value1")]), None, "no limit at that level");
    assert_eq!(rpu(&[("key1", "value1"), ("subkey1", "x")]), Some(5));
    assert_eq!(
        rpu(&[("key1", "value1"), ("subkey1", "subvalue1")]),
        Some(10)
    );
    assert_eq!(rpu(&[("key2", "something")]), Some(20));
    assert_eq!(rpu(&[("key2", "value2")]), Some(30));
    assert_eq!(rpu(&[("key2", "value3")]), None, "whitelisted value");
    assert_eq!(
        rpu(&[("key2", "value2"), ("sub", "x")]),
        None,
        "deeper than the tree"
    );
    assert_eq!(
        l.resolve("test-domain", &[("key4", "x")]).unwrap().name,
        "key4_rate_limit"
    );
    let units: Vec<Unit> = ["key3", "key4", "key5", "key6", "key7"]
        .iter()
        .map(|k| l.resolve("test-domain", &[(k, "x")]).unwrap().unit)
        .collect();
    assert_eq!(
        units,
        [Unit::Hour, Unit::Day, Unit::Week, Unit::Month, Unit::Year]
    );
    assert!(l.resolve("other-domain", &[("key2", "x")]).is_none());
}

#[test]
fn shadow_mode_belongs_to_the_matched_node() {
    let l = load(&[(
        "shadow.yaml",
        r#"
domain: d
descriptors:
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
    shadow_mode: true
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
"#,
    )])
    .unwrap();
    assert!(l.resolve("d", &[("key2", "x")]).unwrap().shadow_mode);
    assert!(!l.resolve("d", &[("key2", "value2")]).unwrap().shadow_mode);
}

#[test]
fn wildcards_trailing_middle_multiple_and_nested() {
    let l = load(&[(
        "wildcard.yaml",
        r#"
domain: d
descriptors:
  - {key: wild, value: "foo*", rate_limit: {unit: minute, requests_per_unit: 20}}
  - {key: noWild, value: foo, rate_limit: {unit: minute, requests_per_unit: 20}}
  - {key: midWild, value: "bar*b", rate_limit: {unit: minute, requests_per_unit: 20}}
  - {key: multiWild, value: "foo*bar*baz", rate_limit: {unit: minute, requests_per_unit: 10}}
  - key: nestedWild
    value: val1
    descriptors:
      - {key: wild, value: "goo*", rate_limit: {unit: minute, requests_per_unit: 20}}
"#,
    )])
    .unwrap();
    let hit = |entries: &[(&str, &str)]| l.resolve("d", entries).map(|r| r.metric_key);
    assert_eq!(hit(&[("wild", "foo1")]).as_deref(), Some("d.wild_foo*"));
    assert_eq!(hit(&[("wild", "foo2")]).as_deref(), Some("d.wild_foo*"));
    assert_eq!(hit(&[("wild", "bar")]), None);
    assert_eq!(hit(&[("noWild", "foo1")]), None, "no star, no prefix match");
    assert!(hit(&[("midWild", "barb")]).is_some());
    assert_eq!(hit(&[("midWild", "xbarb")]), None);
    assert!(hit(&[("multiWild", "foobarbaz")]).is_some());
    assert_eq!(hit(&[("multiWild", "foo123baz")]), None);
    assert_eq!(
        hit(&[("nestedWild", "val1"), ("wild", "goo2")]).as_deref(),
        Some("d.nestedWild_val1.wild_goo*")
    );
    // Without share_threshold every matching value has its own counter.
    assert_eq!(
        l.resolve("d", &[("wild", "foo1")]).unwrap().key,
        "d|wild=foo1"
    );
}

#[test]
fn share_threshold_gives_every_match_one_counter() {
    let l = load(&[(
        "share.yaml",
        r#"
domain: d
descriptors:
  - {key: file, value: test1, rate_limit: {unit: minute, requests_per_unit: 50}}
  - {key: file, value: "test*", share_threshold: true, rate_limit: {unit: minute, requests_per_unit: 100}}
  - key: path
    value: "path/*"
    share_threshold: true
    descriptors:
      - key: file
        value: "file/*"
        share_threshold: false
        descriptors:
          - {key: type, rate_limit: {unit: minute, requests_per_unit: 120}}
"#,
    )])
    .unwrap();
    let key = |entries: &[(&str, &str)]| l.resolve("d", entries).unwrap().key;
    assert_eq!(
        key(&[("file", "test1")]),
        "d|file=test1",
        "exact beats the wildcard"
    );
    assert_eq!(key(&[("file", "test2")]), "d|file=test*");
    assert_eq!(key(&[("file", "test3")]), "d|file=test*");
    assert_eq!(
        key(&[("path", "path/a"), ("file", "file/x"), ("type", "pdf")]),
        "d|path=path/*|file=file/x|type=pdf"
    );
}

#[test]
fn domains_merge_only_when_asked() {
    let a = ("a.yaml", "domain: d\ndescriptors:\n  - {key: k1, value: v1, rate_limit: {unit: minute, requests_per_unit: 10}}\n");
    let b = ("b.yaml", "domain: d\ndescriptors:\n  - {key: k2, value: v2, rate_limit: {unit: minute, requests_per_unit: 20}}\n");
    refused(&[a, b], "b.yaml", &["duplicate domain \"d\"", "a.yaml"]);
    let l = load_with(&[a, b], true).unwrap();
    assert_eq!(
        l.resolve("d", &[("k1", "v1")]).unwrap().requests_per_unit,
        10
    );
    assert_eq!(
        l.resolve("d", &[("k2", "v2")]).unwrap().requests_per_unit,
        20
    );
    // Merging a file into itself duplicates its descriptors.
    let err = format!("{:#}", load_with(&[a, a], true).unwrap_err());
    assert!(err.starts_with("a.yaml: "), "{err}");
    assert!(err.contains("duplicate descriptor k1=v1"), "{err}");
}

#[test]
fn a_domain_without_descriptors_loads_but_not_twice() {
    let empty = ("dup.yaml", "domain: test-domain\ndescriptors:\n");
    let l = load(&[empty]).unwrap();
    assert!(l.has_domain("test-domain"));
    refused(
        &[("basic.yaml", BASIC), empty],
        "dup.yaml",
        &["duplicate domain \"test-domain\"", "basic.yaml"],
    );
}

#[test]
fn a_file_without_a_domain_is_refused() {
    refused(
        &[("empty_domain.yaml", "descriptors:\n")],
        "empty_domain.yaml",
        &["$", "domain"],
    );
    refused(&[("empty.yaml", "")], "empty.yaml", &["domain"]);
    refused(
        &[("blank_domain.yaml", "domain: \"\"\n")],
        "blank_domain.yaml",
        &["$.domain", "must not be empty"],
    );
}

#[test]
fn a_descriptor_needs_a_key() {
    refused(
        &[(
            "empty_key.yaml",
            "domain: d\ndescriptors:\n  - value: value1\n",
        )],
        "empty_key.yaml",
        &["$.descriptors[0]", "key"],
    );
    refused(
        &[(
            "blank_key.yaml",
            "domain: d\ndescriptors:\n  - {key: \"\", value: value1}\n",
        )],
        "blank_key.yaml",
        &["$.descriptors[0].key", "must not be empty"],
    );
}

#[test]
fn duplicate_descriptors_in_a_level_are_refused() {
    refused(
        &[(
            "duplicate_key.yaml",
            "domain: d\ndescriptors:\n  - {key: key1, value: value1}\n  - {key: key1, value: value1}\n",
        )],
        "duplicate_key.yaml",
        &["$.descriptors[1]", "duplicate descriptor key1=value1"],
    );
    // The same key and value at different levels, or different values, are fine.
    load(&[(
        "ok.yaml",
        "domain: d\ndescriptors:\n  - {key: a, value: '1', descriptors: [{key: a, value: '1'}]}\n  - {key: a, value: '2'}\n  - {key: a}\n",
    )])
    .unwrap();
}

#[test]
fn units_must_be_known() {
    refused(
        &[(
            "bad_limit_unit.yaml",
            "domain: d\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: foo, requests_per_unit: 5}\n",
        )],
        "bad_limit_unit.yaml",
        &["$.descriptors[0].rate_limit.unit", "invalid rate limit unit \"foo\""],
    );
    refused(
        &[(
            "unknown_unit.yaml",
            "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: unknown, requests_per_unit: 5}}\n",
        )],
        "unknown_unit.yaml",
        &["invalid rate limit unit \"unknown\""],
    );
    refused(
        &[(
            "no_unit.yaml",
            "domain: d\ndescriptors:\n  - {key: k, rate_limit: {requests_per_unit: 5}}\n",
        )],
        "no_unit.yaml",
        &["$.descriptors[0].rate_limit.unit", "needs a unit"],
    );
}

#[test]
fn unlimited_takes_no_unit() {
    refused(
        &[(
            "unlimited_with_unit.yaml",
            "domain: d\ndescriptors:\n  - key: foo\n    rate_limit:\n      unlimited: true\n      unit: day\n      requests_per_unit: 25\n",
        )],
        "unlimited_with_unit.yaml",
        &["$.descriptors[0].rate_limit.unit", "unlimited rate_limit takes no unit"],
    );
    // requests_per_unit beside unlimited is ignored, as upstream ignores it.
    load(&[(
        "unlimited.yaml",
        "domain: d\ndescriptors:\n  - {key: foo, rate_limit: {unlimited: true, requests_per_unit: 25}}\n",
    )])
    .unwrap();
}

#[test]
fn replaces_must_name_another_limit() {
    refused(
        &[(
            "replaces_self.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: self\n      replaces:\n        - name: self\n      unit: second\n      requests_per_unit: 5\n",
        )],
        "replaces_self.yaml",
        &["$.descriptors[0].rate_limit.replaces[0].name", "cannot replace itself"],
    );
    refused(
        &[(
            "replaces_empty.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: self\n      replaces:\n        - name:\n      unit: second\n      requests_per_unit: 5\n",
        )],
        "replaces_empty.yaml",
        &["$.descriptors[0].rate_limit.replaces[0].name", "must not be empty"],
    );
}

#[test]
fn share_threshold_needs_a_wildcard() {
    refused(
        &[(
            "share.yaml",
            "domain: d\ndescriptors:\n  - {key: k, value: plain, share_threshold: true, rate_limit: {unit: second, requests_per_unit: 1}}\n",
        )],
        "share.yaml",
        &["$.descriptors[0].share_threshold", "wildcard"],
    );
}

#[test]
fn bad_yaml_is_refused() {
    refused(
        &[("bad_yaml.yaml", "'''\n")],
        "bad_yaml.yaml",
        &["not YAML"],
    );
}

#[test]
fn unknown_keys_are_refused_wherever_they_are() {
    refused(
        &[(
            "misspelled_key.yaml",
            "domain: d\ndescriptors:\n  - key: key1\n    ratelimit: {unit: day, requests_per_unit: 5}\n",
        )],
        "misspelled_key.yaml",
        &["$.descriptors[0]", "unknown field `ratelimit`"],
    );
    refused(
        &[(
            "misspelled_key2.yaml",
            "domain: d\ndescriptors:\n  - key: key1\n    rate_limit: {unit: day, requestsperunit: 5}\n",
        )],
        "misspelled_key2.yaml",
        &["$.descriptors[0].rate_limit", "unknown field `requestsperunit`"],
    );
}

#[test]
fn keys_must_be_strings_and_lists_must_hold_mappings() {
    refused(
        &[(
            "non_string_key.yaml",
            "0.25: test-domain\ndescriptors:\n  - {key: key1, value: value1}\n",
        )],
        "non_string_key.yaml",
        &["$: a key must be a string, not 0.25"],
    );
    refused(
        &[(
            "non_map_list.yaml",
            "domain: d\ndescriptors:\n  - a\n  - b\n",
        )],
        "non_map_list.yaml",
        &["$.descriptors[0]", "invalid type: string \"a\""],
    );
}

#[test]
fn values_are_read_as_envoyproxy_ratelimit_reads_them() {
    // Numbers and booleans in string fields are their text; YAML 1.1 booleans are booleans;
    // merge keys apply; metadata keeps any keys and values; keys upstream accepts anywhere but
    // reads elsewhere are ignored, with a warning. A key upstream never accepts is refused,
    // even one that only holds an anchor.
    refused(
        &[(
            "anchors.yaml",
            "domain: d\ndefaults: &limit {unit: minute}\n",
        )],
        "anchors.yaml",
        &["unknown field `defaults`"],
    );
    let text = r#"
domain: d
descriptors:
  - key: status
    value: 500
    rate_limit: &limit {unit: minute, requests_per_unit: 7}
  - key: flag
    value: true
    shadow_mode: yes
    rate_limit:
      <<: *limit
      requests_per_unit: 8
  - key: meta
    unit: minute
    metadata: {1: one, list: [1.5, null]}
"#;
    let l = load(&[("anchors.yaml", text)]).unwrap();
    assert_eq!(
        l.resolve("d", &[("status", "500")])
            .unwrap()
            .requests_per_unit,
        7
    );
    let flag = l.resolve("d", &[("flag", "true")]).unwrap();
    assert!(flag.shadow_mode);
    assert_eq!((flag.requests_per_unit, flag.unit), (8, Unit::Minute));
    assert_eq!(l.warnings().len(), 1, "{:?}", l.warnings());
    assert!(l.warnings()[0].starts_with("anchors.yaml: $.descriptors[2].unit: ignored"));
    let cfg = parse_envoy(text).unwrap();
    let meta = cfg.descriptors[2].metadata.as_ref().unwrap();
    assert_eq!(meta["1"], "one");
    assert_eq!(meta["list"], serde_json::json!([1.5, null]));
}

#[test]
fn load_dir_reads_yaml_yml_and_json_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yml"), "domain: b\n").unwrap();
    std::fs::write(dir.path().join("a.json"), r#"{"domain": "a"}"#).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a config").unwrap();
    let l = Limits::load_dir(dir.path()).unwrap();
    assert_eq!(l.domains().collect::<Vec<_>>(), ["a", "b"]);
    std::fs::write(dir.path().join("c.yaml"), "domain: a\n").unwrap();
    let err = format!("{:#}", Limits::load_dir(dir.path()).unwrap_err());
    assert!(err.contains("c.yaml: duplicate domain \"a\""), "{err}");
    assert!(err.contains("a.json"), "{err}");
    assert!(Limits::load_dir_with(dir.path(), true).is_ok());
}

#[test]
fn integer_values_keep_their_digits() {
    let l = load(&[(
        "digits.yaml",
        "domain: d\ndescriptors:\n  - {key: zip, value: 0123, rate_limit: {unit: minute, requests_per_unit: 1}}\n  - {key: 404, value: 7, rate_limit: {unit: minute, requests_per_unit: 2}}\n",
    )])
    .unwrap();
    assert_eq!(
        l.resolve("d", &[("zip", "0123")])
            .unwrap()
            .requests_per_unit,
        1
    );
    assert_eq!(
        l.resolve("d", &[("404", "7")]).unwrap().requests_per_unit,
        2
    );
}
