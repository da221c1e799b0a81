//! Validation loss against training FLOPs and against wall time, every run one line, as PNG and
//! SVG.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::run::RunResult;

/// DejaVu Sans (Bitstream Vera licence, beside it): plotters draws text with a font it is given,
/// so the plots need no system font library.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const PALETTE: [RGBColor; 11] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
];

/// Which x axis.
#[derive(Clone, Copy)]
pub enum Axis {
    Flops,
    Seconds,
}

impl Axis {
    fn label(self) -> &'static str {
        match self {
            Axis::Flops => "training FLOPs (x 1e12)",
            Axis::Seconds => "training wall time (s)",
        }
    }

    fn value(self, flops: f64, seconds: f64) -> f64 {
        match self {
            Axis::Flops => flops / 1e12,
            Axis::Seconds => seconds,
        }
    }
}

pub fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font could not be read"))
}

/// Writes `stem.png` and `stem.svg`; `target` draws a dashed line (the baseline's final loss).
pub fn plot(
    runs: &[RunResult],
    names: &[String],
    axis: Axis,
    target: Option<f64>,
    title: &str,
    stem: &Path,
) -> Result<()> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(
        BitMapBackend::new(&png, (1000, 640)).into_drawing_area(),
        runs,
        names,
        axis,
        target,
        title,
    )?;
    draw(
        SVGBackend::new(&svg, (1000, 640)).into_drawing_area(),
        runs,
        names,
        axis,
        target,
        title,
    )
}

fn draw<B: DrawingBackend>(
    area: DrawingArea<B, Shift>,
    runs: &[RunResult],
    names: &[String],
    axis: Axis,
    target: Option<f64>,
    title: &str,
) -> Result<()>
where
    B::ErrorType: 'static,
{
    let fail = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow!("plotting {title}: {e}");
    area.fill(&WHITE).map_err(fail)?;
    let x_max = runs
        .iter()
        .flat_map(|r| &r.points)
        .map(|p| axis.value(p.flops, p.seconds))
        .fold(0.0, f64::max);
    let losses: Vec<f64> = runs
        .iter()
        .flat_map(|r| &r.points)
        .map(|p| p.loss)
        .collect();
    let y_min = losses.iter().copied().fold(f64::INFINITY, f64::min) - 0.05;
    // The first passes sit far above the rest: cap the axis so the end of training is readable.
    let y_max = runs
        .iter()
        .filter_map(|r| r.points.get(r.points.len() / 5).map(|p| p.loss))
        .fold(y_min + 0.5, f64::max);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max * 1.02, y_min..y_max)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc(axis.label())
        .y_desc("validation loss (nats per byte)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(fail)?;
    for (i, name) in names.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut labelled = false;
        for run in runs.iter().filter(|r| &r.variant.name == name) {
            let series = LineSeries::new(
                run.points
                    .iter()
                    .map(|p| (axis.value(p.flops, p.seconds), p.loss.min(y_max))),
                color.stroke_width(2),
            );
            let drawn = chart.draw_series(series).map_err(fail)?;
            if !labelled {
                drawn.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
                labelled = true;
            }
        }
    }
    if let Some(target) = target {
        let dashes = (0..60).map(|i| {
            let x0 = x_max * 1.02 * i as f64 / 60.0;
            PathElement::new(
                vec![(x0, target), (x0 + x_max * 0.008, target)],
                BLACK.stroke_width(1),
            )
        });
        chart
            .draw_series(dashes)
            .map_err(fail)?
            .label("baseline final loss (mean)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], BLACK.stroke_width(1)));
    }
    finish(chart, &area, title)
}

/// One point of the savings trend: a multi-level run of one model at one budget.
pub struct Saving {
    /// The line it belongs to ("GPT, 2 levels (rust-book)").
    pub series: String,
    /// The budget: the baseline's training tokens per parameter of the full model.
    pub tokens_per_parameter: f64,
    /// FLOPs saved to the tuned baseline's final loss, in percent: mean and standard deviation
    /// over seeds.
    pub mean: f64,
    pub std: f64,
    /// False where some seed never reached the baseline's final loss: drawn hollow at 0%
    /// (nothing saved) instead of a mean.
    pub reached: bool,
}

/// Writes `stem.png` and `stem.svg`: FLOPs saved against the training tokens per parameter (log
/// scale), one line per series, error bars of one standard deviation.
pub fn plot_savings(points: &[Saving], stem: &Path) -> Result<()> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw_savings(
        BitMapBackend::new(&png, (900, 560)).into_drawing_area(),
        points,
    )?;
    draw_savings(
        SVGBackend::new(&svg, (900, 560)).into_drawing_area(),
        points,
    )
}

fn draw_savings<B: DrawingBackend>(area: DrawingArea<B, Shift>, points: &[Saving]) -> Result<()>
where
    B::ErrorType: 'static,
{
    let fail = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow!("plotting the savings: {e}");
    area.fill(&WHITE).map_err(fail)?;
    let x_min = points
        .iter()
        .map(|p| p.tokens_per_parameter)
        .fold(f64::INFINITY, f64::min);
    let x_max = points
        .iter()
        .map(|p| p.tokens_per_parameter)
        .fold(0.0, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > 0.0 {
        (x_min / 1.6, x_max * 1.6)
    } else {
        (0.1, 100.0)
    };
    let y_max = points.iter().map(|p| p.mean + p.std).fold(0.0, f64::max) + 10.0;
    let y_min = points.iter().map(|p| p.mean - p.std).fold(0.0, f64::min) - 5.0;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "FLOPs saved to the tuned baseline's final loss (hollow: not reached on every seed)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), y_min..y_max)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("budget: training tokens per parameter (log scale)")
        .y_desc("FLOPs saved (%)")
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.1}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(LineSeries::new(
            [(x_min, 0.0), (x_max, 0.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(fail)?;
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    for (i, name) in series.iter().enumerate() {
        let color = PALETTE[(i + 1) % PALETTE.len()];
        // Series at the same budget are dodged sideways, 2% apart, so their bars stay apart.
        let dodge = 1.02f64.powf(i as f64 - (series.len() as f64 - 1.0) / 2.0);
        let x = |p: &Saving| p.tokens_per_parameter * dodge;
        let mine: Vec<&Saving> = points.iter().filter(|p| p.series == *name).collect();
        chart
            .draw_series(LineSeries::new(
                mine.iter().map(|p| (x(p), p.mean)),
                color.stroke_width(2),
            ))
            .map_err(fail)?
            .label(name.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // One standard deviation each way, with caps (x is on a log scale: caps are ±3%).
        let bars = mine.iter().flat_map(|p| {
            let (lo, hi, at) = (p.mean - p.std, p.mean + p.std, x(p));
            [
                vec![(at, lo), (at, hi)],
                vec![(at / 1.03, lo), (at * 1.03, lo)],
                vec![(at / 1.03, hi), (at * 1.03, hi)],
            ]
            .map(|line| PathElement::new(line, color.stroke_width(2)))
        });
        chart.draw_series(bars).map_err(fail)?;
        chart
            .draw_series(mine.iter().map(|p| {
                let style = if p.reached {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                Circle::new((x(p), p.mean), 6, style)
            }))
            .map_err(fail)?;
    }
    finish(chart, &area, "the savings")
}

/// Draws the legend and writes the picture out.
fn finish<'a, B: DrawingBackend + 'a, CT: CoordTranslate>(
    mut chart: ChartContext<'a, B, CT>,
    area: &DrawingArea<B, Shift>,
    what: &str,
) -> Result<()>
where
    B::ErrorType: 'static,
{
    let fail = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow!("plotting {what}: {e}");
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(fail)?;
    area.present().map_err(fail)
}
