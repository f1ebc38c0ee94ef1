//! The PNG charts: one throughput chart per throughput workload, and one
//! latency CDF with every transport on it. Reads the results and hands
//! [`Chart`]s back for the report; the report never calls in here.
//!
//! Text is drawn with DejaVu Sans, read at run time (Debian package
//! fonts-dejavu-core), so that plotters needs no fontconfig.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Chart, Results, median};
use crate::transports::Transport;
use crate::workloads::Measure;

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";
/// Points per CDF line: enough to look smooth, few enough to draw fast.
const CDF_POINTS: usize = 2000;

fn color(transport: Transport) -> RGBColor {
    match transport {
        Transport::Shmring => RGBColor(0x1f, 0x77, 0xb4),
        Transport::ShmringBaseline => RGBColor(0x9e, 0xc5, 0xe8),
        Transport::Shm => RGBColor(0xff, 0x7f, 0x0e),
        Transport::ShmDefault => RGBColor(0x8c, 0x56, 0x4b),
        Transport::Pipe => RGBColor(0x2c, 0xa0, 0x2c),
        Transport::Limit => RGBColor(0x7f, 0x7f, 0x7f),
        Transport::LimitQueue => RGBColor(0xc7, 0xc7, 0xc7),
    }
}

fn load_font() -> Result<(), String> {
    let bytes = FONT_FILES
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .ok_or_else(|| {
            format!(
                "no DejaVu Sans at {}; install fonts-dejavu-core",
                FONT_FILES.join(" or ")
            )
        })?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| "DejaVu Sans does not parse".to_owned())
}

pub fn draw_all(dir: &Path, results: &Results) -> Result<Vec<Chart>, String> {
    load_font()?;
    let mut charts = Vec::new();
    for (index, workload) in results.workloads.iter().enumerate() {
        if workload.measure == Measure::Throughput {
            let file = format!("throughput-{}.png", workload.id);
            let title = format!("{}: {} (buffers/s)", workload.id, workload.title);
            throughput(&dir.join(&file), &title, results, index).map_err(|err| format!("{file}: {err}"))?;
            charts.push(Chart {
                workload: Some(index),
                title,
                file,
            });
        }
    }
    let latency: Vec<usize> = (0..results.workloads.len())
        .filter(|&index| results.workloads[index].measure == Measure::Latency)
        .collect();
    if !latency.is_empty() {
        let file = "latency-cdf.png".to_owned();
        latency_cdf(&dir.join(&file), results, &latency).map_err(|err| format!("{file}: {err}"))?;
        charts.push(Chart {
            workload: None,
            title: "One-way latency CDF".to_owned(),
            file,
        });
    }
    Ok(charts)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Bars at the median of each transport, a dot for each completed run, and
/// under each bar how many runs completed.
fn throughput(path: &Path, title: &str, results: &Results, workload: usize) -> DrawResult {
    let transports: Vec<Transport> = [
        Transport::Shmring,
        Transport::ShmringBaseline,
        Transport::Shm,
        Transport::ShmDefault,
        Transport::Pipe,
        Transport::Limit,
        Transport::LimitQueue,
    ]
    .into_iter()
    .filter(|&transport| !results.runs(workload, transport).is_empty())
    .collect();
    let rates: Vec<Vec<f64>> = transports
        .iter()
        .map(|&transport| {
            results
                .runs(workload, transport)
                .iter()
                .filter_map(|run| run.rate)
                .collect()
        })
        .collect();
    let top = rates.iter().flatten().copied().fold(1.0, f64::max) * 1.15;
    let labels: Vec<String> = transports
        .iter()
        .map(|&transport| {
            let runs = results.runs(workload, transport);
            let ok = runs.iter().filter(|run| run.ok()).count();
            format!("{} ({ok}/{} ok)", short_label(transport), runs.len())
        })
        .collect();

    // About 200 px for each bar's label, and one more share for the axis.
    let width = 200 * (transports.len() as u32 + 1);
    let root = BitMapBackend::new(path, (width, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(100)
        .build_cartesian_2d((0..transports.len()).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(transports.len())
        .x_label_formatter(&|value| match value {
            SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|value| format!("{value:.0}"))
        .label_style((FONT, 16))
        .draw()?;
    for (index, (&transport, rates)) in transports.iter().zip(&rates).enumerate() {
        let Some(middle) = median(rates.clone()) else {
            continue;
        };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(index), 0.0),
                (SegmentValue::Exact(index + 1), middle),
            ],
            color(transport).mix(0.8).filled(),
        );
        bar.set_margin(0, 0, 25, 25);
        chart.draw_series([bar])?;
        chart.draw_series(
            rates
                .iter()
                .map(|&rate| Circle::new((SegmentValue::CenterOf(index), rate), 4, BLACK.filled())),
        )?;
        chart.draw_series([Text::new(
            format!("{middle:.0}"),
            (SegmentValue::CenterOf(index), middle + top * 0.03),
            (FONT, 16).into_font().color(&BLACK),
        )])?;
    }
    root.present()?;
    Ok(())
}

fn short_label(transport: Transport) -> &'static str {
    match transport {
        Transport::Shmring => "shmring",
        Transport::ShmringBaseline => "shmring baseline",
        Transport::Shm => "shmsink/shmsrc",
        Transport::ShmDefault => "shmsink default",
        Transport::Pipe => "pipe",
        Transport::Limit => "limit (no queue)",
        Transport::LimitQueue => "in-process + queue",
    }
}

/// One panel per latency workload: the share of buffers (pooled over the
/// completed runs, warm-up left out) at or under each latency, on a log axis.
fn latency_cdf(path: &Path, results: &Results, workloads: &[usize]) -> DrawResult {
    let root = BitMapBackend::new(path, (700 * workloads.len() as u32, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, workloads.len()));
    for (panel, &workload) in panels.iter().zip(workloads) {
        cdf_panel(panel, results, workload)?;
    }
    root.present()?;
    Ok(())
}

fn cdf_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, results: &Results, workload: usize) -> DrawResult {
    let lines: Vec<(Transport, Vec<f64>)> = results
        .round
        .iter()
        .map(|&transport| {
            let mut microseconds: Vec<f64> = results
                .runs(workload, transport)
                .iter()
                .filter(|run| run.ok())
                .flat_map(|run| run.steady_latencies().iter().map(|&ns| ns as f64 / 1e3))
                .collect();
            microseconds.sort_by(f64::total_cmp);
            (transport, microseconds)
        })
        .filter(|(_, microseconds)| !microseconds.is_empty())
        .collect();
    let all = || lines.iter().flat_map(|(_, values)| values.iter().copied());
    let low = all().fold(f64::INFINITY, f64::min).max(0.1) / 1.5;
    let high = all().fold(1.0, f64::max) * 1.5;
    let low = if low.is_finite() { low } else { 1.0 };

    let title = format!("{}: one-way latency CDF (µs)", results.workloads[workload].id);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|value| format!("{value:.0}"))
        .y_label_formatter(&|value| format!("{value:.2}"))
        .label_style((FONT, 14))
        .draw()?;
    for (transport, values) in &lines {
        let step = (values.len() / CDF_POINTS).max(1);
        let count = values.len() as f64;
        let points = values
            .iter()
            .enumerate()
            .filter(|(index, _)| index % step == 0 || *index == values.len() - 1)
            .map(|(index, &value)| (value, (index + 1) as f64 / count));
        let style = color(*transport).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(short_label(*transport))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
