//! bench-report's drawing: figures of panels drawn with plotters, and
//! the min / median / max every point and table cell is made of.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

pub(crate) const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

pub(crate) type Fallible<T> = Result<T, String>;
/// A named line of (x, samples at x) points.
pub(crate) type XySeries = (String, Vec<(f64, Vec<f64>)>);

/// min, median, max of the samples (zeros when empty).
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => (0.0, 0.0, 0.0),
        n => (s[0], if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }, s[n - 1]),
    }
}

pub(crate) fn fmt_spread(v: &[f64], digits: usize) -> String {
    let (lo, mid, hi) = spread(v);
    if v.is_empty() { "–".into() } else { format!("{mid:.digits$} ({lo:.digits$}–{hi:.digits$})") }
}

/// One series of a category chart: per category, samples (drawn as the
/// median with a min–max bar).
pub(crate) struct Series {
    pub name: String,
    pub per_category: Vec<Vec<f64>>,
}

/// A panel with categories on x, each series offset a little, median
/// points with min–max bars.
pub(crate) fn category_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Fallible<()> {
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {title}: {e:?}");
    let y_max = series.iter().flat_map(|s| s.per_category.iter().flatten()).copied().fold(0.0f64, f64::max) * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let n = categories.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..y_max)
        .map_err(e)?;
    let cats = categories.to_vec();
    chart
        .configure_mesh()
        // n + 1 labels over a range n wide: plotters picks a step of 1, one
        // label per category.
        .x_labels(categories.len() + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                cats.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 13))
        .disable_x_mesh()
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let k = series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let dx = (si as f64 - (k - 1.0) / 2.0) * 0.6 / k;
        let mut pts = Vec::new();
        for (ci, v) in s.per_category.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let (lo, mid, hi) = spread(v);
            let x = ci as f64 + dx;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(2))))
                .map_err(e)?;
            pts.push((x, mid));
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// A panel with numbers on a log x axis: one line per series through the
/// medians, min–max bars.
pub(crate) fn xy_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[XySeries],
) -> Fallible<()> {
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {title}: {e:?}");
    let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).collect();
    let (x_lo, x_hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if xs.is_empty() { (1.0, 10.0) } else { (x_lo, x_hi) };
    let y_max =
        series.iter().flat_map(|(_, p)| p.iter().flat_map(|(_, v)| v.iter())).copied().fold(0.0f64, f64::max) * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 18)).margin(10).x_label_area_size(45).y_label_area_size(60);
    let style = ("sans-serif", 13);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style(style).draw().map_err(e)?;
            for (si, (name, pts)) in series.iter().enumerate() {
                let color = COLORS[si % COLORS.len()];
                let meds: Vec<(f64, f64)> = pts.iter().map(|(x, v)| (*x, spread(v).1)).collect();
                for (x, v) in pts {
                    let (lo, _, hi) = spread(v);
                    chart
                        .draw_series(std::iter::once(PathElement::new(vec![(*x, lo), (*x, hi)], color.stroke_width(2))))
                        .map_err(e)?;
                }
                chart.draw_series(meds.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
                chart
                    .draw_series(LineSeries::new(meds.clone(), color.stroke_width(2)))
                    .map_err(e)?
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(style)
                .draw()
                .map_err(e)?;
        }};
    }
    if log_x {
        body!(builder.build_cartesian_2d((x_lo * 0.8..x_hi * 1.25).log_scale(), 0f64..y_max).map_err(e)?);
    } else {
        let pad = (x_hi - x_lo).max(1.0) * 0.08;
        body!(builder.build_cartesian_2d(x_lo - pad..x_hi + pad, 0f64..y_max).map_err(e)?);
    }
    Ok(())
}

/// A figure: panels side by side or stacked, and a caption (method,
/// repetitions, spread) at the bottom.
pub(crate) fn figure<'a>(
    path: &'a Path,
    size: (u32, u32),
    rows: usize,
    cols: usize,
    caption: &str,
    draw: impl FnOnce(&[DrawingArea<BitMapBackend<'a>, Shift>]) -> Fallible<()>,
) -> Fallible<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let lines: Vec<&str> = caption.lines().collect();
    let (body, foot) = root.split_vertically(size.1 - 20 * lines.len() as u32 - 10);
    for (i, l) in lines.iter().enumerate() {
        foot.draw_text(l, &("sans-serif", 14).into_font().color(&BLACK), (10, 4 + 20 * i as i32)).map_err(e)?;
    }
    let panels = body.split_evenly((rows, cols));
    draw(&panels)?;
    root.present().map_err(e)?;
    Ok(())
}
