//! `--plot`: the limit-change runs drawn to a PNG, one panel per rate: each
//! mechanism's rate over time, as a fraction of the first limit, with the
//! change marked. Built with the `plot` feature only (plotters, and the
//! DejaVu font read at run time); the daemon's image leaves it out.

use std::path::Path;

use crate::error::Result;
use crate::report::LimitChange;

#[cfg(feature = "plot")]
pub fn draw(runs: &[LimitChange], file: &Path) -> Result<()> {
    use plotters::prelude::*;

    use crate::change::TOTAL;
    use crate::error::BenchError;

    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").map_err(
        BenchError::io("the plot's font (Debian package fonts-dejavu-core)"),
    )?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| BenchError::Plot("cannot use DejaVuSans.ttf as the plot's font".into()))?;

    let mut rates: Vec<_> = runs.iter().map(|r| r.rate).collect();
    rates.dedup();
    let height = 320 * rates.len().max(1) as u32;
    let root = BitMapBackend::new(file, (960, height)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let panels = root.split_evenly((rates.len().max(1), 1));
    for (panel, rate) in panels.iter().zip(&rates) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{rate} limit, halved at t = 3 s (one TCP flow, egress)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..TOTAL.as_secs_f64(), 0f64..1.6f64)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("rate / first limit")
            .draw()
            .map_err(|e| draw(&e))?;
        for (run, color) in runs
            .iter()
            .filter(|r| r.rate == *rate)
            .zip([RED, BLUE, BLACK])
        {
            let label = format!(
                "{} ({})",
                run.mechanism,
                run.change_to_effect_ms
                    .map_or("no effect".into(), |ms| format!("effect after {ms:.0} ms"))
            );
            chart
                .draw_series(LineSeries::new(
                    run.series.iter().map(|(t, r)| (*t, r.min(1.6))),
                    color.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        for level in [1.0, 0.5] {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, level), (TOTAL.as_secs_f64(), level)],
                    BLACK.mix(0.3),
                ))
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

/// Without the `plot` feature: refuses, naming the feature.
#[cfg(not(feature = "plot"))]
pub fn draw(_runs: &[LimitChange], _file: &Path) -> Result<()> {
    Err(crate::error::BenchError::PlotNotBuilt)
}
