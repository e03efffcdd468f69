//! The Redis the tests share at its standard loopback port (127.0.0.1:6379). Machines that run
//! one already keep it; elsewhere a test run starts its own there and stops it afterwards.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const PORT: u16 = 6379;

/// True when something answers Redis's PING at 127.0.0.1:6379.
pub fn answers() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], PORT).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A Redis this process started; stopped on drop.
pub struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The machine's Redis when it answers (None), else one started now (installing Debian's
/// `redis-server` when missing), in memory only, until the returned guard drops.
pub fn ensure_running() -> Result<Option<OwnRedis>> {
    if answers() {
        return Ok(None);
    }
    crate::apt::ensure(&["redis-server"])?;
    eprintln!(
        "toolenv: nothing answers on 127.0.0.1:{PORT}; starting redis-server there for this run"
    );
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &PORT.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let own = OwnRedis(child);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if answers() {
            return Ok(Some(own));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("redis-server did not answer on 127.0.0.1:{PORT} within 10 s")
}
