//! An HTTP/1.1 upstream that misbehaves on command and counts what it saw, so a test can prove
//! what Envoy did (how many tries reached it, which host served) instead of trusting what
//! Envoy's configuration says.
//!
//! Commands are request headers, so one upstream serves every case of a test:
//! - `x-test-id: ID`: the key tries are counted under (default `METHOD /path`);
//! - `x-fail: N`: the first N tries of that key get `503`;
//! - `x-slow-first-ms: N`: the first try of that key waits N ms before answering;
//! - `x-hold: 1`: the answer waits until [`Misbehaving::release`];
//! - `x-hold-from-try: N`: the same, for the Nth try of that key and later ones;
//! - `x-break-after-headers: 1`: `200` headers and 5 of 100 body bytes, then the connection
//!   closes (a response that started and broke).
//!
//! [`Misbehaving::set_failing`] makes every answer a `503` (a host gone bad), and every answer
//! carries `x-served-by: NAME`. One request per connection (`connection: close`), so what a
//! test counts never depends on Envoy's connection reuse.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    tries: Mutex<BTreeMap<String, u32>>,
    served: AtomicU64,
    failing: AtomicBool,
    stopped: AtomicBool,
    held: Mutex<u32>,
    released: Mutex<bool>,
    wake: Condvar,
}

/// A running misbehaving upstream; stops accepting when dropped.
pub struct Misbehaving {
    pub port: u16,
    pub name: String,
    state: Arc<State>,
}

impl Misbehaving {
    /// Listens on 127.0.0.1 (a kernel-chosen port) and answers as `name`.
    pub fn start(name: &str) -> Misbehaving {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        // Polled, so dropping the upstream really closes the port (a killed host).
        listener.set_nonblocking(true).ok();
        let state = Arc::new(State::default());
        let s = state.clone();
        let who = name.to_string();
        std::thread::spawn(move || accept_loop(listener, s, who));
        Misbehaving {
            port,
            name: name.to_string(),
            state,
        }
    }

    /// Tries seen under `key` (`x-test-id`, or `METHOD /path`).
    pub fn tries(&self, key: &str) -> u32 {
        let tries = self.state.tries.lock().unwrap_or_else(|e| e.into_inner());
        tries.get(key).copied().unwrap_or(0)
    }

    /// Requests answered (any status), in total.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Every answer from now on is a 503 (`true`) or as commanded (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests waiting on `x-hold` now.
    pub fn held(&self) -> u32 {
        *self.state.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets every held request (and any later one) answer.
    pub fn release(&self) {
        *self
            .state
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.state.wake.notify_all();
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.release();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>, name: String) {
    while !state.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok();
                let (state, name) = (state.clone(), name.clone());
                std::thread::spawn(move || serve(stream, &state, &name));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A request's head: `METHOD /path` and its headers, lower-cased names.
struct Head {
    request: String,
    headers: BTreeMap<String, String>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    // "GET /path HTTP/1.1" → "GET /path"
    let request = first.trim_end().rsplit_once(' ')?.0.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Head { request, headers })
}

fn serve(stream: TcpStream, state: &State, name: &str) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Some(head) = read_head(&mut reader) else {
        return;
    };
    let _ = reader
        .by_ref()
        .take(head.number("content-length"))
        .read_to_end(&mut Vec::new());
    let key = head
        .header("x-test-id")
        .map_or_else(|| head.request.clone(), str::to_string);
    let n = {
        let mut tries = state.tries.lock().unwrap_or_else(|e| e.into_inner());
        let n = tries.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    if n == 1 && head.number("x-slow-first-ms") > 0 {
        std::thread::sleep(Duration::from_millis(head.number("x-slow-first-ms")));
    }
    let hold_from = head.number("x-hold-from-try");
    if head.header("x-hold").is_some() || (hold_from > 0 && u64::from(n) >= hold_from) {
        hold(state);
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    let mut stream = stream;
    if head.header("x-break-after-headers").is_some() {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nx-served-by: {name}\r\ncontent-length: 100\r\n\r\nstart"
        );
        let _ = stream.flush();
        // Let Envoy forward the headers before the connection goes.
        std::thread::sleep(Duration::from_millis(200));
        return;
    }
    let failing = state.failing.load(Ordering::SeqCst) || u64::from(n) <= head.number("x-fail");
    let (status, body) = if failing {
        ("503 Service Unavailable", "unavailable")
    } else {
        ("200 OK", "ok")
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nx-served-by: {name}\r\nx-try: {n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn hold(state: &State) {
    *state.held.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let mut released = state.released.lock().unwrap_or_else(|e| e.into_inner());
    while !*released {
        released = state.wake.wait(released).unwrap_or_else(|e| e.into_inner());
    }
    drop(released);
    *state.held.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
}
