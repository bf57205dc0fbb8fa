//! A traffic source and sink: TCP (any number of flows) and UDP at a set rate.
//! Sinks count what they receive into a [`Meter`]; sources stop at a deadline
//! or when told to.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

use crate::meter::{FlowMeter, Meter};
use crate::netns;

const TCP_CHUNK: usize = 128 * 1024;
/// What a light flow writes at a time, as `iperf3 -l 16K` does.
pub const LIGHT_CHUNK: usize = 16 * 1024;
/// UDP payload: fits a 1500-byte MTU with IPv6 and UDP headers.
pub const UDP_PAYLOAD: usize = 1400;
/// One datagram per send tops out at about 2.5 Gbit/s of offered UDP on this
/// kind of machine (one core: 220,000 sends a second), short of 4x a 5G
/// limit; from 2 Gbit/s on, datagrams go out in GSO batches.
pub const UDP_GSO_FROM_BPS: u64 = 2_000_000_000;
pub const UDP_GSO_BATCH: usize = 16;
/// How often blocked calls wake up to look at the deadline and stop flag.
const POLL: Duration = Duration::from_millis(100);

/// A UDP receiver's socket buffer (bytes; the kernel doubles it for overhead).
const UDP_RECEIVE_BUFFER: usize = 16 << 20;

/// When a source or sink should stop: at the deadline, or once `stop` is set.
#[derive(Debug, Clone)]
pub struct Until {
    pub deadline: Instant,
    pub stop: Arc<AtomicBool>,
}

impl Until {
    pub fn after(duration: Duration) -> Self {
        Self {
            deadline: Instant::now() + duration,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn reached(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (or the current one).
pub fn spawn_in<T: Send + 'static>(
    ns: Option<String>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> JoinHandle<io::Result<T>> {
    thread::spawn(move || {
        if let Some(ns) = ns {
            netns::enter(&ns).map_err(io::Error::other)?;
        }
        f()
    })
}

/// Sends as fast as TCP allows on `flows` connections until `until`.
/// Returns the bytes written.
pub fn tcp_send(to: SocketAddr, flows: usize, until: &Until) -> io::Result<u64> {
    let mut handles = Vec::with_capacity(flows);
    for _ in 0..flows.max(1) {
        let stream = connect_retrying(to, until)?;
        let until = until.clone();
        handles.push(thread::spawn(move || send_until(stream, &until)));
    }
    total_sent(handles)
}

/// Sends on `flows` light, bursty connections until `until`: each writes
/// [`LIGHT_CHUNK`] bytes at once, then waits, for an average of
/// `bits_per_sec` (a paced stream or a train of requests beside bulk
/// flows). Returns the bytes written.
pub fn tcp_send_light(
    to: SocketAddr,
    flows: usize,
    bits_per_sec: u64,
    until: &Until,
) -> io::Result<u64> {
    let period = Duration::from_secs_f64(LIGHT_CHUNK as f64 * 8.0 / bits_per_sec.max(1) as f64);
    let mut handles = Vec::with_capacity(flows);
    for _ in 0..flows {
        let stream = connect_retrying(to, until)?;
        let until = until.clone();
        handles.push(thread::spawn(move || send_paced(stream, period, &until)));
    }
    total_sent(handles)
}

fn total_sent(handles: Vec<JoinHandle<io::Result<u64>>>) -> io::Result<u64> {
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| io::Error::other("sender thread panicked"))??;
    }
    Ok(total)
}

/// The sink may not be listening yet when the source starts, and a fresh
/// link may lose the first neighbour solicitation (the SYN then waits for
/// the next one, a second later): retry until the deadline.
fn connect_retrying(to: SocketAddr, until: &Until) -> io::Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&to, POLL * 30) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
                ) && !until.reached() =>
            {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn send_until(mut stream: TcpStream, until: &Until) -> io::Result<u64> {
    stream.set_write_timeout(Some(POLL))?;
    let buf = vec![0x5a_u8; TCP_CHUNK];
    let mut sent = 0u64;
    while !until.reached() {
        match stream.write(&buf) {
            Ok(n) => sent += n as u64,
            // a timeout that lets us look at the deadline, or a signal: go on
            Err(e) if is_retry(&e) => {}
            // the sink went away: that ends this flow, not the run
            Err(e) if is_peer_gone(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Writes one chunk every `period`; a flow held back by its limit does not
/// make up more than one period afterwards (no catch-up burst).
fn send_paced(mut stream: TcpStream, period: Duration, until: &Until) -> io::Result<u64> {
    stream.set_write_timeout(Some(POLL))?;
    let buf = vec![0x5a_u8; LIGHT_CHUNK];
    let mut sent = 0u64;
    let mut next = Instant::now();
    while !until.reached() {
        let mut written = 0;
        while written < buf.len() && !until.reached() {
            match stream.write(&buf[written..]) {
                Ok(n) => written += n,
                Err(e) if is_retry(&e) => {}
                Err(e) if is_peer_gone(&e) => return Ok(sent + written as u64),
                Err(e) => return Err(e),
            }
        }
        sent += written as u64;
        next += period;
        if let Some(floor) = Instant::now().checked_sub(period) {
            next = next.max(floor);
        }
        while !until.reached() {
            let now = Instant::now();
            if now >= next {
                break;
            }
            thread::sleep((next - now).min(POLL));
        }
    }
    Ok(sent)
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Accepts and reads connections on `listener` until `until`, counting
/// what each sends into `meter` as a flow of its own (the caller's clone of
/// the meter has each connection's bytes: [`Meter::flow_bytes`]).
pub fn tcp_sink(listener: TcpListener, meter: Meter, until: &Until) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut readers = Vec::new();
    while !until.reached() {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(POLL))?;
                let meter = meter.flow();
                let until = until.clone();
                readers.push(thread::spawn(move || read_until(stream, &meter, &until)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
    for r in readers {
        r.join()
            .map_err(|_| io::Error::other("reader thread panicked"))??;
    }
    Ok(())
}

fn read_until(mut stream: TcpStream, meter: &FlowMeter, until: &Until) -> io::Result<()> {
    let mut buf = vec![0u8; TCP_CHUNK];
    while !until.reached() {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => meter.add(n as u64),
            // a timeout that lets us look at the deadline, or a signal: go on
            Err(e) if is_retry(&e) => {}
            Err(e) if is_peer_gone(&e) => break,
            Err(e) => return Err(e),
        }
    }
    if let Some(clamp) = window_clamp(&stream) {
        meter.set_window_clamp(clamp);
    }
    Ok(())
}

/// A TCP socket's receive window clamp (`TCP_WINDOW_CLAMP`), which nix has
/// no option for.
fn window_clamp(stream: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is the open stream's; value and len are ours
    // and len holds value's size
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_WINDOW_CLAMP,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| u64::try_from(value).unwrap_or(0))
}

/// Sends UDP datagrams of [`UDP_PAYLOAD`] bytes at `bits_per_sec` (counting
/// payload) until `until`. Returns the datagrams sent. From
/// [`UDP_GSO_FROM_BPS`] on, they leave [`UDP_GSO_BATCH`] to a send, as one
/// GSO packet that the stack cuts into datagrams (UDP_SEGMENT), as QUIC
/// senders do.
pub fn udp_send(to: SocketAddr, bits_per_sec: u64, until: &Until) -> io::Result<u64> {
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().map_err(io::Error::other)?
    } else {
        "0.0.0.0:0".parse().map_err(io::Error::other)?
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(to)?;
    let batch = if bits_per_sec >= UDP_GSO_FROM_BPS
        && setsockopt(
            &socket,
            sockopt::UdpGsoSegment,
            &(UDP_PAYLOAD as libc::c_int),
        )
        .is_ok()
    {
        UDP_GSO_BATCH
    } else {
        1
    };
    let buf = vec![0xa5_u8; UDP_PAYLOAD * batch];
    let per_sec = (bits_per_sec as f64 / 8.0 / UDP_PAYLOAD as f64).max(1.0);
    let start = Instant::now();
    let mut sent = 0u64;
    while !until.reached() {
        let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
        if sent >= due {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        match socket.send(&buf) {
            Ok(_) => sent += batch as u64,
            // a full socket buffer or a refused datagram: it counts as offered
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
                ) || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                sent += batch as u64
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Counts the payload of every datagram arriving on `socket` into `meter`.
pub fn udp_sink(socket: UdpSocket, meter: Meter, until: &Until) -> io::Result<()> {
    socket.set_read_timeout(Some(POLL))?;
    // Room for a whole burst of the limit: a token bucket that refilled while
    // the sender was off the CPU passes up to its depth (25 ms at 500 Mbit/s
    // is 1.5 MiB) at once, more than the default 208 KiB receive buffer, and
    // datagrams the receiver's socket drops are not the limit's doing.
    // Forcing past rmem_max needs root; anyone else keeps the default.
    let _ = setsockopt(&socket, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER);
    // a GSO sender's datagrams may arrive still together (UDP_GRO): read
    // them in one go rather than have the stack cut them up first
    let _ = setsockopt(&socket, sockopt::UdpGroSegment, &true);
    let mut buf = vec![0u8; 65536];
    while !until.reached() {
        match socket.recv(&mut buf) {
            Ok(n) => meter.add(n as u64),
            // a timeout that lets us look at the deadline, or a signal: go on
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Jain's fairness index of per-flow amounts: 1 when all are equal, 1/n when
/// one flow has everything. None for no flows or nothing received.
pub fn jain_index(amounts: &[u64]) -> Option<f64> {
    let n = amounts.len() as f64;
    let sum: f64 = amounts.iter().map(|a| *a as f64).sum();
    let squares: f64 = amounts.iter().map(|a| (*a as f64).powi(2)).sum();
    (n > 0.0 && squares > 0.0).then(|| sum * sum / (n * squares))
}

#[cfg(test)]
mod jain_tests {
    use super::jain_index;

    #[test]
    fn jain_index_bounds() {
        assert_eq!(jain_index(&[]), None);
        assert_eq!(jain_index(&[5, 5, 5, 5]), Some(1.0));
        let one_hog = jain_index(&[100, 0, 0, 0]).unwrap_or(0.0);
        assert!((one_hog - 0.25).abs() < 1e-9, "{one_hog}");
    }
}
