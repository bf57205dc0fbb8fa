//! TUN devices with virtio-net headers, and the loop that moves packets from
//! one such device to another after holding each for a fixed time.
//!
//! With `IFF_VNET_HDR` and the TSO/USO offloads switched on, the kernel
//! hands a GSO packet (up to 64 KiB of TCP or UDP segments) to one `read`
//! and takes it back whole from one `write`, checksum still to be filled:
//! the forwarder pays per super-packet, not per 1500-byte segment.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest packet a read may return: a 64 KiB GSO packet, its
/// virtio-net header, and room to spare (a read that fills the buffer is
/// counted as an error: the packet may have been cut).
const BUFFER: usize = 192 * 1024;
/// Reads in a row before the due packets are released again.
const BATCH: usize = 64;
/// The longest a forwarder sleeps before it looks at its stop flag.
const IDLE: Duration = Duration::from_millis(20);

/// Opens (creates) the TUN device `name` in the calling thread's network
/// namespace: layer 3, no packet-information prefix, a virtio-net header
/// before each packet, non-blocking, with checksum and segmentation
/// offloads (USO where the kernel has it, 6.2 and later). The device goes
/// away when the file is closed.
pub(crate) fn open(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a usable interface name"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeros is a valid value of it
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
    // SAFETY: the descriptor is the open file's, and TUNSETIFF reads and
    // writes one ifreq, which `request` is
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    if set_offload(&file, tso | libc::TUN_F_USO4 | libc::TUN_F_USO6).is_err() {
        set_offload(&file, tso)?;
    }
    Ok(file)
}

fn set_offload(file: &File, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: the descriptor is the open file's; TUNSETOFFLOAD takes its
    // argument by value
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            flags as libc::c_ulong,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What one direction of a delay line did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// packets dropped because the queue held its limit
    pub dropped: AtomicU64,
    /// packets lost to a failed read or write
    pub errors: AtomicU64,
    /// the most bytes the queue held at once
    pub peak_bytes: AtomicU64,
}

/// One direction: packets read from `from` wait `hold` in arrival order
/// (with one fixed hold, arrival order is release order, so a FIFO is the
/// whole timer) and are written to `to`. A packet that would take the
/// queue above `limit` bytes is dropped and counted. Runs until `stop`.
pub(crate) fn forward(
    from: &File,
    mut to: &File,
    hold: Duration,
    limit: usize,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued = 0usize;
    let mut buffer = vec![0u8; BUFFER];
    let mut reader = from;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, packet)) = queue.pop_front() else {
                break;
            };
            queued -= packet.len();
            match to.write(&packet) {
                // a TUN device takes a packet whole or not at all
                Ok(n) if n == packet.len() => {
                    counters.packets.fetch_add(1, Ordering::Relaxed);
                    counters
                        .bytes
                        .fetch_add(packet.len() as u64, Ordering::Relaxed);
                }
                Ok(n) => {
                    tracing::debug!(n, len = packet.len(), "delay line: a short write");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "delay line: a write failed");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wait = queue
            .front()
            .map_or(IDLE, |(due, _)| due.saturating_duration_since(now))
            .min(IDLE);
        if !wait_readable(from, wait) {
            continue;
        }
        for _ in 0..BATCH {
            match reader.read(&mut buffer) {
                Ok(n) if n == 0 || n >= BUFFER => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(n) => {
                    if queued + n > limit {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    queued += n;
                    counters
                        .peak_bytes
                        .fetch_max(queued as u64, Ordering::Relaxed);
                    queue.push_back((Instant::now() + hold, buffer[..n].to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "delay line: a read failed");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// Waits at most `timeout` (to the nanosecond, unlike poll's milliseconds)
/// for `file` to have a packet. False if it has none.
fn wait_readable(file: &File, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both ours for the
    // call; no signal mask
    let ready = unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
    ready > 0
}

/// Lets the calling thread's timers fire within a microsecond of when they
/// are due (the default slack is 50 us), so that holds are exact.
pub(crate) fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and touches no memory
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_names_the_kernel_would_not_take() {
        for bad in ["", "a-name-much-too-long"] {
            let e = open(bad).err().map(|e| e.kind());
            assert_eq!(e, Some(io::ErrorKind::InvalidInput), "{bad:?}");
        }
    }
}
