//! A limit put on flows that are already running: TCP flows send unlimited
//! from a cgroup for two seconds, then the cgroup is limited (podshaper: as
//! the daemon limits a cgroup, its open sockets paced first; tbf: `tc qdisc
//! add` on the running veth, as the CNI bandwidth plugin would if it could
//! limit a running pod); the receiver's rate in each second after that.
//! Beside it, podshaper on the same flows started under the limit.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use podshaper_netlab::meter::Seconds;
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::{netns, Meter, NetnsPair};
use podshaper_rate::Rate;
use podshaper_shaper::{DirectionLimit, Limits, Shaper, TransientCgroup};

use super::bench::{tbf_args, tc, Mechanism};

/// Seconds of traffic before the limit and after it.
const BEFORE: u64 = 2;
const AFTER: u64 = 7;

/// When the limit comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// two seconds into the flows
    OnRunningFlows,
    /// before they start (the yardstick)
    BeforeFlows,
}

pub(super) struct OpenRun {
    pub mechanism: Mechanism,
    pub when: When,
    pub rate: Rate,
    pub flows: usize,
    /// the receiver's rate in each second after the limit, as a fraction of it
    pub seconds: Vec<f64>,
}

impl OpenRun {
    /// The seconds from the second one after the limit on.
    pub fn held(&self) -> &[f64] {
        self.seconds.get(1..).unwrap_or_default()
    }

    pub fn mean(&self) -> f64 {
        let held = self.held();
        held.iter().sum::<f64>() / held.len().max(1) as f64
    }

    pub fn worst(&self) -> f64 {
        self.held().iter().cloned().fold(f64::INFINITY, f64::min)
    }
}

pub(super) fn run(
    shaper: &mut Shaper,
    rate: Rate,
    flows: usize,
    mechanism: Mechanism,
    when: When,
    cc: &str,
) -> Result<OpenRun> {
    super::bench::settle();
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
                shaper.set_limits(
                    id,
                    &Limits {
                        egress: Some(limit),
                        ingress: None,
                    },
                )?;
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
    let meter = Meter::default();
    let total = Duration::from_secs(BEFORE + AFTER);
    let until = Until::after(total + Duration::from_secs(2));
    let sink = {
        let (meter, until) = (meter.clone(), until.clone());
        traffic::spawn_in(Some(lab.b().to_string()), move || {
            traffic::tcp_sink(TcpListener::bind(to)?, meter, &until)
        })
    };
    thread::sleep(Duration::from_millis(200));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["traffic", "tcp-send", "--netns", lab.a()])
        .args([
            "--seconds",
            &(total + Duration::from_secs(1)).as_secs().to_string(),
        ])
        .args(["--flows", &flows.to_string(), "--to", &to.to_string()])
        .stdout(Stdio::null());
    cgroup.cgroup().spawn_inside(&mut cmd)?;
    let mut child = cmd.spawn().context("cannot start the sender")?;
    thread::sleep(Duration::from_millis(300));
    let mut seconds = Seconds::start(&meter);
    let start = Instant::now();
    let mut limited = when == When::BeforeFlows;
    while start.elapsed() < total + Duration::from_millis(50) {
        seconds.poll(&meter);
        if !limited && start.elapsed() >= Duration::from_secs(BEFORE) {
            limit_now(shaper)?;
            limited = true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    until.stop.store(true, Ordering::Relaxed);
    let _ = sink.join();
    if let Some(a) = attachment {
        shaper.detach(a)?;
        shaper.remove_limits(id)?;
    }
    let target = rate.bits_per_sec() as f64;
    Ok(OpenRun {
        mechanism,
        when,
        rate,
        flows,
        seconds: seconds
            .bits_per_second()
            .iter()
            .skip(BEFORE as usize)
            .map(|b| b / target)
            .collect(),
    })
}
