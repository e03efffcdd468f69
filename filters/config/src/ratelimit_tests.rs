//! envoyproxy/ratelimit's matching, keys and refusals, as facts about `RateLimitConfig`.

use super::*;
use crate::parse;

fn config(json: &str) -> RateLimitConfig {
    parse(json.as_bytes()).unwrap()
}

fn problems(json: &str, dialect: Dialect) -> Vec<(String, String)> {
    let cfg: RateLimitConfig = serde_json::from_str(json).unwrap();
    let mut errors = Vec::new();
    cfg.check("$", dialect, &mut errors);
    errors.into_iter().map(|e| (e.path, e.message)).collect()
}

#[test]
fn wildcards_match_any_run_of_characters_anywhere() {
    // Trailing: a prefix.
    assert!(wildcard_matches("foo*", "foo1"));
    assert!(wildcard_matches("foo*", "foo"));
    assert!(!wildcard_matches("foo*", "bar"));
    assert!(!wildcard_matches("foo*", "xfoo"));
    // Middle: prefix and suffix, which may not overlap; the run may be empty.
    assert!(wildcard_matches("bar*b", "barab"));
    assert!(wildcard_matches("bar*b", "bar123b"));
    assert!(wildcard_matches("bar*b", "barb"));
    assert!(
        !wildcard_matches("bar*b", "bar"),
        "the suffix needs its own b"
    );
    assert!(!wildcard_matches("bar*b", "bara"));
    assert!(!wildcard_matches("bar*b", "xbarb"));
    // Several: the segments in order.
    assert!(wildcard_matches("foo*bar*baz", "foo123bar456baz"));
    assert!(wildcard_matches("foo*bar*baz", "foobarbaz"));
    assert!(!wildcard_matches("foo*bar*baz", "foo123baz"));
    assert!(!wildcard_matches("foo*bar*baz", "bar456baz"));
    assert!(
        !wildcard_matches("a*b*c*d", "acbd"),
        "segments must come in order"
    );
    // A lone star matches everything, the empty value too; no star is equality.
    assert!(wildcard_matches("*", ""));
    assert!(wildcard_matches("/api/*/action", "/api/123/action"));
    assert!(!wildcard_matches("/api/*/action", "/api/123/other"));
    assert!(wildcard_matches("exact", "exact"));
    assert!(!wildcard_matches("exact", "exact1"));
}

const ORDER: &str = r#"{"domain":"d","descriptors":[
    {"key":"k","rate_limit":{"unit":"minute","requests_per_unit":1}},
    {"key":"k","value":"ab*","rate_limit":{"unit":"minute","requests_per_unit":2}},
    {"key":"k","value":"a*","rate_limit":{"unit":"minute","requests_per_unit":3}},
    {"key":"k","value":"abc","rate_limit":{"unit":"minute","requests_per_unit":4}},
    {"key":"k","value":"whitelisted"},
    {"key":"other","value":"x*","share_threshold":true,
     "rate_limit":{"unit":"hour","requests_per_unit":5}}]}"#;

#[test]
fn exact_value_beats_wildcard_beats_key_only() {
    let cfg = config(ORDER);
    let rpu = |v: &str| cfg.resolve(&[("k", v)]).map(|r| r.limit.requests_per_unit);
    assert_eq!(rpu("abc"), Some(4), "exact, though two wildcards match too");
    assert_eq!(
        rpu("abd"),
        Some(2),
        "the first matching wildcard in file order"
    );
    assert_eq!(rpu("axe"), Some(3));
    assert_eq!(
        rpu("zzz"),
        Some(1),
        "no value matches: the key-only default"
    );
    assert_eq!(
        rpu("whitelisted"),
        None,
        "an exact node without a limit is not limited"
    );
    assert_eq!(
        lookup(&cfg.descriptors, "k", "abd").unwrap().1,
        Match::Wildcard
    );
    assert_eq!(
        lookup(&cfg.descriptors, "k", "abc").unwrap().1,
        Match::Exact
    );
    assert_eq!(
        lookup(&cfg.descriptors, "k", "q").unwrap().1,
        Match::Default
    );
    assert!(lookup(&cfg.descriptors, "nokey", "q").is_none());
}

#[test]
fn counters_are_per_value_unless_the_wildcard_shares_its_threshold() {
    let cfg = config(ORDER);
    assert_eq!(cfg.resolve(&[("k", "abd")]).unwrap().key, "d|k=abd");
    assert_eq!(cfg.resolve(&[("k", "zzz")]).unwrap().key, "d|k=zzz");
    let a = cfg.resolve(&[("other", "x1")]).unwrap();
    let b = cfg.resolve(&[("other", "x2")]).unwrap();
    assert_eq!(a.key, "d|other=x*");
    assert_eq!(a.key, b.key, "share_threshold: one counter for every match");
}

#[test]
fn a_descriptor_must_reach_a_limited_node_with_its_last_entry() {
    let cfg = config(
        r#"{"domain":"d","descriptors":[
            {"key":"a","value":"1","rate_limit":{"unit":"second","requests_per_unit":1},
             "descriptors":[{"key":"b","rate_limit":{"unit":"second","requests_per_unit":2}}]},
            {"key":"c","rate_limit":{"unit":"second","requests_per_unit":3}}]}"#,
    );
    assert_eq!(
        cfg.resolve(&[("a", "1")]).unwrap().limit.requests_per_unit,
        1
    );
    assert_eq!(
        cfg.resolve(&[("a", "1"), ("b", "x")]).unwrap().key,
        "d|a=1|b=x"
    );
    assert!(
        cfg.resolve(&[("c", "1"), ("b", "x")]).is_none(),
        "more entries than levels"
    );
    assert!(
        cfg.resolve(&[("a", "2"), ("b", "x")]).is_none(),
        "left the tree"
    );
    assert!(cfg.resolve(&[]).is_none());
    // An empty value is no value: it never matches exactly, it falls to the key-only node.
    assert_eq!(cfg.resolve(&[("c", "")]).unwrap().key, "d|c=");
}

#[test]
fn metric_keys_follow_detailed_metric_value_to_metric_and_share_threshold() {
    let cfg = config(
        r#"{"domain":"m","descriptors":[
          {"key":"route","value_to_metric":true,"descriptors":[
            {"key":"method","value_to_metric":true,"descriptors":[
              {"key":"subject","rate_limit":{"unit":"minute","requests_per_unit":60}}]}]},
          {"key":"k1","descriptors":[{"key":"k2","value_to_metric":true,"descriptors":[
              {"key":"k3","rate_limit":{"unit":"minute","requests_per_unit":1}}]}]},
          {"key":"plain","descriptors":[{"key":"leaf","rate_limit":{"unit":"minute","requests_per_unit":1}}]},
          {"key":"detail","detailed_metric":true,"rate_limit":{"unit":"minute","requests_per_unit":1}},
          {"key":"detail","value":"known","rate_limit":{"unit":"minute","requests_per_unit":1}},
          {"key":"wild","value":"foo*","rate_limit":{"unit":"minute","requests_per_unit":1}},
          {"key":"wildv","value":"foo*","value_to_metric":true,"rate_limit":{"unit":"minute","requests_per_unit":1}},
          {"key":"files","value":"files/*","share_threshold":true,"value_to_metric":true,
           "rate_limit":{"unit":"minute","requests_per_unit":1}},
          {"key":"svc","value":"svc/*","share_threshold":true,"descriptors":[
            {"key":"endpoint","detailed_metric":true,"rate_limit":{"unit":"minute","requests_per_unit":1}}]},
          {"key":"nest","detailed_metric":true,"descriptors":[
            {"key":"inner","detailed_metric":true,"rate_limit":{"unit":"minute","requests_per_unit":1}}]}]}"#,
    );
    let metric = |entries: &[(&str, &str)]| cfg.resolve(entries).unwrap().metric_key;
    assert_eq!(
        metric(&[("route", "draw"), ("method", "GET"), ("subject", "123")]),
        "m.route_draw.method_GET.subject"
    );
    assert_eq!(
        metric(&[("k1", "X"), ("k2", "Y"), ("k3", "Z")]),
        "m.k1.k2_Y.k3"
    );
    assert_eq!(metric(&[("plain", "X"), ("leaf", "Y")]), "m.plain.leaf");
    assert_eq!(metric(&[("detail", "anything")]), "m.detail_anything");
    assert_eq!(metric(&[("detail", "known")]), "m.detail_known");
    assert_eq!(
        metric(&[("wild", "foo1")]),
        "m.wild_foo*",
        "the pattern, not the value"
    );
    assert_eq!(metric(&[("wildv", "foo1")]), "m.wildv_foo1");
    assert_eq!(
        metric(&[("files", "files/a.pdf")]),
        "m.files_files/*",
        "share_threshold wins over value_to_metric"
    );
    assert_eq!(
        metric(&[("svc", "svc/user"), ("endpoint", "get")]),
        "m.svc_svc/*.endpoint_get",
        "share_threshold wins over detailed_metric"
    );
    assert_eq!(metric(&[("nest", "a"), ("inner", "b")]), "m.nest_a.inner_b");
}

#[test]
fn replaces_drops_the_named_limits_of_the_same_request() {
    let named = |name: &str, replaces: &[&str]| RateLimit {
        unit: Some(Unit::Minute),
        requests_per_unit: 1,
        name: Some(name.to_string()).filter(|n| !n.is_empty()),
        replaces: replaces
            .iter()
            .map(|n| Replaces {
                name: (*n).to_string(),
            })
            .collect(),
        ..Default::default()
    };
    let specific = named("specific", &[]);
    let broad = named("", &["specific", "absent"]);
    let unrelated = named("other", &[]);
    assert_eq!(
        replaced(&[Some(&specific), None, Some(&broad), Some(&unrelated)]),
        [true, false, false, false]
    );
    assert_eq!(
        replaced(&[Some(&specific), Some(&unrelated)]),
        [false, false]
    );
    // An unlimited limit replaces too.
    let unlimited = RateLimit {
        unlimited: true,
        ..named("", &["other"])
    };
    assert_eq!(
        replaced(&[Some(&unrelated), Some(&unlimited)]),
        [true, false]
    );
}

#[test]
fn units_have_envoyproxy_ratelimit_durations_and_any_case() {
    let secs: Vec<u64> = Unit::ALL.iter().map(|u| u.seconds()).collect();
    assert_eq!(secs, [1, 60, 3_600, 86_400, 604_800, 2_592_000, 31_536_000]);
    assert_eq!(Unit::parse("WEEK"), Some(Unit::Week));
    assert_eq!(Unit::parse("Month"), Some(Unit::Month));
    assert_eq!(Unit::parse("unknown"), None);
    assert_eq!(Unit::parse(""), None);
    let cfg = config(
        r#"{"domain":"d","descriptors":[{"key":"a","rate_limit":{"unit":"YEAR","requests_per_unit":1}}]}"#,
    );
    assert_eq!(
        serde_json::to_string(&cfg.descriptors[0].rate_limit).unwrap(),
        r#"{"unit":"year","requests_per_unit":1}"#,
        "written lower case, new fields only when set"
    );
    let err = parse::<RateLimitConfig>(
        br#"{"domain":"d","descriptors":[{"key":"a","rate_limit":{"unit":"fortnight","requests_per_unit":1}}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.0[0].path, "$.descriptors[0].rate_limit.unit");
    assert!(
        err.0[0]
            .message
            .contains("invalid rate limit unit \"fortnight\""),
        "{err}"
    );
}

#[test]
fn both_dialects_refuse_what_envoyproxy_ratelimit_refuses_in_a_tree() {
    let json = r#"{"domain":"d","descriptors":[
        {"key":"","value":"v"},
        {"key":"a","value":"1"},
        {"key":"a","value":"1"},
        {"key":"b","rate_limit":{"requests_per_unit":5}},
        {"key":"c","rate_limit":{"unit":"second","requests_per_unit":1,"name":"self","replaces":[{"name":"self"}]}},
        {"key":"e","rate_limit":{"unit":"second","requests_per_unit":1,"replaces":[{}]}},
        {"key":"f","value":"plain","share_threshold":true},
        {"key":"g","value":"","descriptors":[{"key":"h"},{"key":"h","value":""}]}]}"#;
    for dialect in [Dialect::Envoy, Dialect::Nexus] {
        let found = problems(json, dialect);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.descriptors[0].key",
                "$.descriptors[2]",
                "$.descriptors[3].rate_limit.unit",
                "$.descriptors[4].rate_limit.replaces[0].name",
                "$.descriptors[5].rate_limit.replaces[0].name",
                "$.descriptors[6].share_threshold",
                "$.descriptors[7].descriptors[1]",
            ],
            "{dialect:?}: {found:?}"
        );
        assert!(
            found[1].1.starts_with("duplicate descriptor a=1"),
            "{found:?}"
        );
        assert!(found[1].1.contains("$.descriptors[1]"), "{found:?}");
        assert!(found[2].1.contains("needs a unit"), "{found:?}");
        assert!(found[3].1.contains("cannot replace itself"), "{found:?}");
        assert!(found[4].1.contains("must not be empty"), "{found:?}");
        assert!(found[5].1.contains("wildcard"), "{found:?}");
        assert!(
            found[6].1.starts_with("duplicate descriptor h "),
            "{found:?}"
        );
    }
}

#[test]
fn the_dialects_differ_on_unlimited_units_and_zero_limits() {
    let json = r#"{"domain":"d","descriptors":[
        {"key":"a","rate_limit":{"unlimited":true,"unit":"day","requests_per_unit":25}},
        {"key":"b","rate_limit":{"unit":"minute","requests_per_unit":0}},
        {"key":"c","rate_limit":{"unlimited":true}}]}"#;
    assert_eq!(
        problems(json, Dialect::Envoy),
        [(
            "$.descriptors[0].rate_limit.unit".to_string(),
            "an unlimited rate_limit takes no unit".to_string()
        )],
        "envoyproxy/ratelimit: a unit beside unlimited is refused, a limit of 0 bans"
    );
    let nexus: Vec<String> = problems(json, Dialect::Nexus)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        nexus,
        [
            "$.descriptors[0].rate_limit",
            "$.descriptors[1].rate_limit.requests_per_unit"
        ]
    );
}

#[test]
fn every_field_of_the_format_is_read_and_written_back() {
    let json = r#"{"domain":"rl","descriptors":[
        {"key":"category","value":"account","quota_mode":true,"detailed_metric":true,
         "value_to_metric":true,"metadata":{"service_with_quota":{"name":"s1"},"n":[1,2]},
         "rate_limit":{"name":"acct","replaces":[{"name":"x"}],"unit":"week","requests_per_unit":4}},
        {"key":"path","value":"/api/*","share_threshold":true,"shadow_mode":true,
         "rate_limit":{"unit":"month","requests_per_unit":0}}]}"#;
    let cfg: RateLimitConfig = serde_json::from_str(json).unwrap();
    let mut errors = Vec::new();
    cfg.check("$", Dialect::Envoy, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let d = &cfg.descriptors[0];
    assert!(d.quota_mode && d.detailed_metric && d.value_to_metric);
    assert_eq!(d.rate_limit.as_ref().unwrap().limit_name(), Some("acct"));
    assert_eq!(
        d.metadata.as_ref().unwrap()["service_with_quota"]["name"],
        "s1"
    );
    let back: RateLimitConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let r = cfg.resolve(&[("category", "account")]).unwrap();
    assert!(r.quota_mode && !r.shadow_mode);
    let r = cfg.resolve(&[("path", "/api/v1")]).unwrap();
    assert!(r.shadow_mode);
    assert_eq!(r.key, "rl|path=/api/*");
}

#[test]
fn matching_never_backtracks_to_a_less_specific_node() {
    // The exact node wins its level even when only the key-only node could match deeper.
    let cfg = config(
        r#"{"domain":"d","descriptors":[
            {"key":"k","value":"v1","rate_limit":{"unit":"second","requests_per_unit":1}},
            {"key":"k","descriptors":[{"key":"sub","rate_limit":{"unit":"second","requests_per_unit":2}}]},
            {"key":"w","value":"a*"},
            {"key":"w","descriptors":[{"key":"sub","rate_limit":{"unit":"second","requests_per_unit":3}}]}]}"#,
    );
    assert!(cfg.resolve(&[("k", "v1"), ("sub", "x")]).is_none());
    assert_eq!(
        cfg.resolve(&[("k", "v2"), ("sub", "x")])
            .unwrap()
            .limit
            .requests_per_unit,
        2
    );
    assert!(
        cfg.resolve(&[("w", "ab"), ("sub", "x")]).is_none(),
        "nor from a wildcard"
    );
    assert_eq!(
        cfg.resolve(&[("w", "b"), ("sub", "x")])
            .unwrap()
            .limit
            .requests_per_unit,
        3
    );
}
