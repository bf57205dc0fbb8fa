//! A limit put on flows that are already running: TCP flows run unlimited
//! for two seconds, sent from a cgroup (egress) or to a receiver in it
//! (ingress), then the cgroup is limited (podshaper: as the daemon limits a
//! cgroup, its open sockets paced first, or their receive windows clamped
//! and the ingress queue built before the policer; tbf: `tc qdisc add` on
//! the running sender's veth, as the CNI bandwidth plugin would if it could
//! limit a running pod); the receiver's rate in each second after that.
//! Beside it, podshaper on the same flows started under the limit.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::meter::Seconds;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{netns, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{ingress_queue, DirectionLimit, Limits, Shaper, TransientCgroup};

use crate::error::Result;
use crate::lab::{self, egress_limit, tbf_args, tc, Sink};
use crate::options::{Direction, Mechanism, Traffic};
use crate::report::{OpenFlows, When};

/// Seconds of traffic before the limit and after it.
const BEFORE: u64 = 2;
const AFTER: u64 = 7;

/// One run: the direction, the limit, the flows, and who limits them when.
pub struct OpenCell {
    pub direction: Direction,
    pub rate: Rate,
    pub flows: usize,
    pub mechanism: Mechanism,
    pub when: When,
}

/// `queue`: the pinned flow classifier, when ingress has the pod's queue
/// in front of the policer (as the daemon builds it by default).
pub fn run(
    shaper: &mut Shaper,
    cell: &OpenCell,
    queue: Option<&Path>,
    cc: &str,
) -> Result<OpenFlows> {
    lab::settle();
    let lab = NetnsPair::create("open")?;
    lab.set_congestion_control(cc)?;
    let cgroup = TransientCgroup::create(&format!("podshaper-open-{}", std::process::id()))?;
    let id = cgroup.cgroup().id();
    let (rate, flows, egress) = (cell.rate, cell.flows, cell.direction == Direction::Egress);
    let limit = DirectionLimit::new(rate, None);
    let mut attachment = None;
    let mut limit_now = |shaper: &mut Shaper| -> Result<()> {
        let ns = || std::fs::File::open(netns::netns_path(lab.a()));
        match (cell.mechanism, egress) {
            (Mechanism::Podshaper, true) => {
                // as the daemon does (Node::apply): open flows paced first
                shaper.ready_senders(id, &limit, &[ns()?])?;
                shaper.set_limits(id, &egress_limit(rate))?;
                attachment = Some(shaper.attach(cgroup.cgroup())?);
            }
            (Mechanism::Podshaper, false) => {
                // as the daemon does (Node::queue_open_flows, Node::apply):
                // windows clamped for the queue, the queue, then the policer
                let ns = [ns()?];
                if let Some(classifier) = queue {
                    ingress_queue::let_windows_shrink(&ns[0], true)?;
                    shaper.clamp_receivers(id, &limit, &ns)?;
                    ingress_queue::install(&ns[0], &limit, classifier, false)?;
                    shaper.set_ingress_queued(id, true)?;
                }
                let limits = Limits {
                    egress: None,
                    ingress: Some(limit),
                };
                shaper.set_limits(id, &limits)?;
                attachment = Some(shaper.attach(cgroup.cgroup())?);
                shaper.ready_receivers(id, &ns)?;
            }
            // the CNI bandwidth plugin's queue: on the sending side's veth
            (Mechanism::Tbf, _) => tc(
                if egress { lab.a() } else { lab.b() },
                &tbf_args("add", rate),
            )?,
            (Mechanism::Unlimited, _) => {}
        }
        Ok(())
    };
    if cell.when == When::BeforeFlows {
        limit_now(shaper)?;
    }
    let total = Duration::from_secs(BEFORE + AFTER);
    let traffic = Traffic::Tcp(flows);
    let per_second = if egress {
        let to = SocketAddr::new(NetnsPair::addr_b(false), 5304);
        let sink = Sink::start(&lab, traffic, to, total + Duration::from_secs(2));
        let seconds = (total + Duration::from_secs(1)).as_secs().to_string();
        let mut child = lab::start_senders(&lab, cgroup.cgroup(), traffic, 0, &seconds, 0.0, to)?;
        thread::sleep(Duration::from_millis(300));
        let mut per_second = Seconds::start(&sink.meter);
        let start = Instant::now();
        let mut limited = cell.when == When::BeforeFlows;
        while start.elapsed() < total + Duration::from_millis(50) {
            per_second.poll(&sink.meter);
            if !limited && start.elapsed() >= Duration::from_secs(BEFORE) {
                limit_now(shaper)?;
                limited = true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        sink.stop();
        per_second.bits_per_second()
    } else {
        // the receiver in the cgroup reports its seconds; the senders in
        // the other namespace start 200 ms after it
        let listen = SocketAddr::new(NetnsPair::addr_a(false), 5304);
        let receiver = lab::spawn_receiver(
            "tcp-recv",
            lab.a(),
            cgroup.cgroup(),
            listen,
            (total.as_secs_f64(), 0.0),
            &[],
        )?;
        let start = Instant::now();
        let until = Until::after(total + Duration::from_secs(1));
        let source = {
            let until = until.clone();
            traffic::spawn_in(Some(lab.b().to_string()), move || {
                thread::sleep(Duration::from_millis(200));
                traffic::tcp_send(listen, flows, &until).map(|_| ())
            })
        };
        if cell.when == When::OnRunningFlows {
            thread::sleep(Duration::from_secs(BEFORE).saturating_sub(start.elapsed()));
            limit_now(shaper)?;
        }
        let report = lab::receiver_report(receiver);
        until.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = source.join();
        report?.per_second_bits
    };
    if let Some(a) = attachment {
        lab::unlimit(shaper, id, a)?;
    }
    let target = rate.bits_per_sec() as f64;
    Ok(OpenFlows::new(
        cell.direction,
        rate,
        flows,
        cell.mechanism,
        cell.when,
        per_second
            .iter()
            .skip(BEFORE as usize)
            .map(|b| b / target)
            .collect(),
    ))
}
