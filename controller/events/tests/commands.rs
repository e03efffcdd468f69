//! The command consumer against the machine's RabbitMQ: dead-lettering with a reason, RPC
//! replies, and the commands changing the real cache and rate-limit services.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use nexus_events::command::{Command, Handler, HandlerError};
use nexus_events::consumer::{self, ConsumerConfig, REASON_HEADER, REPLY_TYPE};
use nexus_events::envelope::Envelope;
use nexus_events::services::Services;
use nexus_events::Stats;
use nexus_proto::cache::event;
use serde_json::json;
use support::*;

/// A consumer on names no other test uses; returns its config and stats once it is bound.
async fn start(handler: Arc<dyn Handler>) -> (ConsumerConfig, Arc<Stats>) {
    let mut config = ConsumerConfig::new(SHARED_AMQP, &unique("test"), "nexus://test/r1");
    config.exchange = unique("service.commands.test");
    config.dead_letter_exchange = unique("service.commands.dead.test");
    let stats = Arc::new(Stats::default());
    consumer::start(config.clone(), handler, stats.clone());
    eventually("the consumer is bound", || {
        stats
            .consumer_connected
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    (config, stats)
}

async fn cleanup(ch: &Channel, config: &ConsumerConfig) {
    for q in [config.queue.clone(), config.dead_queue()] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    remove_exchange(ch, &config.exchange).await;
    remove_exchange(ch, &config.dead_letter_exchange).await;
}

async fn send(
    ch: &Channel,
    config: &ConsumerConfig,
    key: &str,
    body: &[u8],
    reply_to: Option<(&str, &str)>,
) {
    let mut props = BasicProperties::default();
    if let Some((queue, correlation)) = reply_to {
        props = props
            .with_reply_to(queue.into())
            .with_correlation_id(correlation.into());
    }
    ch.basic_publish(
        config.exchange.as_str().into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap();
}

fn command(kind: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&Envelope::new(kind, "test-sender", data)).unwrap()
}

/// A private reply queue, deleted with the test's connection.
async fn reply_queue(ch: &Channel) -> String {
    let options = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare("".into(), options, FieldTable::default())
        .await
        .unwrap()
        .name()
        .to_string()
}

/// The `x-nexus-reason` header of a dead letter.
fn reason(d: &lapin::message::Delivery) -> String {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REASON_HEADER).cloned())
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("no {REASON_HEADER} header: {other:?}"),
    }
}

fn reply(d: &lapin::message::Delivery) -> Envelope {
    let env: Envelope = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(env.kind, REPLY_TYPE);
    env
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Command>>);

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, command: &Command) -> Result<serde_json::Value, HandlerError> {
        self.0.lock().unwrap().push(command.clone());
        Ok(json!({ "done": true }))
    }
}

#[tokio::test]
async fn invalid_commands_are_dead_lettered_with_their_reason_and_replies_carry_the_correlation_id()
{
    let recorder = Arc::new(Recorder::default());
    let (config, stats) = start(recorder.clone()).await;
    let (_conn, ch) = connect(SHARED_AMQP).await;
    let replies = reply_queue(&ch).await;
    send(&ch, &config, "cache.invalidate", b"{not json", None).await;
    send(
        &ch,
        &config,
        "cache.invalidate",
        &command("cache.invalidate", json!({"tagz": ["t"]})),
        None,
    )
    .await;
    send(
        &ch,
        &config,
        "cache.flush",
        &command("cache.explode", json!({})),
        Some((&replies, "c-1")),
    )
    .await;
    send(
        &ch,
        &config,
        "cache.invalidate",
        &command("cache.invalidate", json!({"tags": ["t"]})),
        Some((&replies, "c-2")),
    )
    .await;

    let dead = collect(&ch, &config.dead_queue(), 3).await;
    let reasons: Vec<String> = dead.iter().map(reason).collect();
    assert!(
        reasons[0].starts_with("not a command envelope"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("unknown field `tagz`"), "{reasons:?}");
    assert!(
        reasons[2].contains("unknown command \"cache.explode\""),
        "{reasons:?}"
    );
    // The dead letter is the original message, body and all.
    assert_eq!(dead[0].data, b"{not json");

    let answers = collect(&ch, &replies, 2).await;
    let (refused, done) = (reply(&answers[0]), reply(&answers[1]));
    assert_eq!(
        answers[0]
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-1")
    );
    assert_eq!(refused.correlationid.as_deref(), Some("c-1"));
    assert_eq!(refused.data["ok"], false);
    assert_eq!(
        answers[1]
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-2")
    );
    assert_eq!(
        done.data,
        json!({"ok": true, "command": "cache.invalidate", "result": {"done": true}})
    );

    let handled = recorder.0.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "{handled:?}");
    // The reply goes out just before the ack, and the counts after it.
    eventually("1 handled, 3 rejected", || {
        Stats::get(&stats.commands_handled) == 1 && Stats::get(&stats.commands_rejected) == 3
    })
    .await;
    cleanup(&ch, &config).await;
}

#[tokio::test]
async fn cache_invalidate_and_flush_reach_every_proxy_stream_of_the_cache_service() {
    let cache = nexus_cache_service::server::build(
        None,
        &Default::default(),
        nexus_cache_service::Config::default(),
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    let mut stream = cache.subscribe();
    assert!(matches!(
        stream.next().await.unwrap().unwrap().kind,
        Some(event::Kind::Hello(_))
    ));
    let services = Services {
        cache: Some(cache.clone()),
        ..Default::default()
    };
    let (config, _stats) = start(Arc::new(services)).await;
    let (_conn, ch) = connect(SHARED_AMQP).await;
    let replies = reply_queue(&ch).await;

    let body = command(
        "cache.invalidate",
        json!({"prefixes": ["/lake/"], "tags": ["models"]}),
    );
    send(
        &ch,
        &config,
        "cache.invalidate",
        &body,
        Some((&replies, "i-1")),
    )
    .await;
    let answer = reply(&collect(&ch, &replies, 1).await[0]);
    assert_eq!(answer.data["ok"], true, "{answer:?}");
    match stream.next().await.unwrap().unwrap().kind {
        Some(event::Kind::Invalidation(i)) => {
            assert_eq!(i.prefixes, ["/lake/"]);
            assert_eq!(i.tags, ["models"]);
        }
        other => panic!("expected the invalidation, got {other:?}"),
    }
    send(
        &ch,
        &config,
        "cache.flush",
        &command("cache.flush", json!({"reason": "deploy"})),
        None,
    )
    .await;
    match stream.next().await.unwrap().unwrap().kind {
        Some(event::Kind::Flush(f)) => assert_eq!(f.reason, "deploy"),
        other => panic!("expected a flush, got {other:?}"),
    }
    // What the deployment does not run is refused with that reason, not dropped.
    send(
        &ch,
        &config,
        "session.revoke",
        &command("session.revoke", json!({"session": "s1"})),
        None,
    )
    .await;
    send(
        &ch,
        &config,
        "ratelimit.reset",
        &command("ratelimit.reset", json!({"client": "a"})),
        None,
    )
    .await;
    let dead = collect(&ch, &config.dead_queue(), 2).await;
    assert!(
        reason(&dead[0]).contains("runs no sessions service"),
        "{}",
        reason(&dead[0])
    );
    assert!(
        reason(&dead[1]).contains("no rate-limit service"),
        "{}",
        reason(&dead[1])
    );
    cleanup(&ch, &config).await;
}

const LIMITS: &str = r#"
domain: nexus
descriptors:
  - key: route
    value: cortex-infer
    descriptors:
      - key: client_id
        rate_limit: {unit: hour, requests_per_unit: 2}
"#;

#[tokio::test]
async fn ratelimit_reset_clears_one_clients_counters_in_redis() {
    use nexus_proto::ratelimit::rate_limit_response::Code;
    use nexus_ratelimit_service::server::SharedLimiter;
    use nexus_ratelimit_service::{limits::parse, Algorithm, Limits, UnknownDomain};

    // A private Redis: this test's counters share no key space with anything else.
    let redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let limits = Limits::new([parse(LIMITS).unwrap()]).unwrap();
    let limiter = SharedLimiter::new(
        limits,
        Some(&redis.url()),
        Algorithm::FixedWindow,
        UnknownDomain::Allow,
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    let SharedLimiter::Redis(rl) = limiter.clone() else {
        panic!("expected Redis storage")
    };
    let hit = |client: &'static str| {
        let rl = rl.clone();
        async move {
            let req = nexus_proto::ratelimit::RateLimitRequest {
                domain: "nexus".into(),
                descriptors: vec![nexus_proto::ratelimit::RateLimitDescriptor {
                    entries: [("route", "cortex-infer"), ("client_id", client)]
                        .iter()
                        .map(
                            |(k, v)| nexus_proto::ratelimit::rate_limit_descriptor::Entry {
                                key: (*k).into(),
                                value: (*v).into(),
                            },
                        )
                        .collect(),
                    limit: None,
                }],
                hits_addend: 0,
            };
            rl.should_rate_limit(&req).await.unwrap().overall_code
        }
    };
    for client in ["alice", "bob"] {
        let codes = [hit(client).await, hit(client).await, hit(client).await];
        assert_eq!(
            codes,
            [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32],
            "{client}"
        );
    }
    let cache = nexus_cache_service::server::build(
        None,
        &Default::default(),
        nexus_cache_service::Config::default(),
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    let mut stream = cache.subscribe();
    stream.next().await.unwrap().unwrap();
    let services = Services {
        limiter: Some(limiter),
        cache: Some(cache),
        ..Default::default()
    };
    let (config, stats) = start(Arc::new(services)).await;
    let (_conn, ch) = connect(SHARED_AMQP).await;
    let replies = reply_queue(&ch).await;
    let body = command(
        "ratelimit.reset",
        json!({"client": "alice", "rule": "cortex-infer"}),
    );
    send(
        &ch,
        &config,
        "ratelimit.reset",
        &body,
        Some((&replies, "r-1")),
    )
    .await;
    let answer = reply(&collect(&ch, &replies, 1).await[0]);
    assert_eq!(answer.data["result"]["deleted"], 1, "{answer:?}");
    assert_eq!(answer.data["result"]["proxies_told"], true, "{answer:?}");
    // Every proxy's over-limit cache hears it on the cache service's event stream.
    match stream.next().await.unwrap().unwrap().kind {
        Some(event::Kind::Invalidation(i)) => assert_eq!(
            i.keys,
            ["nexus-ratelimit:|route=cortex-infer|client_id=alice"]
        ),
        other => panic!("expected the reset, got {other:?}"),
    }
    // The reply goes out just before the ack, and the count after it.
    eventually("one command counted", || {
        Stats::get(&stats.commands_handled) == 1
    })
    .await;
    // Alice is allowed again; Bob, not reset, is still over his limit.
    assert_eq!(hit("alice").await, Code::Ok as i32);
    assert_eq!(hit("bob").await, Code::OverLimit as i32);
    cleanup(&ch, &config).await;
}

/// `session.revoke` ends the session in the sessions service's store and publishes its
/// revocation on the cache service's event stream, which every proxy's session table follows.
#[tokio::test]
async fn session_revoke_ends_the_session_and_tells_every_proxy() {
    let cache = nexus_cache_service::server::build(
        None,
        &Default::default(),
        nexus_cache_service::Config::default(),
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    let mut stream = cache.subscribe();
    stream.next().await.unwrap().unwrap();
    let clock = nexus_cache_service::storage::system_clock();
    let storage = nexus_sessions_service::storage::MemoryStorage::new(clock);
    let sessions = Arc::new(nexus_sessions_service::SessionService::new(
        storage,
        Some(cache.clone()),
        Default::default(),
    ));
    let new = nexus_sessions_service::NewSession {
        client_id: "alice".into(),
        scopes: vec![],
        headers: Default::default(),
    };
    let (id, _) = sessions.create(new).await.unwrap();
    let services = Services {
        cache: Some(cache.clone()),
        sessions: Some(sessions.clone()),
        ..Default::default()
    };
    let (config, _stats) = start(Arc::new(services)).await;
    let (_conn, ch) = connect(SHARED_AMQP).await;
    let replies = reply_queue(&ch).await;
    // Revoked twice: the second is acknowledged too, its answer saying nothing was left.
    for correlation in ["r-1", "r-2"] {
        let body = command("session.revoke", json!({ "session": id }));
        let reply_to = Some((replies.as_str(), correlation));
        send(&ch, &config, "session.revoke", &body, reply_to).await;
    }
    let answers: Vec<_> = collect(&ch, &replies, 2).await.iter().map(reply).collect();
    assert_eq!(answers[0].data["ok"], true, "{answers:?}");
    assert_eq!(answers[0].data["result"]["revoked"], true, "{answers:?}");
    assert_eq!(answers[1].data["result"]["revoked"], false, "{answers:?}");
    let key = nexus_config::session::revocation_key(&nexus_sessions_service::id_hash(&id));
    match stream.next().await.unwrap().unwrap().kind {
        Some(event::Kind::Invalidation(i)) => assert_eq!(i.keys, [key]),
        other => panic!("expected the revocation, got {other:?}"),
    }
    cleanup(&ch, &config).await;
}
