//! The differential check of podshaper's strict quantity parser against Go's
//! `resource.ParseQuantity` (scripts/quantity-differential.sh builds the Go
//! side, scripts/quantity-oracle, from Kubernetes v1.20.2's source).
//!
//! Sends the edge cases and COUNT generated strings to the oracle, compares
//! for each the verdict (accepted or refused), `Value()`, and so the
//! bandwidth annotation's verdict under the kubelet's bounds, and stops at the
//! first string where they differ. It also checks the CLI's RATE against
//! Go: where both accept, the same bit/s; where only the kubelet accepts, a
//! value that is in bounds only because `Value()` wrapped around.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use podshaper_fuzz_checks::quantity_inputs::{generate, EDGE_CASES};
use podshaper_rate::quantity::parse_quantity;
use podshaper_rate::{Rate, MAX_RATE_BITS, MIN_RATE_BITS};

#[derive(Parser)]
struct Args {
    /// The Go oracle binary (reads hex lines, answers `ok VALUE` or `err`).
    #[arg(long)]
    oracle: std::path::PathBuf,
    /// How many generated strings (besides the fixed edge cases).
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Seed of the generator (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Print each string the kubelet accepts only because Value() wrapped around.
    #[arg(long)]
    show_wrapped: bool,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let inputs: Vec<String> = EDGE_CASES
        .iter()
        .map(|s| s.to_string())
        .chain((0..args.count).map(|_| generate(&mut rng)))
        .collect();
    let started = Instant::now();
    let mut oracle = Command::new(&args.oracle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args.oracle.display()))?;
    let mut stdin = oracle.stdin.take().context("oracle stdin")?;
    let stdout = oracle.stdout.take().context("oracle stdout")?;
    let lines: String = inputs.iter().map(|s| hex(s) + "\n").collect();
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(lines.as_bytes());
        drop(stdin);
        r
    });
    let mut answers = BufReader::new(stdout).lines();
    let (mut accepted, mut in_bounds, mut wrapped) = (0usize, 0usize, 0usize);
    for (checked, input) in inputs.iter().enumerate() {
        let answer = answers
            .next()
            .context("the oracle stopped answering")?
            .context("reading the oracle")?;
        let go: Option<i64> = match answer.split_once(' ') {
            Some(("ok", v)) => Some(
                v.parse()
                    .with_context(|| format!("oracle said {answer:?}"))?,
            ),
            None if answer == "err" => None,
            _ => bail!("oracle said {answer:?} for {input:?}"),
        };
        let ours = parse_quantity(input).ok().map(|q| q.value());
        let go_bandwidth = go.filter(|v| (MIN_RATE_BITS as i64..=MAX_RATE_BITS as i64).contains(v));
        let our_bandwidth = Rate::from_kubernetes(input)
            .ok()
            .map(|r| r.bits_per_sec() as i64);
        if ours != go || our_bandwidth != go_bandwidth {
            bail!(
                "first difference after {} inputs (seed {seed}): {input:?} (hex {}): \
                 Go ParseQuantity+Value() {go:?}, podshaper {ours:?}; as a bandwidth \
                 annotation Go {go_bandwidth:?}, podshaper {our_bandwidth:?}",
                checked,
                hex(input)
            );
        }
        let cli = input.parse::<Rate>().ok().map(|r| r.bits_per_sec() as i64);
        match (cli, go) {
            (Some(c), Some(g)) if c != g => bail!(
                "the CLI reads {input:?} (hex {}) as {c} bit/s, Go's Value() is {g}",
                hex(input)
            ),
            (None, Some(_)) if go_bandwidth.is_some() => {
                let exact = parse_quantity(input).ok().and_then(|q| q.ceil_u64());
                if exact.is_some_and(|v| (MIN_RATE_BITS..=MAX_RATE_BITS).contains(&v)) {
                    bail!(
                        "the CLI refuses {input:?} (hex {}), which the kubelet accepts",
                        hex(input)
                    );
                }
                wrapped += 1;
                if args.show_wrapped {
                    eprintln!("wrapped around: {input:?} -> {go:?}");
                }
            }
            _ => {}
        }
        accepted += usize::from(go.is_some());
        in_bounds += usize::from(go_bandwidth.is_some());
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("writing to the oracle")?;
    oracle.wait().context("waiting for the oracle")?;
    println!(
        "quantity-differential: {} inputs ({} edge cases, {} generated, seed {seed}) agree with Go's \
         ParseQuantity: {accepted} accepted ({in_bounds} within the kubelet's 1k..=1P, {wrapped} of \
         them only after Value() wrapped around, which the CLI refuses), {} refused, in {:.1} s",
        inputs.len(),
        EDGE_CASES.len(),
        args.count,
        inputs.len() - accepted,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
