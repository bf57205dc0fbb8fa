//! The short-connection traffic (`podshaper_netlab::short`, the bench's
//! `--short`): between two network namespaces, with no limit, it completes
//! thousands of connections a second (at least 2,000; 5,700-7,100 on 2
//! cores beside a compiler), the receiver gets each connection's bytes, and
//! no socket is left behind (no TIME_WAIT on either side).

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::common::{traffic_turn, unique_port};
use podshaper_netlab::short::{self, ShortConnections};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{Meter, NetnsPair};

/// The sockets in network namespace `ns` with `port` at either end
/// (`/proc/net/tcp` and `tcp6`, listeners and TIME_WAIT included).
fn sockets_on_port(ns: &str, port: u16) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/net/tcp",
            "/proc/net/tcp6",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot read {ns}'s sockets: {e}"));
    let port = format!("{port:04X}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...: ends as ADDR:PORT in hex
            fields.get(1..3).is_some_and(|ends| {
                ends.iter()
                    .any(|end| end.rsplit(':').next() == Some(port.as_str()))
            })
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn short_connections_complete_thousands_a_second_and_leave_no_sockets() {
    require_root!();
    let _turn = traffic_turn();
    let lab = NetnsPair::create("short").expect("lab");
    let port = unique_port();
    let to = SocketAddr::new(NetnsPair::addr_b(false), port);
    let shape = ShortConnections {
        size: 64 * 1024,
        concurrency: 32,
    };
    let listener = traffic::spawn_in(Some(lab.b().to_string()), move || TcpListener::bind(to))
        .join()
        .unwrap_or_else(|_| panic!("binding panicked"))
        .unwrap_or_else(|e| panic!("cannot listen on {to}: {e}"));
    let meter = Meter::default();
    let sink_until = Until::after(Duration::from_secs(3));
    let sink = {
        let (meter, until) = (meter.clone(), sink_until.clone());
        thread::spawn(move || short::short_sink(listener, meter, shape.concurrency, &until))
    };
    let source = traffic::spawn_in(Some(lab.a().to_string()), move || {
        short::short_send(
            to,
            shape,
            Duration::ZERO,
            &Until::after(Duration::from_secs(2)),
        )
    });
    let report = source
        .join()
        .unwrap_or_else(|_| panic!("the source panicked"))
        .unwrap_or_else(|e| panic!("the source failed: {e}"));
    sink_until
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    sink.join()
        .unwrap_or_else(|_| panic!("the sink panicked"))
        .unwrap_or_else(|e| panic!("the sink failed: {e}"));
    eprintln!("{report:?}, received {} bytes", meter.read().bytes);

    assert!(
        report.connections_per_second >= 2000.0 && report.connections >= 4000,
        "{report:?}"
    );
    assert_eq!(report.connections, report.total_connections, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.completion_p50_ms > 0.0, "{report:?}");
    assert!(
        report.completion_p99_ms >= report.completion_p50_ms
            && report.completion_max_ms >= report.completion_p99_ms,
        "{report:?}"
    );
    // every completed connection's bytes arrived, and at most one batch of
    // connections in flight at the end besides
    let received = meter.read().bytes;
    let completed = report.total_connections * shape.size;
    let in_flight = shape.concurrency as u64 * shape.size;
    assert!(
        received >= completed && received <= completed + in_flight,
        "received {received} bytes, {} connections of {} completed: {report:?}",
        report.total_connections,
        shape.size
    );
    // the source's close is a reset, the sink sends no FIN: no TIME_WAIT
    thread::sleep(Duration::from_millis(200));
    for ns in [lab.a(), lab.b()] {
        let left = sockets_on_port(ns, port);
        assert!(left.is_empty(), "sockets left in {ns}: {left:#?}");
    }
}
