//! Accuracy matrix: TCP at three rates, one and eight flows, both directions
//! (and UDP at 4x the limit at the same rates), each through `podshaper run`
//! between two network namespaces. `podshaper run` puts no queue in front of
//! ingress (its command runs in the host's namespace, as a hostNetwork pod
//! does): the ingress cells here measure the cgroup policer alone;
//! tests/root/ingress_queue measures the queue the daemon adds for pods with a
//! namespace of their own (cubic, 10M-1G, 1 and 8 flows, 0.90-1.05). The bounds carry slack for a shared 2-core
//! machine; the benchmark (`podshaper bench`, docs/benchmarks.md) reports the
//! exact figures beside tc tbf's.

use crate::common::{assert_fair, assert_ratio, measure, measure_flows, Flow, Limiter};

/// Achieved/target bounds.
const EGRESS: (f64, f64) = (0.90, 1.05);
const INGRESS: (f64, f64) = (0.85, 1.05);
/// One flow at 1G through the policer, even from BBR (0.89-1.01 here).
const INGRESS_1G_ONE_FLOW: (f64, f64) = (0.75, 1.05);
/// One cubic flow against the ingress policer alone at 100M and above (a
/// hostNetwork pod's ingress). With the delayed ACK of an ingress-limited
/// cgroup's sockets shortened from sockops it reads 0.948-0.978
/// (docs/design/ingress.md). With the kernel's own delayed ACK it read
/// 0.53-0.90 here (0.479 once inside a whole CI run) where BBR read 1.01:
/// the receiver's delayed ACK held the sender for 40 ms or more after each
/// drop. 0.80 leaves room for a loaded CI machine and still fails that
/// behaviour at 1G.
const INGRESS_ONE_CUBIC_FLOW: (f64, f64) = (0.80, 1.05);
/// Senders using BBR: it ignores the bucket's congestion notifications and
/// its own gain cycle probes below the pacing cap, so the share alone steers
/// it and the aggregate wanders more (0.91-1.00 here where cubic reads
/// 0.97-1.00; docs/design/egress.md).
const BBR_EGRESS: (f64, f64) = (0.85, 1.05);
/// One cubic flow that negotiated ECN, against the policer alone, which
/// marks it CE below half a bucket: 0.949-0.997 here. (Before the delayed
/// ACK was shortened, ECN flows already read 0.96 where others read
/// 0.53-0.90: the kernel ACKs every packet that is not ECT at once, and
/// retransmissions are not.)
const INGRESS_ECN_ONE_FLOW: (f64, f64) = (0.85, 1.05);

/// Jain's index of eight cubic flows through the ingress policer alone:
/// 0.88-1.000 here at 10M-1G. Without each flow's fair part one flow of
/// several could take most of the rate: a policer without them read 0.17
/// and 0.43 at 100M x8, 0.26 and 0.22 at 1G x8 here (10M x8 0.95-0.98),
/// and a weaker form of the fair parts 0.716 once at 100M x8.
const INGRESS_CUBIC_FAIR: f64 = 0.80;
/// The same at 10M, where a flow's fair part is a few packets and one flow
/// now and then takes several before it loses anything (docs/design/ingress.md,
/// "Fair parts through the policer alone"; the bench reads 0.72-0.86 at
/// 10M x16). 10M x8 read 0.872-0.985 in six runs alone here, and 0.718 once
/// in CI, with the other tests running beside it.
const INGRESS_CUBIC_FAIR_10M: f64 = 0.65;

/// Who sends: its congestion control, and whether its connections
/// negotiate ECN.
#[derive(Clone, Copy)]
struct Sender {
    cc: &'static str,
    ecn: bool,
}

const CUBIC: Sender = Sender {
    cc: "cubic",
    ecn: false,
};
const BBR: Sender = Sender {
    cc: "bbr",
    ecn: false,
};
const CUBIC_ECN: Sender = Sender {
    cc: "cubic",
    ecn: true,
};

fn tcp(
    sender: Sender,
    arg: &str,
    rate: &str,
    bits: f64,
    flows: usize,
    egress: bool,
    bounds: (f64, f64),
) {
    let Sender { cc, ecn } = sender;
    let flow = Flow {
        flows,
        ecn,
        // ingress needs longer to settle: the sender's cwnd meets the policer
        seconds: if egress { 6.0 } else { 8.0 },
        skip: 2.0,
        cc,
        ..Flow::tcp(egress)
    };
    let got = measure_flows(&Limiter::Run(&[arg, rate]), &flow);
    let what = format!(
        "TCP ({cc}{}) {} {rate} x{flows}",
        if ecn { ", ECN" } else { "" },
        if egress { "egress" } else { "ingress" }
    );
    assert_ratio(&what, got.bits_per_second, bits, bounds.0, bounds.1);
    // every egress flow is paced at an equal part of the limit while they
    // all want more (0.997-1.000 in the bench); the ingress policer alone
    // lets a flow within its fair part borrow and takes the pass after a
    // drop from one over it, which holds senders that back off on loss
    // (BBR does not: 0.79-0.91 here; tests/root/ingress_queue/rates.rs
    // checks the queue's fairness)
    if flows > 1 && egress {
        assert_fair(&what, &got.flow_bytes, flows, 0.90);
    } else if flows > 1 && cc == "cubic" {
        let min = if bits < 50e6 {
            INGRESS_CUBIC_FAIR_10M
        } else {
            INGRESS_CUBIC_FAIR
        };
        assert_fair(&what, &got.flow_bytes, flows, min);
    }
}

macro_rules! tcp_cases {
    ($($name:ident: $sender:ident $arg:literal $rate:literal $bits:literal, flows $flows:literal, $egress:literal, $bounds:expr;)*) => {
        $(
            #[test]
            fn $name() {
                require_root!();
                tcp($sender, $arg, $rate, $bits, $flows, $egress, $bounds);
            }
        )*
    };
}

tcp_cases! {
    tcp_egress_10m_1_flow: CUBIC "--egress" "10M" 10e6, flows 1, true, EGRESS;
    tcp_egress_10m_8_flows: CUBIC "--egress" "10M" 10e6, flows 8, true, EGRESS;
    // a tc-style rate, as operators write them
    tcp_egress_100m_1_flow: CUBIC "--egress" "100mbit" 100e6, flows 1, true, EGRESS;
    tcp_egress_100m_8_flows: CUBIC "--egress" "100M" 100e6, flows 8, true, EGRESS;
    tcp_egress_1g_1_flow: CUBIC "--egress" "1G" 1e9, flows 1, true, EGRESS;
    tcp_egress_1g_8_flows: CUBIC "--egress" "1G" 1e9, flows 8, true, EGRESS;
    tcp_ingress_10m_1_flow: CUBIC "--ingress" "10M" 10e6, flows 1, false, INGRESS;
    tcp_ingress_10m_8_flows: CUBIC "--ingress" "10M" 10e6, flows 8, false, INGRESS;
    tcp_ingress_100m_1_flow: CUBIC "--ingress" "100M" 100e6, flows 1, false, INGRESS_ONE_CUBIC_FLOW;
    tcp_ingress_100m_8_flows: CUBIC "--ingress" "100M" 100e6, flows 8, false, INGRESS;
    tcp_ingress_1g_1_flow: CUBIC "--ingress" "1G" 1e9, flows 1, false, INGRESS_ONE_CUBIC_FLOW;
    tcp_ingress_1g_8_flows: CUBIC "--ingress" "1G" 1e9, flows 8, false, INGRESS;
    tcp_bbr_egress_100m_1_flow: BBR "--egress" "100M" 100e6, flows 1, true, BBR_EGRESS;
    tcp_bbr_egress_100m_8_flows: BBR "--egress" "100M" 100e6, flows 8, true, BBR_EGRESS;
    tcp_bbr_egress_1g_1_flow: BBR "--egress" "1G" 1e9, flows 1, true, BBR_EGRESS;
    tcp_bbr_egress_1g_8_flows: BBR "--egress" "1G" 1e9, flows 8, true, BBR_EGRESS;
    tcp_bbr_ingress_100m_1_flow: BBR "--ingress" "100M" 100e6, flows 1, false, INGRESS;
    tcp_bbr_ingress_100m_8_flows: BBR "--ingress" "100M" 100e6, flows 8, false, INGRESS;
    tcp_bbr_ingress_1g_1_flow: BBR "--ingress" "1G" 1e9, flows 1, false, INGRESS_1G_ONE_FLOW;
    // ECN senders against the policer alone (a hostNetwork pod's ingress)
    tcp_ecn_ingress_100m_1_flow: CUBIC_ECN "--ingress" "100M" 100e6, flows 1, false, INGRESS_ECN_ONE_FLOW;
    tcp_ecn_ingress_1g_1_flow: CUBIC_ECN "--ingress" "1G" 1e9, flows 1, false, INGRESS_ECN_ONE_FLOW;
}

/// One bulk flow beside eight light, bursty ones (16 KiB at a time, 400
/// kbit/s each) in one pod limited to 10M egress: the light flows get about
/// what they ask for and the bulk flow most of the rest. The share's cap
/// while the bucket is short follows the most-sending flow, not an equal
/// part of the rate, because an equal part (every light flow counting)
/// held this bulk flow to 4.1 Mbit/s; with the cap it reads 6.3-6.5
/// (docs/design/egress.md).
#[test]
fn tcp_egress_bulk_flow_beside_light_bursty_flows_keeps_its_part() {
    require_root!();
    let (light, light_rate) = (8, 400_000);
    let flow = Flow {
        light,
        light_rate,
        seconds: 8.0,
        skip: 2.0,
        ..Flow::tcp(true)
    };
    let got = measure_flows(&Limiter::Run(&["--egress", "10M"]), &flow);
    let what = "TCP egress 10M, one bulk flow and 8 light ones";
    assert_eq!(got.flow_bytes.len(), 1 + light, "{what}: flows seen");
    // the window measure_flows measures over
    let seconds = flow.seconds - flow.skip - 0.1;
    let mut rates: Vec<f64> = got
        .flow_bytes
        .iter()
        .map(|b| *b as f64 * 8.0 / seconds)
        .collect();
    rates.sort_by(f64::total_cmp);
    let bulk = rates[light];
    eprintln!("{what}: bulk {bulk:.0} bit/s, light {:?}", &rates[..light]);
    assert_ratio(what, got.bits_per_second, 10e6, 0.85, 1.05);
    assert!(
        bulk >= 5.0e6,
        "{what}: the bulk flow got {bulk:.0} bit/s, under 5 Mbit/s"
    );
    for r in &rates[..light] {
        assert!(
            *r >= 0.6 * light_rate as f64,
            "{what}: a light flow got {r:.0} bit/s of the {light_rate} it asks for"
        );
    }
}

fn udp(arg: &str, rate: &str, bits: f64, egress: bool) {
    let got = measure(&[arg, rate], &Flow::udp(egress, (bits * 4.0) as u64));
    let what = format!(
        "UDP {} {rate} offered 4x",
        if egress { "egress" } else { "ingress" }
    );
    assert_ratio(&what, got, bits, 0.90, 1.05);
}

/// 4 Gbit/s offered at 1G goes out in GSO batches of 16 datagrams
/// (netlab's `udp_send`); one datagram per send took a whole core, and
/// beside another test the generator, not the limit, decided the cell
/// (0.83-0.86 in CI before the batches).
const UDP_RATES: [(&str, f64); 3] = [("10M", 10e6), ("100M", 100e6), ("1G", 1e9)];

#[test]
fn udp_egress_10m_100m_1g() {
    require_root!();
    for (rate, bits) in UDP_RATES {
        udp("--egress", rate, bits, true);
    }
}

#[test]
fn udp_ingress_10m_100m_1g() {
    require_root!();
    for (rate, bits) in UDP_RATES {
        udp("--ingress", rate, bits, false);
    }
}
