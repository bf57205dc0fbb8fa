//! Short connections, as HTTP requests without keep-alive make them: a
//! fixed number of connections open at once, each of which connects, writes
//! its size, shuts down its write side and waits for the sink's answer (one
//! byte, sent once the sink has read every byte up to the end: the
//! transfer is complete, as an HTTP response says), and is replaced by a
//! new one at once, until the deadline.
//!
//! The sink counts into a [`Meter`] as the bulk sinks do, so a run's rate is
//! measured the same way; the source reports connections completed and the
//! time each took, from `connect()` to the sink's answer.
//!
//! Blocking threads on both sides, one per connection slot: the source runs
//! `concurrency` of them, and the sink as many, each taking the next
//! connection off the listener (the kernel wakes one thread blocked in
//! `accept()` per connection). A thread costs nothing while its connection
//! waits, and nothing is spawned per connection.
//!
//! Who holds TIME_WAIT: the side that sends the first FIN, here the source
//! (its `shutdown(Write)`), and it enters TIME_WAIT the moment the peer's
//! FIN arrives, before it closes. Its sockets would hold their local port
//! for 60 s, all towards one address and port, and there are about 28,000
//! ephemeral ports (32768-60999): at 2,000 connections a second they run
//! out in 14 s (the default `net.ipv4.tcp_tw_reuse`, 2, reuses them on
//! loopback only, not on a veth). So the sink never sends a FIN: it
//! answers, then waits for the
//! source to close, which the source does with `SO_LINGER` 0 (a RST, sent
//! from FIN_WAIT2). The RST ends the sink's socket; neither side keeps one,
//! and the run leaves no socket behind. A connection cut at the deadline is
//! reset the same way.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::socket::{listen, setsockopt, sockopt, Backlog};
use nix::sys::time::{TimeVal, TimeValLike};
use serde::{Deserialize, Serialize};

use crate::latency::quantile;
use crate::meter::Meter;
use crate::traffic::Until;

/// How often blocked calls wake up to look at the deadline and stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A connect that takes longer is given up and counted as failed: long
/// enough for one lost SYN's retransmission (after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What one write or read moves at most.
const CHUNK: usize = 128 * 1024;
/// The sink's answer: it has read everything up to the source's FIN.
const ANSWER: u8 = b'.';

/// A short-connection workload: `concurrency` connections at once, each
/// carrying `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConnections {
    pub size: u64,
    pub concurrency: usize,
}

/// What the source of short connections saw (`podshaper traffic
/// short-send` prints it as one JSON document).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShortReport {
    /// connections completed after the skipped start
    pub connections: u64,
    /// seconds from the end of the skipped start to the end
    pub seconds: f64,
    pub connections_per_second: f64,
    /// of the connections completed after the skipped start: the time from
    /// `connect()` to the sink's answer, milliseconds
    pub completion_p50_ms: f64,
    pub completion_p99_ms: f64,
    pub completion_max_ms: f64,
    /// connections completed from the start
    pub total_connections: u64,
    /// connections refused, reset, timed out or closed without an answer
    /// (each is replaced at once)
    pub failed: u64,
    /// connections in flight at the end, cut off
    pub cut: u64,
}

/// What one connection slot's thread did.
#[derive(Default)]
struct Slot {
    /// each completed connection: when it completed, and how long it took
    completed: Vec<(Instant, Duration)>,
    failed: u64,
    cut: u64,
}

/// How a connection ended.
enum Ended {
    /// the sink answered after reading everything
    Complete,
    /// the sink closed without an answer
    Unanswered,
    /// the deadline came first
    Cut,
}

/// Opens short connections to `to` as `shape` says until `until`; the
/// report counts connections completed after `skip`.
pub fn short_send(
    to: SocketAddr,
    shape: ShortConnections,
    skip: Duration,
    until: &Until,
) -> io::Result<ShortReport> {
    let start = Instant::now();
    let data: Arc<[u8]> = vec![0x5a_u8; CHUNK.min(shape.size as usize).max(1)].into();
    let slots: Vec<JoinHandle<io::Result<Slot>>> = (0..shape.concurrency.max(1))
        .map(|_| {
            let (until, data) = (until.clone(), data.clone());
            thread::spawn(move || run_slot(to, shape.size, &data, &until))
        })
        .collect();
    let mut all = Slot::default();
    for slot in slots {
        let slot = slot
            .join()
            .map_err(|_| io::Error::other("a connection thread panicked"))??;
        all.completed.extend(slot.completed);
        all.failed += slot.failed;
        all.cut += slot.cut;
    }
    let end = Instant::now();
    let measured_from = start + skip;
    let mut times: Vec<Duration> = all
        .completed
        .iter()
        .filter(|(at, _)| *at >= measured_from)
        .map(|(_, took)| *took)
        .collect();
    let seconds = end.saturating_duration_since(measured_from).as_secs_f64();
    let connections = times.len() as u64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(ShortReport {
        connections,
        seconds,
        connections_per_second: if seconds > 0.0 {
            connections as f64 / seconds
        } else {
            0.0
        },
        completion_p50_ms: ms(quantile(&mut times, 0.5)),
        completion_p99_ms: ms(quantile(&mut times, 0.99)),
        completion_max_ms: ms(times.iter().max().copied().unwrap_or_default()),
        total_connections: all.completed.len() as u64,
        failed: all.failed,
        cut: all.cut,
    })
}

/// One connection slot: a connection, and when it ends the next, until
/// `until`.
fn run_slot(to: SocketAddr, size: u64, data: &[u8], until: &Until) -> io::Result<Slot> {
    let mut slot = Slot::default();
    while !until.reached() {
        let started = Instant::now();
        match one_connection(to, size, data, until) {
            Ok(Ended::Complete) => slot.completed.push((Instant::now(), started.elapsed())),
            Ok(Ended::Cut) => slot.cut += 1,
            Ok(Ended::Unanswered) => slot.failed += 1,
            // a connect still waiting at the deadline was cut, not failed
            Err(e) if gone_or_refused(&e) && until.reached() => slot.cut += 1,
            Err(e) if gone_or_refused(&e) => {
                slot.failed += 1;
                // a sink not listening (yet): do not spin on refusals
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(slot)
}

fn one_connection(to: SocketAddr, size: u64, data: &[u8], until: &Until) -> io::Result<Ended> {
    let left = until.deadline.saturating_duration_since(Instant::now());
    let mut stream =
        TcpStream::connect_timeout(&to, left.clamp(Duration::from_millis(10), CONNECT_TIMEOUT))?;
    // any close from here on resets rather than waits in TIME_WAIT (module docs)
    setsockopt(
        &stream,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    stream.set_write_timeout(Some(POLL))?;
    stream.set_read_timeout(Some(POLL))?;
    let mut written = 0u64;
    while written < size {
        if until.reached() {
            return Ok(Ended::Cut);
        }
        let n = (size - written).min(data.len() as u64) as usize;
        match stream.write(&data[..n]) {
            Ok(n) => written += n as u64,
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    stream.shutdown(Shutdown::Write)?;
    let mut answer = [0u8; 1];
    loop {
        match stream.read(&mut answer) {
            Ok(0) => return Ok(Ended::Unanswered),
            // dropped: the RST of SO_LINGER 0
            Ok(_) => return Ok(Ended::Complete),
            Err(e) if is_retry(&e) => {
                if until.reached() {
                    return Ok(Ended::Cut);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts and reads short connections on `listener` until `until`, on
/// `threads` threads (at least the source's concurrency, so that no
/// connection waits for a thread), counting every byte into `meter`; each
/// connection is answered once its source has shut down its write side,
/// and dropped once the source has closed it.
pub fn short_sink(
    listener: TcpListener,
    meter: Meter,
    threads: usize,
    until: &Until,
) -> io::Result<()> {
    // listen() again on a listening socket sets its queue of connections
    // not yet accepted (std asks for 128; the kernel caps it at somaxconn)
    listen(&listener, Backlog::MAXCONN)?;
    // accept() gives up after SO_RCVTIMEO, so the deadline is seen
    setsockopt(
        &listener,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(POLL.as_millis() as i64),
    )?;
    let readers: Vec<JoinHandle<io::Result<()>>> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.try_clone()?;
            let (meter, until) = (meter.clone(), until.clone());
            Ok(thread::spawn(move || {
                accept_and_read(&listener, &meter, &until)
            }))
        })
        .collect::<io::Result<_>>()?;
    for r in readers {
        r.join()
            .map_err(|_| io::Error::other("a sink thread panicked"))??;
    }
    Ok(())
}

fn accept_and_read(listener: &TcpListener, meter: &Meter, until: &Until) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    while !until.reached() {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if is_retry(&e) || e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        stream.set_read_timeout(Some(POLL))?;
        while !until.reached() {
            match stream.read(&mut buf) {
                Ok(0) => {
                    match stream.write(&[ANSWER]) {
                        Ok(_) => wait_for_close(&stream, until)?,
                        Err(e) if gone_or_refused(&e) => {}
                        Err(e) => return Err(e),
                    }
                    break;
                }
                Ok(n) => meter.add(n as u64),
                Err(e) if is_retry(&e) => {}
                Err(e) if gone_or_refused(&e) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Waits until the peer has closed `stream` (its RST: POLLHUP), or `until`.
/// A read cannot wait for it: after the peer's FIN, reads return 0 at once.
fn wait_for_close(stream: &TcpStream, until: &Until) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        // none asked for: POLLHUP and POLLERR are reported anyway
        events: 0,
        revents: 0,
    };
    while !until.reached() {
        // SAFETY: one pollfd of ours, for the open stream's descriptor
        let ready = unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as libc::c_int) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            break;
        }
    }
    Ok(())
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A connection that failed on its own: refused, reset, or not set up in
/// time. The run goes on with the next one.
fn gone_or_refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_from_its_json() {
        let report = ShortReport {
            connections: 12_000,
            seconds: 2.0,
            connections_per_second: 6_000.0,
            completion_p50_ms: 1.25,
            completion_p99_ms: 4.5,
            completion_max_ms: 9.0,
            total_connections: 13_000,
            failed: 0,
            cut: 32,
        };
        let json = serde_json::to_string(&report).unwrap_or_default();
        assert!(json.contains("\"connections_per_second\":6000.0"), "{json}");
        let back: Option<ShortReport> = serde_json::from_str(&json).ok();
        assert_eq!(back, Some(report));
    }
}
