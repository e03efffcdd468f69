//! Leased quota: one Envoy's share of a global limit's window budget, kept in shared data so
//! every worker admits from the same lease, with no service call per request.
//!
//! A lease belongs to one window of the service's fixed-window counter (the service says which
//! and for how long); when that window ends, what is left of it is void (the counter it came
//! from is gone too). At most one renewal per counter is in flight per Envoy: the request that
//! finds the lease at or below the renewal threshold claims it in the slot (compare and swap),
//! with a deadline after which another request may claim it again (the call was lost).

use nexus_filter_core::host::SharedDataError;
use nexus_filter_core::SharedData;
use nexus_proto::lease::LeaseResponse;

const PREFIX: &str = "nexus-rl-lease:";
const CAS_ATTEMPTS: usize = 16;
const FIELDS: usize = 8;

/// One counter's lease, as stored in its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The service's window the lease belongs to (0: none yet).
    pub window_start_us: u64,
    /// When that window ends, on this proxy's clock.
    pub window_end_us: u64,
    /// Requests this Envoy may still admit from the lease.
    pub tokens: u64,
    /// Admitted from leases since the last report to the service.
    pub used: u64,
    /// A renewal is in flight until then (0: none).
    pub renewing_until_us: u64,
    pub last_use_us: u64,
    /// The service said the window's budget is spent: ask no more in this window.
    pub exhausted: bool,
    /// What the service had left after its last grant (for the `RateLimit` header).
    pub pool: u64,
}

/// The outcome of taking one request from a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted; about `left` requests remain to every proxy together in this window.
    Admitted { left: u64, reset_us: u64 },
    /// The window's budget is spent: refuse until it ends.
    Exhausted { reset_us: u64 },
    /// Nothing leased, and the renewal has not answered: the limit's failure mode decides.
    Empty,
}

/// A call to make for a counter: its report, what it gives back, what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub requested: u64,
    pub used: u64,
    pub returned: u64,
    pub returned_window_start_us: u64,
}

/// How one limit is leased: the lease size, the renewal threshold, how long a renewal may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub size: u64,
    pub renew_at: u64,
    pub call_deadline_us: u64,
}

pub fn slot(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// Takes one request from `key`'s lease; the call to make, if this request claimed a renewal.
pub fn take(shared: &impl SharedData, key: &str, p: Params, now_us: u64) -> (Take, Option<Call>) {
    let slot = slot(key);
    for _ in 0..CAS_ATTEMPTS {
        let (mut s, cas) = read(shared, &slot);
        roll_over(&mut s, now_us);
        let reset_us = s.window_end_us.saturating_sub(now_us);
        let outcome = if s.tokens > 0 {
            s.tokens -= 1;
            s.used += 1;
            s.last_use_us = now_us;
            Take::Admitted {
                left: s.tokens + s.pool,
                reset_us,
            }
        } else if s.exhausted {
            // Nothing to write: a refusal costs one read.
            return (Take::Exhausted { reset_us }, None);
        } else {
            Take::Empty
        };
        let wants = !s.exhausted && s.tokens <= p.renew_at && s.renewing_until_us <= now_us;
        let call = wants.then(|| claim(&mut s, p, now_us));
        if call.is_none() && outcome == Take::Empty {
            return (outcome, None); // a renewal is already on its way
        }
        match shared.set(&slot, &encode(&s), cas) {
            Ok(()) => return (outcome, call),
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => break,
        }
    }
    (Take::Empty, None)
}

/// Marks a renewal in flight and moves the usage report into the call.
fn claim(s: &mut LeaseState, p: Params, now_us: u64) -> Call {
    s.renewing_until_us = now_us + p.call_deadline_us;
    let used = std::mem::take(&mut s.used);
    Call {
        requested: p.size,
        used,
        returned: 0,
        returned_window_start_us: 0,
    }
}

/// The service answered a renewal: the grant joins the lease (or replaces a lease of an older
/// window) and the next renewal may be claimed.
pub fn granted(shared: &impl SharedData, key: &str, resp: &LeaseResponse, now_us: u64) {
    let ttl_us = resp
        .assignment_time_to_live
        .as_ref()
        .map(|d| {
            u64::try_from(d.seconds).unwrap_or(0) * 1_000_000
                + u64::try_from(d.nanos).unwrap_or(0) / 1_000
        })
        .unwrap_or(0);
    update(shared, key, |s| {
        s.renewing_until_us = 0;
        if resp.window_start_us < s.window_start_us {
            return; // an answer about a window already over: its quota is void
        }
        if resp.window_start_us > s.window_start_us {
            *s = LeaseState {
                used: s.used,
                last_use_us: s.last_use_us,
                ..LeaseState::default()
            };
            s.window_start_us = resp.window_start_us;
        }
        s.window_end_us = now_us + ttl_us;
        s.tokens += resp.granted;
        s.pool = resp.remaining;
        s.exhausted = resp.remaining == 0;
    });
}

/// A renewal failed or timed out: the next request that finds the lease low claims another.
pub fn failed(shared: &impl SharedData, key: &str) {
    update(shared, key, |s| s.renewing_until_us = 0);
}

/// For the root's tick: a lease unused for `idle_us` gives its quota back (and reports its
/// usage) in one call; `None` when there is nothing to give back. `gone` tells the caller the
/// slot holds no live lease, so it may stop visiting it.
pub fn idle_return(
    shared: &impl SharedData,
    key: &str,
    idle_us: u64,
    now_us: u64,
) -> (Option<Call>, bool) {
    let slot = slot(key);
    for _ in 0..CAS_ATTEMPTS {
        let (mut s, cas) = read(shared, &slot);
        roll_over(&mut s, now_us);
        let gone = s.window_start_us == 0 && s.used == 0;
        let idle = now_us.saturating_sub(s.last_use_us) >= idle_us;
        if !idle || s.renewing_until_us > now_us || (s.tokens == 0 && s.used == 0) {
            return (None, gone);
        }
        let call = Call {
            requested: 0,
            used: std::mem::take(&mut s.used),
            returned: std::mem::take(&mut s.tokens),
            returned_window_start_us: s.window_start_us,
        };
        // Quota given back means the window has room again, for this proxy too; a report
        // alone changes nothing.
        if call.returned > 0 {
            s.exhausted = false;
        }
        match shared.set(&slot, &encode(&s), cas) {
            Ok(()) => return (Some(call), false),
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => break,
        }
    }
    (None, false)
}

/// The stored lease, if any (for tests and metrics).
pub fn state(shared: &impl SharedData, key: &str) -> LeaseState {
    read(shared, &slot(key)).0
}

/// A window that ended takes its lease with it (the service's counter for it expires too).
fn roll_over(s: &mut LeaseState, now_us: u64) {
    if s.window_start_us != 0 && now_us >= s.window_end_us {
        *s = LeaseState {
            used: s.used,
            last_use_us: s.last_use_us,
            renewing_until_us: s.renewing_until_us,
            ..LeaseState::default()
        };
    }
}

fn update(shared: &impl SharedData, key: &str, change: impl Fn(&mut LeaseState)) {
    let slot = slot(key);
    for _ in 0..CAS_ATTEMPTS {
        let (mut s, cas) = read(shared, &slot);
        change(&mut s);
        match shared.set(&slot, &encode(&s), cas) {
            Err(SharedDataError::CasMismatch) => continue,
            _ => return,
        }
    }
}

fn read(shared: &impl SharedData, slot: &str) -> (LeaseState, Option<u32>) {
    match shared.get(slot) {
        Some((bytes, cas)) => (decode(&bytes).unwrap_or_default(), Some(cas)),
        None => (LeaseState::default(), None),
    }
}

fn encode(s: &LeaseState) -> [u8; FIELDS * 8] {
    let fields = [
        s.window_start_us,
        s.window_end_us,
        s.tokens,
        s.used,
        s.renewing_until_us,
        s.last_use_us,
        u64::from(s.exhausted),
        s.pool,
    ];
    let mut out = [0u8; FIELDS * 8];
    for (chunk, f) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&f.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Option<LeaseState> {
    let mut f = [0u64; FIELDS];
    for (i, v) in f.iter_mut().enumerate() {
        *v = u64::from_le_bytes(bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?);
    }
    Some(LeaseState {
        window_start_us: f[0],
        window_end_us: f[1],
        tokens: f[2],
        used: f[3],
        renewing_until_us: f[4],
        last_use_us: f[5],
        exhausted: f[6] != 0,
        pool: f[7],
    })
}
