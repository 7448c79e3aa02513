//! `--plot`: the rows drawn as SVG with plotters.

use super::row::RowResult;

/// (frame size, Mpps, busy cycles per packet).
type Point = (f64, f64, f64);
/// A line: its legend and points.
type Series = (String, Vec<Point>);

/// `--plot`: an SVG with Mpps (left) and the backend's busy cycles (or ns) per packet (right)
/// against the frame size, one line per direction, ring layout, mrg setting and copy mode.
pub(crate) fn draw(path: &std::path::Path, rows: &[RowResult], unit: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plotting to {}: {e}", path.display());
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.error.is_none() && r.packets > 0) {
        let name = format!(
            "{} {} mrg {} {}",
            r.dir.name(),
            r.ring.name(),
            if r.mrg { "on" } else { "off" },
            r.copy.name()
        );
        let point = (r.size as f64, r.mpps(), r.busy_per_pkt().unwrap_or(0.0));
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, pts)) => pts.push(point),
            None => series.push((name, vec![point])),
        }
    }
    if series.is_empty() {
        return Err(format!("plotting to {}: no row to plot", path.display()));
    }
    let max_size = rows.iter().map(|r| r.size).max().unwrap_or(64) as f64;
    let min_size = rows.iter().map(|r| r.size).min().unwrap_or(64) as f64;
    let max_of = |f: fn(&Point) -> f64| {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(f))
            .fold(0.0f64, f64::max)
            * 1.1
    };
    let (max_mpps, max_busy) = (max_of(|p| p.1).max(0.1), max_of(|p| p.2).max(1.0));
    let root = SVGBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let halves = root.split_evenly((1, 2));
    let charts = [
        ("Mpps", max_mpps, 1usize),
        (
            if unit == "cyc" {
                "backend busy cycles per packet"
            } else {
                "backend busy ns per packet"
            },
            max_busy,
            2,
        ),
    ];
    for (area, (title, top, field)) in halves.iter().zip(charts) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (min_size.max(1.0)..max_size.max(min_size + 1.0)).log_scale(),
                0.0..top,
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("frame size (bytes)")
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line = pts
                .iter()
                .map(|p| (p.0, if field == 1 { p.1 } else { p.2 }));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(line.map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
