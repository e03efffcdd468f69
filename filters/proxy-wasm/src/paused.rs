//! Requests paused on a callout (a gRPC call to a Nexus service), and the bookkeeping every
//! adapter needs around them, kept in one place:
//!
//! - an answer is matched by its call token, because Envoy runs a callout's callback on the
//!   root context, not on the request that made the call;
//! - before the filter resumes or answers the request, the effective context must be switched
//!   back to that request, or the hostcalls act on the root;
//! - a request can end (client reset, timeout) before its answer comes: its call is forgotten
//!   then, so a late answer finds nothing rather than touching a dead context.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::hostcalls;

/// What an answer's token belongs to.
pub enum Answered<S> {
    /// A paused request, now the effective context: resume it or answer it.
    Request { context: u32, state: S },
    /// A call of ours whose request is gone (ended, or its context cannot be entered).
    Gone,
    /// Not one of these calls (another stream of the filter's, or a call already answered).
    NotOurs,
}

/// Calls in flight for paused requests; `S` is what the request needs when the answer comes.
pub struct PausedCalls<S> {
    /// call token → (request context, state)
    calls: RefCell<HashMap<u32, (u32, S)>>,
    /// request context → call token, to forget the call when the request ends first
    tokens: RefCell<HashMap<u32, u32>>,
}

impl<S> Default for PausedCalls<S> {
    fn default() -> Self {
        Self {
            calls: RefCell::new(HashMap::new()),
            tokens: RefCell::new(HashMap::new()),
        }
    }
}

impl<S> PausedCalls<S> {
    /// Records that request `context` waits on call `token`.
    pub fn pause(&self, context: u32, token: u32, state: S) {
        self.calls.borrow_mut().insert(token, (context, state));
        self.tokens.borrow_mut().insert(context, token);
    }

    /// Call `token` answered (or failed): its request with the effective context switched to
    /// it, [`Answered::Gone`], or [`Answered::NotOurs`].
    pub fn answered(&self, token: u32) -> Answered<S> {
        let Some((context, state)) = self.calls.borrow_mut().remove(&token) else {
            return Answered::NotOurs;
        };
        self.tokens.borrow_mut().remove(&context);
        if hostcalls::set_effective_context(context).is_err() {
            return Answered::Gone;
        }
        Answered::Request { context, state }
    }

    /// Request `context` ended: forget its call, if it had one.
    pub fn stream_ended(&self, context: u32) {
        if let Some(token) = self.tokens.borrow_mut().remove(&context) {
            self.calls.borrow_mut().remove(&token);
        }
    }

    /// Calls in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.calls.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.borrow().is_empty()
    }
}
