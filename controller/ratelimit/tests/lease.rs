//! Leased quota on every backend (memory and real Redis): grants come out of the window's
//! budget atomically, concurrent grants never exceed it, returns give quota back to the same
//! window only, and strict decisions share the budget.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use nexus_ratelimit_service::algorithm::{Algorithm, Counter};
use nexus_ratelimit_service::storage::lease::LeaseOp;
use nexus_ratelimit_service::storage::Storage;

const SEC: u64 = 1_000_000;
const WINDOW: u64 = 60 * SEC;
/// A minute boundary, then 10 s into that window.
const T0: u64 = 1_800_000_000 * SEC + 10 * SEC;
const START: u64 = T0 - 10 * SEC;

fn counter(key: &str, limit: u32) -> Counter {
    Counter {
        key: key.to_string(),
        limit,
        window_us: WINDOW,
    }
}

fn ask(requested: u64) -> LeaseOp {
    LeaseOp {
        requested,
        ..Default::default()
    }
}

every_backend!(
    grants_take_what_is_left_of_the_window,
    concurrent_grants_never_exceed_the_budget,
    returns_give_quota_back_to_their_window_only,
    strict_hits_and_leases_share_one_budget,
);

async fn grants_take_what_is_left_of_the_window<S: Storage>(s: S) {
    let c = counter("g", 25);
    let g = s.lease(&c, ask(10), T0).await.unwrap();
    assert_eq!((g.granted, g.remaining), (10, 15));
    assert_eq!(
        (g.window_start_us, g.window_end_us),
        (START, START + WINDOW)
    );
    assert_eq!(s.lease(&c, ask(10), T0).await.unwrap().granted, 10);
    let g = s.lease(&c, ask(10), T0).await.unwrap();
    assert_eq!(
        (g.granted, g.remaining),
        (5, 0),
        "min(requested, remaining)"
    );
    assert_eq!(s.lease(&c, ask(10), T0).await.unwrap().granted, 0);
    // The next window has its whole budget.
    let g = s.lease(&c, ask(10), START + WINDOW).await.unwrap();
    assert_eq!((g.granted, g.window_start_us), (10, START + WINDOW));
}

async fn concurrent_grants_never_exceed_the_budget<S: Storage>(s: S) {
    let s = Arc::new(s);
    let c = counter("c", 1000);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move {
                let mut got = 0;
                for _ in 0..10 {
                    got += s.lease(&c, ask(7), T0).await.unwrap().granted;
                }
                got
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, 1000,
        "64 × 10 asks of 7 = 4480 wanted; exactly the budget granted"
    );
}

async fn returns_give_quota_back_to_their_window_only<S: Storage>(s: S) {
    let c = counter("r", 20);
    assert_eq!(s.lease(&c, ask(20), T0).await.unwrap().granted, 20);
    let back = LeaseOp {
        requested: 5,
        returned: 8,
        returned_window_start_us: START,
    };
    let g = s.lease(&c, back, T0).await.unwrap();
    assert_eq!((g.granted, g.remaining), (5, 3), "8 back, 5 out again");
    // Quota of an ended window comes back to nothing: the new window is untouched.
    let next = START + WINDOW;
    assert_eq!(s.lease(&c, ask(20), next).await.unwrap().granted, 20);
    let stale = LeaseOp {
        requested: 0,
        returned: 3,
        returned_window_start_us: START,
    };
    assert_eq!(s.lease(&c, stale, next).await.unwrap().remaining, 0);
    // A return never creates quota that was never granted (a window no one leased from).
    let never = LeaseOp {
        requested: 1,
        returned: 50,
        returned_window_start_us: START - WINDOW,
    };
    assert_eq!(s.lease(&c, never, next).await.unwrap().granted, 0);
}

async fn strict_hits_and_leases_share_one_budget<S: Storage>(s: S) {
    let c = counter("s", 10);
    for _ in 0..4 {
        let d = s
            .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 1, T0)
            .await
            .unwrap();
        assert!(d[0].allowed);
    }
    assert_eq!(s.lease(&c, ask(10), T0).await.unwrap().granted, 6);
    let d = s
        .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 1, T0)
        .await
        .unwrap();
    assert!(!d[0].allowed, "the leases hold the rest of the window");
}
