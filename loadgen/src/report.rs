//! Output of a run: a table per target and operation, `summary.json`,
//! HdrHistogram percentile-distribution files (`.hgrm`) and an SVG of the
//! percentile curves of every target and operation side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::{OpStats, PhaseResult};

/// One target's measured phases.
pub struct TargetRun {
    pub label: String,
    pub url: String,
    pub phases: Vec<PhaseResult>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One operation on one target (the `ops` entries of summary.json).
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub phase: String,
    /// Requests made or scheduled: answered, failed, or `not_sent`.
    pub count: u64,
    /// Requests answered as expected: the only ones in the throughput and
    /// the latency histogram.
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests answered as expected per second of the phase.
    pub throughput_rps: f64,
    pub duration_s: f64,
    /// Latency of the requests answered as expected; null when none was.
    pub latency_ms: Option<Latency>,
    /// Server CPU per request of the phase, when `--server-pid` was given.
    pub server_cpu_us_per_op: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    pub label: String,
    pub url: String,
    pub ops: Vec<OpSummary>,
}

/// Ratios of a target's figures to the first target's, per operation.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub op: String,
    pub label: String,
    pub baseline: String,
    pub throughput_ratio: f64,
    pub p99_ratio: f64,
    pub server_cpu_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub scenario: String,
    pub settings: serde_json::Value,
    pub targets: Vec<TargetSummary>,
    pub comparison: Vec<Ratio>,
}

pub const SCHEMA: &str = "distro-loadgen/summary/v2";

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The figures of a histogram; None when it is empty (no request was
/// answered as expected: there is no latency to report).
pub fn latency(h: &Histogram<u64>) -> Option<Latency> {
    if h.is_empty() {
        return None;
    }
    Some(Latency {
        p50: ms(h, 0.50),
        p90: ms(h, 0.90),
        p99: ms(h, 0.99),
        p999: ms(h, 0.999),
        max: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1000.0
        },
        mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    })
}

/// Summaries of the measured phases of one target.
pub fn summarize(run: &TargetRun) -> TargetSummary {
    let mut ops = Vec::new();
    for phase in run.phases.iter().filter(|p| p.measured) {
        let requests: u64 = phase.ops.values().map(OpStats::sent).sum();
        let cpu = phase
            .server_cpu_s
            .filter(|_| requests > 0)
            .map(|s| s * 1e6 / requests as f64);
        let secs = phase.elapsed.as_secs_f64().max(1e-9);
        for (op, stats) in &phase.ops {
            ops.push(OpSummary {
                op: op.name().to_string(),
                phase: phase.name.to_string(),
                count: stats.count(),
                ok: stats.latency_us.len(),
                errors: stats.error_count(),
                errors_by_kind: stats.errors.clone(),
                throughput_rps: stats.latency_us.len() as f64 / secs,
                duration_s: secs,
                latency_ms: latency(&stats.latency_us),
                server_cpu_us_per_op: cpu,
            });
        }
    }
    TargetSummary {
        label: run.label.clone(),
        url: run.url.clone(),
        ops,
    }
}

pub fn compare(targets: &[TargetSummary]) -> Vec<Ratio> {
    let Some(base) = targets.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in &targets[1..] {
        for op in &t.ops {
            let Some(b) = base
                .ops
                .iter()
                .find(|o| o.op == op.op && o.phase == op.phase)
            else {
                continue;
            };
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            out.push(Ratio {
                op: op.op.clone(),
                label: t.label.clone(),
                baseline: base.label.clone(),
                throughput_ratio: div(op.throughput_rps, b.throughput_rps),
                p99_ratio: match (&op.latency_ms, &b.latency_ms) {
                    (Some(a), Some(b)) => div(a.p99, b.p99),
                    _ => f64::NAN,
                },
                server_cpu_ratio: op
                    .server_cpu_us_per_op
                    .zip(b.server_cpu_us_per_op)
                    .map(|(a, b)| div(a, b)),
            });
        }
    }
    out
}

/// The table printed on stdout.
pub fn table(targets: &[TargetSummary], comparison: &[Ratio]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<14} {:<11} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "target",
        "op",
        "count",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "cpu us/op"
    );
    for t in targets {
        for op in &t.ops {
            let cpu = op
                .server_cpu_us_per_op
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into());
            // No answered request: no latency, not a latency of 0.
            let lat: [String; 5] = match &op.latency_ms {
                Some(l) => [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| format!("{v:.3}")),
                None => std::array::from_fn(|_| "-".to_string()),
            };
            let _ = writeln!(
                o,
                "{:<14} {:<11} {:>9} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                t.label,
                op.op,
                op.count,
                op.errors,
                op.throughput_rps,
                lat[0],
                lat[1],
                lat[2],
                lat[3],
                lat[4],
                cpu
            );
            for (kind, n) in &op.errors_by_kind {
                let _ = writeln!(o, "{:<14}   error {kind}: {n}", "");
            }
        }
    }
    if !comparison.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<14} {:<11} {:>14} {:>10} {:>10}",
            "target", "op", "vs", "req/s x", "p99 x"
        );
        for r in comparison {
            let _ = writeln!(
                o,
                "{:<14} {:<11} {:>14} {:>10.2} {:>10.2}",
                r.label, r.op, r.baseline, r.throughput_ratio, r.p99_ratio
            );
        }
    }
    o
}

/// HdrHistogram's percentile-distribution text (values in ms), as Java's
/// `outputPercentileDistribution` writes it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / 1000.0;
            if q < 1.0 {
                let _ = writeln!(
                    o,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(o, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let mean = if h.is_empty() { 0.0 } else { h.mean() / 1000.0 };
    let stdev = if h.is_empty() {
        0.0
    } else {
        h.stdev() / 1000.0
    };
    let max = h.max() as f64 / 1000.0;
    let _ = writeln!(o, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]");
    let _ = writeln!(
        o,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        o,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    o
}

/// Parses an `.hgrm` back into (value ms, percentile, total count) rows.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64, u64)>, String> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            return Err(format!("short line: {line}"));
        }
        let value = f[0].parse().map_err(|_| format!("bad value: {line}"))?;
        let q = f[1]
            .parse()
            .map_err(|_| format!("bad percentile: {line}"))?;
        let n = f[2].parse().map_err(|_| format!("bad count: {line}"))?;
        rows.push((value, q, n));
    }
    Ok(rows)
}

/// File-name-safe label.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The plot's title: the scenario and the settings that shape its curves.
pub fn title(summary: &Summary) -> String {
    let s = &summary.settings;
    let mut parts = Vec::new();
    for (key, unit) in [
        ("instances", "instances"),
        ("services", "services"),
        ("connections", "connections"),
        ("threads", "threads"),
        ("duration_s", "s"),
        ("rate", "req/s"),
    ] {
        if let Some(v) = s.get(key).filter(|v| !v.is_null()) {
            // "1 thread", not "1 threads"; "1 s" and "1 req/s" stay.
            let unit = if v == 1 && unit.len() > 5 {
                unit.trim_end_matches('s')
            } else {
                unit
            };
            parts.push(format!("{v} {unit}"));
        }
    }
    format!("{}: {}", summary.scenario, parts.join(", "))
}

/// Writes summary.json, the .hgrm files and latency.svg (titled `title`)
/// into `dir`.
pub fn write_all(
    dir: &Path,
    summary: &Summary,
    runs: &[TargetRun],
    title: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json)?;
    let mut curves = Vec::new();
    for run in runs {
        for phase in run.phases.iter().filter(|p| p.measured) {
            for (op, stats) in &phase.ops {
                let name = format!("{}-{}.hgrm", safe(&run.label), op.name());
                std::fs::write(dir.join(name), hgrm(&stats.latency_us))?;
                if !stats.latency_us.is_empty() {
                    curves.push((
                        format!("{} {}", run.label, op.name()),
                        stats.latency_us.clone(),
                    ));
                }
            }
        }
    }
    plot(&dir.join("latency.svg"), title, &curves).map_err(std::io::Error::other)
}

/// `99.9%`, not `99.900%`.
fn percent_label(p: f64) -> String {
    let s = format!("{p:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Highest percentile axis position (log10 of 1/(1-p)) that `n` samples
/// support: the largest of n samples is the 1-1/n quantile, nothing
/// beyond it was measured.
pub fn supported_x(n: u64) -> f64 {
    (n.max(1) as f64).log10()
}

/// A curve's points: (log10 of 1/(1-p), latency ms), up to the highest
/// percentile its samples support, where it ends at the maximum.
pub fn curve_points(h: &Histogram<u64>, floor_ms: f64) -> Vec<(f64, f64)> {
    let n = h.len();
    if n == 0 {
        return Vec::new();
    }
    let x_end = supported_x(n);
    let ms = |v: u64| (v.max(1) as f64 / 1000.0).max(floor_ms);
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(10)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| ((1.0 / (1.0 - q)).log10(), ms(v)))
        .take_while(|(x, _)| *x < x_end)
        .collect();
    points.push((x_end, ms(h.max())));
    points
}

/// Axis text size, px.
const AXIS_FONT_PX: u32 = 16;
/// Width of the legend column right of the plot, px.
const LEGEND_PX: u32 = 250;

/// Percentile curves on a logarithmic percentile axis (x = log10 of
/// 1/(1-p): 1 is 90%, 2 is 99%, 3 is 99.9% ...), latency on a log axis;
/// the legend in a column of its own, so that it covers no curve.
pub fn plot(path: &Path, title: &str, curves: &[(String, Histogram<u64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = SVGBackend::new(path, (1000 + LEGEND_PX, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!("{title} - latency by percentile"),
            ("sans-serif", 22),
        )
        .map_err(e)?;
    let (area, legend) = root.split_horizontally(1000);
    let max_ms = curves
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(1.0f64, f64::max)
        * 1.5;
    let min_ms = curves
        .iter()
        .map(|(_, h)| h.min().max(1) as f64 / 1000.0)
        .fold(max_ms, f64::min)
        .max(0.001)
        / 1.5;
    // The axis ends at the next whole decade past the best-supported
    // curve (at least 99%), so that its last tick is a round percentile.
    let x_max = curves
        .iter()
        .map(|(_, h)| supported_x(h.len()).ceil())
        .fold(2.0f64, f64::max)
        .min(6.0);
    let mut chart = ChartBuilder::on(&area)
        .margin(15)
        // Room for the last tick's label ("99.999%") right of the axis end.
        .margin_right(45)
        .x_label_area_size(50)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_max, (min_ms..max_ms).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", AXIS_FONT_PX))
        .axis_desc_style(("sans-serif", AXIS_FONT_PX + 2))
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percent_label(100.0 * (1.0 - 10f64.powf(-x))))
        .draw()
        .map_err(e)?;
    for (i, (_, h)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                curve_points(h, min_ms),
                color.stroke_width(2),
            ))
            .map_err(e)?;
    }
    for (i, (name, h)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let y = 40 + 26 * i as i32;
        legend
            .draw(&PathElement::new(
                vec![(8, y), (36, y)],
                color.stroke_width(3),
            ))
            .map_err(e)?;
        legend
            .draw(&Text::new(
                format!("{name} (n={})", h.len()),
                (44, y - 8),
                ("sans-serif", AXIS_FONT_PX),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_labels() {
        assert_eq!(percent_label(90.0), "90%");
        assert_eq!(percent_label(99.9), "99.9%");
        assert_eq!(percent_label(99.99), "99.99%");
        assert_eq!(percent_label(0.0), "0%");
    }

    #[test]
    fn curves_end_at_the_percentile_their_samples_support() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        let pts = curve_points(&h, 0.001);
        let last = *pts.last().unwrap();
        // 1,000 samples: the largest is the 99.9th percentile (x = 3).
        assert!((last.0 - 3.0).abs() < 1e-9, "{last:?}");
        assert!((last.1 - 100.0).abs() < 0.1, "ends at the max: {last:?}");
        assert!(pts.iter().all(|p| p.0 <= 3.0 + 1e-9));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let mut one = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        one.record(500).unwrap();
        assert_eq!(curve_points(&one, 0.001), vec![(0.0, 0.5)]);
        assert!(curve_points(&Histogram::new(3).unwrap(), 0.001).is_empty());
    }

    #[test]
    fn hgrm_round_trips() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let rows = parse_hgrm(&hgrm(&h)).unwrap();
        assert!(rows.len() > 20);
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 10_000);
        assert!((last.0 - 100.0).abs() < 0.1, "max 100 ms, got {}", last.0);
        let p50 = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((p50.0 - 50.0).abs() < 0.1, "{p50:?}");
    }
}
