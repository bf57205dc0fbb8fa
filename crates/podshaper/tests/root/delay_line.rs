//! The lab's delay line (`podshaper_netlab::delay`, the bench's `--rtt`):
//! a request/response crosses it in the configured round trip, within
//! [D, D + 2 ms], and one TCP flow with no limit but its window gets
//! through it at 10 ms at more than 500 Mbit/s without a packet lost on
//! the way. Without a delay line, a round trip takes under a millisecond.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::common::{traffic_turn, unique_port};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{latency, window, Meter, NetnsPair};

/// Listens at `at` in namespace `ns` (the listener then serves from any
/// thread).
fn listen_in(ns: &str, at: SocketAddr) -> TcpListener {
    traffic::spawn_in(Some(ns.to_string()), move || TcpListener::bind(at))
        .join()
        .unwrap_or_else(|_| panic!("binding panicked"))
        .unwrap_or_else(|e| panic!("cannot listen on {at} in {}: {e}", at.ip()))
}

/// Panics unless neither direction of the lab's delay line lost a packet.
fn assert_nothing_lost(lab: &NetnsPair) {
    let line = lab
        .delay()
        .unwrap_or_else(|| panic!("the lab has no delay line"));
    let (a_to_b, b_to_a) = line.counts();
    eprintln!(
        "delay line {:?}: a->b {a_to_b:?}, b->a {b_to_a:?}",
        line.config()
    );
    assert!(a_to_b.packets > 0 && b_to_a.packets > 0, "nothing crossed");
    assert_eq!(
        (a_to_b.lost(), b_to_a.lost()),
        (0, 0),
        "lost: a->b {a_to_b:?}, b->a {b_to_a:?}"
    );
}

#[test]
fn a_round_trip_through_the_delay_line_takes_the_configured_time() {
    require_root!();
    let _turn = traffic_turn();
    for rtt_ms in [10, 50] {
        let rtt = Duration::from_millis(rtt_ms);
        let lab = NetnsPair::create_with_rtt("delay", rtt).expect("lab with a delay line");
        let at = SocketAddr::new(NetnsPair::addr_a(false), unique_port());
        let listener = listen_in(lab.a(), at);
        let until = Until::after(Duration::from_secs(2));
        let echo = {
            let until = until.clone();
            thread::spawn(move || latency::tcp_echo(listener, &until))
        };
        let pings = traffic::spawn_in(Some(lab.b().to_string()), move || {
            latency::tcp_ping(at, Duration::from_millis(20), &until)
        })
        .join()
        .unwrap_or_else(|_| panic!("the pinger panicked"))
        .unwrap_or_else(|e| panic!("cannot ping {at}: {e}"));
        let _ = echo.join();
        let mut rtts: Vec<Duration> = pings.into_iter().map(|(_, rtt)| rtt).collect();
        let min = rtts.iter().min().copied().unwrap_or_default();
        let p50 = latency::quantile(&mut rtts, 0.5);
        let p99 = latency::quantile(&mut rtts, 0.99);
        eprintln!(
            "rtt {rtt_ms} ms: {} round trips, min {min:?} p50 {p50:?} p99 {p99:?}",
            rtts.len()
        );
        assert!(rtts.len() >= 10, "too few round trips: {}", rtts.len());
        assert!(min >= rtt, "a round trip shorter than {rtt:?}: {min:?}");
        assert!(
            p50 <= rtt + Duration::from_millis(2),
            "the median round trip {p50:?} is over {rtt:?} + 2 ms"
        );
        assert_nothing_lost(&lab);
    }
}

/// Without a delay line the sides are one veth apart: each addresses the
/// other's veth0 directly (its static neighbour entry), and a round trip
/// takes well under a millisecond.
#[test]
fn a_pair_without_a_delay_line_answers_within_a_millisecond() {
    require_root!();
    let _turn = traffic_turn();
    let lab = NetnsPair::create("nodelay").expect("lab");
    assert!(
        lab.delay().is_none(),
        "a delay line where none was asked for"
    );
    let at = SocketAddr::new(NetnsPair::addr_a(false), unique_port());
    let listener = listen_in(lab.a(), at);
    let until = Until::after(Duration::from_secs(1));
    let echo = {
        let until = until.clone();
        thread::spawn(move || latency::tcp_echo(listener, &until))
    };
    let pings = traffic::spawn_in(Some(lab.b().to_string()), move || {
        latency::tcp_ping(at, Duration::from_millis(20), &until)
    })
    .join()
    .unwrap_or_else(|_| panic!("the pinger panicked"))
    .unwrap_or_else(|e| panic!("cannot ping {at}: {e}"));
    let _ = echo.join();
    let mut rtts: Vec<Duration> = pings.into_iter().map(|(_, rtt)| rtt).collect();
    let p50 = latency::quantile(&mut rtts, 0.5);
    eprintln!("no delay line: {} round trips, p50 {p50:?}", rtts.len());
    assert!(rtts.len() >= 10, "too few round trips: {}", rtts.len());
    assert!(
        p50 < Duration::from_millis(1),
        "the median round trip {p50:?} is not under 1 ms"
    );
}

#[test]
fn one_tcp_flow_crosses_a_10_ms_delay_line_at_over_500_mbit_s() {
    require_root!();
    let _turn = traffic_turn();
    let lab = NetnsPair::create_with_rtt("delay", Duration::from_millis(10))
        .expect("lab with a delay line");
    // A receive buffer of at most 2 MiB: a window that 1.6 Gbit/s fills
    // in 10 ms. With no window limit, a flow grows until something on the
    // way drops; with this one, any loss is the line's own.
    let out = Command::new("ip")
        .args(["netns", "exec", lab.b(), "sysctl", "-qw"])
        .arg("net.ipv4.tcp_rmem=4096 131072 2097152")
        .output()
        .unwrap_or_else(|e| panic!("cannot run sysctl: {e}"));
    assert!(out.status.success(), "sysctl: {out:?}");
    let to = SocketAddr::new(NetnsPair::addr_b(false), unique_port());
    let listener = listen_in(lab.b(), to);
    let meter = Meter::default();
    let sink_until = Until::after(Duration::from_secs(6));
    let sink = {
        let (meter, until) = (meter.clone(), sink_until.clone());
        thread::spawn(move || traffic::tcp_sink(listener, meter, &until))
    };
    let source_until = Until::after(Duration::from_secs(4));
    let source = {
        let until = source_until.clone();
        traffic::spawn_in(Some(lab.a().to_string()), move || {
            traffic::tcp_send(to, 1, &until)
        })
    };
    // the first second is the flow's slow start
    let measured = window::measure(
        &meter,
        Duration::from_secs(1),
        &Until::after(Duration::from_millis(3900)),
    );
    let sent = source.join();
    sink_until
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sink.join();
    let mbit = measured.bits_per_sec() / 1e6;
    eprintln!(
        "one flow through 10 ms: {mbit:.0} Mbit/s after the first second, per second {:?}",
        measured.per_second
    );
    if let Ok(Err(e)) = sent {
        panic!("the sender failed: {e}");
    }
    assert!(mbit >= 500.0, "{mbit:.0} Mbit/s, under 500");
    assert_nothing_lost(&lab);
}
