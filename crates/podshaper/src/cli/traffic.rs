//! `podshaper traffic …` (hidden): the lab's traffic source and sink as a
//! command, so that it can be started inside a limited cgroup.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podshaper_netlab::short::{self, ShortConnections};
use podshaper_netlab::traffic::{self, Until};
use podshaper_netlab::window::{self, ReceiverReport};
use podshaper_netlab::{netns, Meter};
use podshaper_rate::{ByteSize, Rate};

#[derive(Debug, Subcommand)]
pub enum TrafficCommand {
    /// Send TCP as fast as allowed.
    TcpSend {
        #[command(flatten)]
        common: Common,
        /// Where to send.
        #[arg(long)]
        to: SocketAddr,
        /// Parallel connections (0: only the light ones).
        #[arg(long, default_value_t = 1)]
        flows: usize,
        /// Light connections beside them, each writing 16 KiB at a time
        /// at an average of --light-rate.
        #[arg(long, default_value_t = 0, requires = "light_rate")]
        light: usize,
        /// Each light connection's average rate (e.g. 400K).
        #[arg(long)]
        light_rate: Option<String>,
    },
    /// Receive TCP and report the rate.
    TcpRecv {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send UDP at a fixed rate (bits/s of payload).
    UdpSend {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        rate: String,
    },
    /// Receive UDP and report the rate.
    UdpRecv {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Open short TCP connections, --concurrency of them at once, each
    /// writing --size bytes and waiting for the receiver's answer; print
    /// connections completed after --skip and their completion times.
    ShortSend {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        to: SocketAddr,
        /// Bytes each connection writes (e.g. 64Ki).
        #[arg(long)]
        size: ByteSize,
        /// Connections open at once.
        #[arg(long)]
        concurrency: usize,
    },
    /// Receive short TCP connections and report the rate (of --seconds;
    /// it goes on answering for a second more).
    ShortRecv {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        listen: SocketAddr,
        /// Connections read at once: at least the sender's --concurrency.
        #[arg(long)]
        concurrency: usize,
    },
    /// Echo small TCP messages back (the far end of a latency probe).
    TcpEcho {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Network namespace to run in (by `ip netns` name).
    #[arg(long)]
    netns: Option<String>,
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Receivers, and short-send: seconds at the start left out of what
    /// they report.
    #[arg(long, default_value_t = 1.0)]
    skip: f64,
}

impl Common {
    fn enter(&self) -> Result<Until> {
        if let Some(ns) = &self.netns {
            // Main thread, before any other exists: every later thread is inside too.
            netns::enter(ns)?;
        }
        Ok(Until::after(secs(self.seconds)?))
    }
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid duration {s} s"))
}

pub fn run(command: TrafficCommand) -> Result<ExitCode> {
    match command {
        TrafficCommand::TcpSend {
            common,
            to,
            flows,
            light,
            light_rate,
        } => {
            let light_rate: Option<Rate> = light_rate.map(|r| r.parse()).transpose()?;
            let until = common.enter()?;
            let light_sender = light_rate.filter(|_| light > 0).map(|rate| {
                let until = until.clone();
                thread::spawn(move || {
                    traffic::tcp_send_light(to, light, rate.bits_per_sec(), &until)
                })
            });
            let mut sent = if flows > 0 {
                traffic::tcp_send(to, flows, &until).with_context(|| format!("sending to {to}"))?
            } else {
                0
            };
            if let Some(handle) = light_sender {
                sent += handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the light flows' thread panicked"))?
                    .with_context(|| format!("sending light flows to {to}"))?;
            }
            println!("{{\"bytes_sent\":{sent}}}");
        }
        TrafficCommand::UdpSend { common, to, rate } => {
            let rate: Rate = rate.parse()?;
            let until = common.enter()?;
            let sent = traffic::udp_send(to, rate.bits_per_sec(), &until)
                .with_context(|| format!("sending to {to}"))?;
            println!("{{\"datagrams_sent\":{sent}}}");
        }
        TrafficCommand::TcpRecv { common, listen } => {
            receive(&common, listen, TcpListener::bind, traffic::tcp_sink)?;
        }
        TrafficCommand::ShortSend {
            common,
            to,
            size,
            concurrency,
        } => {
            let shape = ShortConnections {
                size: size.bytes(),
                concurrency,
            };
            let until = common.enter()?;
            let report = short::short_send(to, shape, secs(common.skip)?, &until)
                .with_context(|| format!("opening short connections to {to}"))?;
            // as a JSON object's keys print: sorted
            println!("{}", serde_json::to_value(&report)?);
        }
        TrafficCommand::ShortRecv {
            common,
            listen,
            concurrency,
        } => {
            // answers for a second after the window, so that connections
            // the sender opens as it ends are not refused
            let sink = move |l, meter, until: &Until| {
                let longer = Until {
                    deadline: until.deadline + Duration::from_secs(1),
                    stop: until.stop.clone(),
                };
                short::short_sink(l, meter, concurrency, &longer)
            };
            receive(&common, listen, TcpListener::bind, sink)?;
        }
        TrafficCommand::TcpEcho { common, listen } => {
            let until = common.enter()?;
            let listener =
                TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
            podshaper_netlab::latency::tcp_echo(listener, &until)?;
        }
        TrafficCommand::UdpRecv { common, listen } => {
            receive(&common, listen, UdpSocket::bind, traffic::udp_sink)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds in the requested namespace, runs `sink` on a thread, and prints
/// what it received after the skipped start ([`ReceiverReport`]).
fn receive<S: Send + 'static>(
    common: &Common,
    listen: SocketAddr,
    bind: fn(SocketAddr) -> std::io::Result<S>,
    sink: impl FnOnce(S, Meter, &Until) -> std::io::Result<()> + Send + 'static,
) -> Result<()> {
    let until = common.enter()?;
    let socket = bind(listen).with_context(|| format!("listening on {listen}"))?;
    let meter = Meter::default();
    let handle = {
        let (meter, until) = (meter.clone(), until.clone());
        thread::spawn(move || sink(socket, meter, &until))
    };
    let window = window::measure(&meter, secs(common.skip)?, &until);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    let report = ReceiverReport::new(&window, &meter);
    // as a JSON object's keys print: sorted
    println!("{}", serde_json::to_value(&report)?);
    Ok(())
}
