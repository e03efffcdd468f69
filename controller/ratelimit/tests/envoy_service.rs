//! ShouldRateLimit answers as envoyproxy/ratelimit answers for its configuration features:
//! every scenario runs on memory and on Redis (`every_backend!`), at a fixed instant (fixed
//! window), and one runs over real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use nexus_proto::ratelimit::rate_limit_descriptor::RateLimitOverride;
use nexus_proto::ratelimit::rate_limit_response::rate_limit::Unit as ProtoUnit;
use nexus_proto::ratelimit::rate_limit_response::{Code, DescriptorStatus};
use nexus_proto::ratelimit::{RateLimitRequest, RateLimitResponse};
use nexus_ratelimit_service::storage::Storage;
use nexus_ratelimit_service::{Algorithm, Limits, RateLimiter, UnknownDomain};

const SEC: u64 = 1_000_000;
/// A fixed instant, 10 s into a minute window.
const NOW: u64 = 1_800_000_010 * SEC;

fn limiter<S: Storage>(storage: S, yaml: &str) -> Arc<RateLimiter<S>> {
    let limits = Limits::from_files(&[("test.yaml".to_string(), yaml.to_string())], false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    Arc::new(RateLimiter::new(
        limits,
        storage,
        Algorithm::FixedWindow,
        UnknownDomain::Allow,
    ))
}

use support::descriptor;

fn request(descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    support::request("d", descriptors)
}

async fn call<S: Storage>(
    rl: &RateLimiter<S>,
    descriptors: &[&[(&str, &str)]],
) -> RateLimitResponse {
    rl.decide(&request(descriptors), NOW).await.unwrap()
}

/// (code, requests_per_unit if a limit is reported, limit_remaining) of every status.
fn summary(resp: &RateLimitResponse) -> Vec<(Code, Option<u32>, u32)> {
    resp.statuses
        .iter()
        .map(|s| {
            (
                Code::try_from(s.code).unwrap(),
                s.current_limit.as_ref().map(|l| l.requests_per_unit),
                s.limit_remaining,
            )
        })
        .collect()
}

fn overall(resp: &RateLimitResponse) -> Code {
    Code::try_from(resp.overall_code).unwrap()
}

fn reset_s(s: &DescriptorStatus) -> i64 {
    let d = s.duration_until_reset.as_ref().unwrap();
    assert_eq!(d.nanos, 0, "fixed windows end on whole seconds");
    d.seconds
}

every_backend!(
    statuses_carry_the_limit_name_unit_remaining_and_reset,
    every_unit_has_its_window,
    exact_values_beat_wildcards_beat_defaults,
    wildcard_values_count_apart_unless_they_share_the_threshold,
    replaces_drops_the_named_limit_and_leaves_its_counter_alone,
    shadow_mode_counts_over_limit_but_answers_ok,
    unlimited_is_ok_with_everything_remaining,
    quota_mode_rejects_only_when_every_quota_descriptor_is_over,
    a_limit_of_zero_rejects_everything,
    limit_overrides_apply_outside_the_tree_and_never_shadow,
    metric_keys_count_hits_per_descriptor,
    answers_over_grpc_like_envoyproxy_ratelimit,
    dynamic_metadata_carries_the_metadata_of_passed_descriptors,
);

async fn statuses_carry_the_limit_name_unit_remaining_and_reset<S: Storage>(s: S) {
    let rl = limiter(
        s,
        "domain: d\ndescriptors:\n  - {key: k, rate_limit: {name: per_k, unit: minute, requests_per_unit: 2}}\n",
    );
    let first = call(&rl, &[&[("k", "a")]]).await;
    assert_eq!(overall(&first), Code::Ok);
    let status = &first.statuses[0];
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(limit.name, "per_k");
    assert_eq!(limit.unit, ProtoUnit::Minute as i32);
    assert_eq!(status.limit_remaining, 1);
    assert_eq!(reset_s(status), 50, "10 s into the minute");
    call(&rl, &[&[("k", "a")]]).await;
    let over = call(&rl, &[&[("k", "a")]]).await;
    assert_eq!(overall(&over), Code::OverLimit);
    assert_eq!(summary(&over), [(Code::OverLimit, Some(2), 0)]);
    assert_eq!(
        over.statuses[0].current_limit.as_ref().unwrap().name,
        "per_k"
    );
    assert_eq!(reset_s(&over.statuses[0]), 50);
}

async fn every_unit_has_its_window<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - {key: u, value: second, rate_limit: {unit: second, requests_per_unit: 1}}
  - {key: u, value: minute, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: u, value: hour, rate_limit: {unit: hour, requests_per_unit: 1}}
  - {key: u, value: day, rate_limit: {unit: day, requests_per_unit: 1}}
  - {key: u, value: week, rate_limit: {unit: week, requests_per_unit: 1}}
  - {key: u, value: month, rate_limit: {unit: month, requests_per_unit: 1}}
  - {key: u, value: year, rate_limit: {unit: year, requests_per_unit: 1}}
"#,
    );
    let units = [
        ("second", ProtoUnit::Second, 1),
        ("minute", ProtoUnit::Minute, 60),
        ("hour", ProtoUnit::Hour, 3_600),
        ("day", ProtoUnit::Day, 86_400),
        ("week", ProtoUnit::Week, 7 * 86_400),
        ("month", ProtoUnit::Month, 30 * 86_400),
        ("year", ProtoUnit::Year, 365 * 86_400),
    ];
    for (name, unit, window) in units {
        let resp = call(&rl, &[&[("u", name)]]).await;
        let status = &resp.statuses[0];
        assert_eq!(
            status.current_limit.as_ref().unwrap().unit,
            unit as i32,
            "{name}"
        );
        // Windows are aligned to the epoch, as envoyproxy/ratelimit aligns them.
        let now_s = NOW / SEC;
        assert_eq!(reset_s(status) as u64, window - now_s % window, "{name}");
    }
    // The week's reset, worked out by hand: 1_800_000_010 s is 115_210 s into a week.
    let resp = call(&rl, &[&[("u", "week")]]).await;
    assert_eq!(reset_s(&resp.statuses[0]), 489_590);
    assert_eq!(overall(&resp), Code::OverLimit);
}

async fn exact_values_beat_wildcards_beat_defaults<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - {key: k, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: k, value: "ab*", rate_limit: {unit: minute, requests_per_unit: 2}}
  - {key: k, value: "a*", rate_limit: {unit: minute, requests_per_unit: 3}}
  - {key: k, value: abc, rate_limit: {unit: minute, requests_per_unit: 4}}
  - {key: k, value: free}
"#,
    );
    let resp = call(
        &rl,
        &[
            &[("k", "abc")],
            &[("k", "abd")],
            &[("k", "axe")],
            &[("k", "zz")],
            &[("k", "free")],
        ],
    )
    .await;
    assert_eq!(
        summary(&resp),
        [
            (Code::Ok, Some(4), 3),
            (Code::Ok, Some(2), 1),
            (Code::Ok, Some(3), 2),
            (Code::Ok, Some(1), 0),
            (Code::Ok, None, 0),
        ]
    );
}

async fn wildcard_values_count_apart_unless_they_share_the_threshold<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - {key: own, value: "files/*", rate_limit: {unit: hour, requests_per_unit: 1}}
  - {key: shared, value: "files/*", share_threshold: true, rate_limit: {unit: hour, requests_per_unit: 2}}
"#,
    );
    let resp = call(&rl, &[&[("own", "files/a")], &[("own", "files/b")]]).await;
    assert_eq!(overall(&resp), Code::Ok, "one counter per value");
    let resp = call(&rl, &[&[("shared", "files/a")], &[("shared", "files/b")]]).await;
    assert_eq!(
        summary(&resp),
        [(Code::Ok, Some(2), 1), (Code::Ok, Some(2), 0)],
        "one counter for every value"
    );
    let resp = call(&rl, &[&[("shared", "files/c")]]).await;
    assert_eq!(overall(&resp), Code::OverLimit);
}

async fn replaces_drops_the_named_limit_and_leaves_its_counter_alone<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - key: user
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 1}
  - key: plan
    value: premium
    rate_limit:
      replaces: [{name: per_user}, {name: nothing_by_that_name}]
      unit: minute
      requests_per_unit: 10
"#,
    );
    for remaining in [9, 8, 7] {
        let resp = call(&rl, &[&[("user", "bob")], &[("plan", "premium")]]).await;
        assert_eq!(overall(&resp), Code::Ok);
        assert_eq!(
            summary(&resp),
            [(Code::Ok, None, 0), (Code::Ok, Some(10), remaining)]
        );
    }
    // Without the replacing limit, bob's own limit applies, untouched so far.
    let resp = call(&rl, &[&[("user", "bob")]]).await;
    assert_eq!(summary(&resp), [(Code::Ok, Some(1), 0)]);
    let resp = call(&rl, &[&[("user", "bob")]]).await;
    assert_eq!(overall(&resp), Code::OverLimit);
}

async fn shadow_mode_counts_over_limit_but_answers_ok<S: Storage>(s: S) {
    let rl = limiter(
        s,
        "domain: d\ndescriptors:\n  - {key: k, shadow_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}\n",
    );
    call(&rl, &[&[("k", "a")]]).await;
    let resp = call(&rl, &[&[("k", "a")]]).await;
    assert_eq!(overall(&resp), Code::Ok);
    assert_eq!(summary(&resp), [(Code::Ok, Some(1), 0)]);
    let counts = rl.metrics.descriptor("d.k").unwrap();
    assert_eq!(
        (counts.total_hits, counts.over_limit, counts.shadow_mode),
        (2, 1, 1)
    );
    assert_eq!(
        rl.metrics
            .descriptors_shadow_over_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

async fn unlimited_is_ok_with_everything_remaining<S: Storage>(s: S) {
    let rl = limiter(
        s,
        "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unlimited: true}}\n  - {key: k, value: capped, rate_limit: {unit: minute, requests_per_unit: 1}}\n",
    );
    for _ in 0..3 {
        let resp = call(&rl, &[&[("k", "a")], &[("k", "capped")]]).await;
        let unlimited = &resp.statuses[0];
        assert_eq!(unlimited.code, Code::Ok as i32);
        assert_eq!(unlimited.limit_remaining, u32::MAX);
        assert!(unlimited.current_limit.is_none());
        assert!(unlimited.duration_until_reset.is_none());
    }
    assert!(rl.metrics.descriptor("d.k").is_none(), "never counted");
}

async fn quota_mode_rejects_only_when_every_quota_descriptor_is_over<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - {key: q, value: a, quota_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: q, value: b, quota_mode: true, rate_limit: {unit: minute, requests_per_unit: 5}}
  - {key: plain, rate_limit: {unit: minute, requests_per_unit: 5}}
"#,
    );
    call(&rl, &[&[("q", "a")]]).await;
    let resp = call(&rl, &[&[("q", "a")], &[("q", "b")]]).await;
    assert_eq!(
        summary(&resp),
        [(Code::OverLimit, Some(1), 0), (Code::Ok, Some(5), 4)]
    );
    assert_eq!(overall(&resp), Code::Ok, "quota b still has room");
    let resp = call(&rl, &[&[("q", "a")], &[("plain", "x")]]).await;
    assert_eq!(
        overall(&resp),
        Code::OverLimit,
        "every quota descriptor is over"
    );
    let resp = call(&rl, &[&[("q", "a")]]).await;
    assert_eq!(overall(&resp), Code::OverLimit);
}

async fn a_limit_of_zero_rejects_everything<S: Storage>(s: S) {
    let rl = limiter(
        s,
        "domain: d\ndescriptors:\n  - {key: ip, value: 50.0.0.5, rate_limit: {name: banned, unit: second, requests_per_unit: 0}}\n",
    );
    let resp = call(&rl, &[&[("ip", "50.0.0.5")]]).await;
    assert_eq!(overall(&resp), Code::OverLimit);
    assert_eq!(summary(&resp), [(Code::OverLimit, Some(0), 0)]);
}

async fn limit_overrides_apply_outside_the_tree_and_never_shadow<S: Storage>(s: S) {
    let rl = limiter(
        s,
        "domain: d\ndescriptors:\n  - {key: k, shadow_mode: true, rate_limit: {name: n, unit: minute, requests_per_unit: 100}}\n",
    );
    let with_override = |entries: &[(&str, &str)], unit: ProtoUnit| {
        let mut d = descriptor(entries);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: unit as i32,
        });
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![d],
            hits_addend: 0,
        }
    };
    for entries in [&[("k", "a")][..], &[("not", "configured")][..]] {
        let req = with_override(entries, ProtoUnit::Hour);
        let first = rl.decide(&req, NOW).await.unwrap();
        let limit = first.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!((limit.name.as_str(), limit.requests_per_unit), ("", 1));
        assert_eq!(limit.unit, ProtoUnit::Hour as i32);
        let second = rl.decide(&req, NOW).await.unwrap();
        assert_eq!(overall(&second), Code::OverLimit, "{entries:?}");
    }
    let status = rl
        .decide(&with_override(&[("k", "a")], ProtoUnit::Unknown), NOW)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

async fn metric_keys_count_hits_per_descriptor<S: Storage>(s: S) {
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - {key: detailed, detailed_metric: true, rate_limit: {unit: minute, requests_per_unit: 1}}
  - key: route
    value_to_metric: true
    descriptors:
      - {key: user, rate_limit: {unit: minute, requests_per_unit: 5}}
"#,
    );
    for _ in 0..2 {
        call(
            &rl,
            &[&[("detailed", "v1")], &[("route", "api"), ("user", "u1")]],
        )
        .await;
    }
    let d = rl.metrics.descriptor("d.detailed_v1").unwrap();
    assert_eq!((d.total_hits, d.within_limit, d.over_limit), (2, 1, 1));
    let r = rl.metrics.descriptor("d.route_api.user").unwrap();
    assert_eq!((r.total_hits, r.within_limit), (2, 2));
    let text = rl.metrics.render();
    assert!(
        text.contains(
            "nexus_ratelimit_descriptor_hits_total{key=\"d.detailed_v1\",outcome=\"over_limit\"} 1"
        ),
        "{text}"
    );
}

async fn answers_over_grpc_like_envoyproxy_ratelimit<S: Storage>(s: S) {
    // Real time here: long windows, so no window ends between two calls.
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - key: user
    rate_limit: {name: per_user, unit: year, requests_per_unit: 2}
  - key: plan
    value: premium
    rate_limit: {replaces: [{name: per_user}], unit: week, requests_per_unit: 3}
  - key: internal
    rate_limit: {unlimited: true}
"#,
    );
    let mut client = support::grpc_client(rl.clone()).await;
    let ask = |descriptors: &[&[(&str, &str)]]| RateLimitRequest {
        domain: "d".into(),
        descriptors: descriptors.iter().map(|e| descriptor(e)).collect(),
        hits_addend: 0,
    };
    let resp = client
        .should_rate_limit(ask(&[
            &[("user", "ann")],
            &[("plan", "premium")],
            &[("internal", "cron")],
            &[("unknown", "x")],
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall(&resp), Code::Ok);
    assert_eq!(
        summary(&resp),
        [
            (Code::Ok, None, 0),
            (Code::Ok, Some(3), 2),
            (Code::Ok, None, u32::MAX),
            (Code::Ok, None, 0),
        ]
    );
    let premium = &resp.statuses[1];
    assert_eq!(
        premium.current_limit.as_ref().unwrap().unit,
        ProtoUnit::Week as i32
    );
    // On the real clock the reset is not a whole number of seconds.
    let reset = premium.duration_until_reset.as_ref().unwrap();
    assert!((0..7 * 86_400).contains(&reset.seconds), "{reset:?}");
    assert!(reset.seconds > 0 || reset.nanos > 0, "{reset:?}");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = client
            .should_rate_limit(ask(&[&[("user", "ann")]]))
            .await
            .unwrap()
            .into_inner();
        codes.push(overall(&resp));
        let limit = resp.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.unit),
            ("per_user", ProtoUnit::Year as i32)
        );
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);
}

async fn dynamic_metadata_carries_the_metadata_of_passed_descriptors<S: Storage>(s: S) {
    use prost_types::value::Kind;
    let rl = limiter(
        s,
        r#"
domain: d
descriptors:
  - key: service
    value: s1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
    metadata: {quota: {name: s1, tier: gold}, first: yes-s1}
  - key: service
    value: s2
    rate_limit: {unit: minute, requests_per_unit: 5}
    metadata: {quota: {region: eu, name: s2}, first: s2}
  - key: service
    value: banned
    rate_limit: {unit: minute, requests_per_unit: 0}
    metadata: {banned: true}
  - key: service
    value: free
    rate_limit: {unlimited: true}
    metadata: {free: true}
"#,
    );
    let req = request(&[
        &[("service", "s1")],
        &[("service", "s2")],
        &[("service", "banned")],
        &[("service", "free")],
    ]);
    let off = rl.decide(&req, NOW).await.unwrap();
    assert!(off.dynamic_metadata.is_none(), "off unless asked for");
    rl.set_response_dynamic_metadata(true);
    let resp = rl.decide(&req, NOW).await.unwrap();
    let meta = resp.dynamic_metadata.unwrap();
    let json = |v: &prost_types::Value| -> serde_json::Value {
        fn go(v: &prost_types::Value) -> serde_json::Value {
            match v.kind.as_ref().unwrap() {
                Kind::NullValue(_) => serde_json::Value::Null,
                Kind::BoolValue(b) => (*b).into(),
                Kind::NumberValue(n) => (*n).into(),
                Kind::StringValue(s) => s.clone().into(),
                Kind::ListValue(l) => l.values.iter().map(go).collect(),
                Kind::StructValue(s) => s
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), go(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            }
        }
        go(v)
    };
    let all = json(&prost_types::Value {
        kind: Some(Kind::StructValue(meta)),
    });
    assert_eq!(
        all,
        serde_json::json!({
            "domain": "d",
            "descriptors": [
                {"entries": ["service=s1"]},
                {"entries": ["service=s2"]},
                {"entries": ["service=banned"]},
                {"entries": ["service=free"]},
            ],
            // s1 and s2 passed (merged, the first value wins); banned was over, free unlimited.
            "metadata": {"quota": {"name": "s1", "tier": "gold", "region": "eu"}, "first": "yes-s1"},
        })
    );
}
