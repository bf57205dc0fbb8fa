//! Round-trip latency beside bulk traffic: an echo server and a client that
//! sends a small request at a fixed interval and times each reply.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::traffic::Until;

/// Request and reply size: one small message, as an RPC's would be.
const MESSAGE: usize = 64;

/// Echoes every connection's messages back until `until`.
pub fn tcp_echo(listener: TcpListener, until: &Until) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut workers = Vec::new();
    while !until.reached() {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_millis(100)))?;
                let until = until.clone();
                workers.push(thread::spawn(move || {
                    let mut buf = [0u8; MESSAGE];
                    while !until.reached() {
                        match stream.read_exact(&mut buf) {
                            Ok(()) => stream.write_all(&buf)?,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    Ok::<_, io::Error>(())
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One request every `interval` until `until`; returns (when sent, round
/// trip) for each reply.
pub fn tcp_ping(
    to: SocketAddr,
    interval: Duration,
    until: &Until,
) -> io::Result<Vec<(Instant, Duration)>> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = Vec::new();
    let mut buf = [0u8; MESSAGE];
    while !until.reached() {
        let sent = Instant::now();
        stream.write_all(&buf)?;
        match stream.read_exact(&mut buf) {
            Ok(()) => out.push((sent, sent.elapsed())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // a reply later than 2 s: count it as 2 s and resynchronise
                out.push((sent, Duration::from_secs(2)));
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if let Some(rest) = interval.checked_sub(sent.elapsed()) {
            thread::sleep(rest);
        }
    }
    Ok(out)
}

/// The `p`-quantile (0..=1) of durations; zero when empty.
pub fn quantile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}
