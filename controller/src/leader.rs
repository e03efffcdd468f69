//! Leader election on a `coordination.k8s.io/v1` Lease, with the Lease API directly: create
//! it, renew it while we hold it, take it over once its holder stops renewing for
//! `leaseDurationSeconds`. Every update carries the `resourceVersion` read, so two replicas
//! never both win the same round (the loser gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

/// What the holder of a Lease may do at `now`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Standby(String),
}

/// Pure decision from a Lease's spec.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(h) => {
            let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let expired = match &spec.renew_time {
                Some(t) => t.0 + SignedDuration::from_secs(secs) < now,
                None => true,
            };
            if expired {
                Decision::Acquire
            } else {
                Decision::Standby(h.to_string())
            }
        }
    }
}

fn our_spec(cfg: &LeaseConfig, previous: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs().max(1) as i32),
        acquire_time: if acquiring {
            Some(now.clone())
        } else {
            previous.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if acquiring && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One round: returns whether we hold the Lease afterwards.
pub async fn try_once(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(our_spec(cfg, None, true)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let decision = decide(lease.spec.as_ref(), &cfg.identity, Timestamp::now());
            let acquiring = match decision {
                Decision::Standby(_) => return Ok(false),
                Decision::Acquire => true,
                Decision::Renew => false,
            };
            lease.spec = Some(our_spec(cfg, lease.spec.as_ref(), acquiring));
            // `replace` sends metadata.resourceVersion: a concurrent writer makes this 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the Lease up (on shutdown) so a standby takes over at once.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(&cfg.identity) {
                spec.holder_identity = None;
                let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

/// Runs forever, publishing whether we lead. Once we have led and then fail to renew for a
/// whole lease duration (or see another holder), publishes `false` and returns: the caller
/// must stop reconciling (the binary exits so it restarts clean).
pub async fn run(api: Api<Lease>, cfg: LeaseConfig, tx: watch::Sender<bool>) {
    let mut last_renew: Option<tokio::time::Instant> = None;
    loop {
        let leading = *tx.borrow();
        match try_once(&api, &cfg).await {
            Ok(true) => {
                last_renew = Some(tokio::time::Instant::now());
                if !leading {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                    let _ = tx.send(true);
                }
            }
            Ok(false) => {
                if leading {
                    tracing::warn!(lease = %cfg.name, "another replica holds the lease: stepping down");
                    let _ = tx.send(false);
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "lease round failed");
                if leading && last_renew.is_some_and(|t| t.elapsed() >= cfg.lease_duration) {
                    tracing::warn!(
                        "could not renew the lease for a whole lease duration: stepping down"
                    );
                    let _ = tx.send(false);
                    return;
                }
            }
        }
        tokio::time::sleep(cfg.renew_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", 3)), "a", now), Decision::Renew);
        assert_eq!(
            decide(Some(&spec("b", 3)), "a", now),
            Decision::Standby("b".into())
        );
        assert_eq!(decide(Some(&spec("b", 11)), "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", now),
            Decision::Acquire
        );
    }
}
