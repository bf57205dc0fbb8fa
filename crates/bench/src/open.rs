//! A limit put on flows that are already running: TCP flows send unlimited
//! from a cgroup for two seconds, then the cgroup is limited (podshaper: as
//! the daemon limits a cgroup, its open sockets paced first; tbf: `tc qdisc
//! add` on the running veth, as the CNI bandwidth plugin would if it could
//! limit a running pod); the receiver's rate in each second after that.
//! Beside it, podshaper on the same flows started under the limit.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use podshaper_netlab::meter::Seconds;
use podshaper_netlab::{netns, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{DirectionLimit, Shaper, TransientCgroup};

use crate::error::Result;
use crate::lab::{self, egress_limit, tbf_args, tc, Sink};
use crate::options::{Mechanism, Traffic};
use crate::report::{OpenFlows, When};

/// Seconds of traffic before the limit and after it.
const BEFORE: u64 = 2;
const AFTER: u64 = 7;

pub fn run(
    shaper: &mut Shaper,
    rate: Rate,
    flows: usize,
    mechanism: Mechanism,
    when: When,
    cc: &str,
) -> Result<OpenFlows> {
    lab::settle();
    let lab = NetnsPair::create("open")?;
    lab.set_congestion_control(cc)?;
    let cgroup = TransientCgroup::create(&format!("podshaper-open-{}", std::process::id()))?;
    let id = cgroup.cgroup().id();
    let limit = DirectionLimit::new(rate, None);
    let mut attachment = None;
    let mut limit_now = |shaper: &mut Shaper| -> Result<()> {
        match mechanism {
            Mechanism::Podshaper => {
                // as the daemon does (Node::apply): open flows paced first
                let ns = std::fs::File::open(netns::netns_path(lab.a()))?;
                shaper.ready_senders(id, &limit, &[ns])?;
                shaper.set_limits(id, &egress_limit(rate))?;
                attachment = Some(shaper.attach(cgroup.cgroup())?);
            }
            Mechanism::Tbf => tc(lab.a(), &tbf_args("add", rate))?,
            Mechanism::Unlimited => {}
        }
        Ok(())
    };
    if when == When::BeforeFlows {
        limit_now(shaper)?;
    }
    let to = SocketAddr::new(NetnsPair::addr_b(false), 5304);
    let total = Duration::from_secs(BEFORE + AFTER);
    let traffic = Traffic::Tcp(flows);
    let sink = Sink::start(&lab, traffic, to, total + Duration::from_secs(2));
    let seconds = (total + Duration::from_secs(1)).as_secs().to_string();
    let mut child = lab::start_senders(&lab, cgroup.cgroup(), traffic, 0, &seconds, 0.0, to)?;
    thread::sleep(Duration::from_millis(300));
    let mut per_second = Seconds::start(&sink.meter);
    let start = Instant::now();
    let mut limited = when == When::BeforeFlows;
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
    if let Some(a) = attachment {
        lab::unlimit(shaper, id, a)?;
    }
    let target = rate.bits_per_sec() as f64;
    Ok(OpenFlows::new(
        rate,
        flows,
        mechanism,
        when,
        per_second
            .bits_per_second()
            .iter()
            .skip(BEFORE as usize)
            .map(|b| b / target)
            .collect(),
    ))
}
