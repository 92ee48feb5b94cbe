//! Small hand-written SVG line charts (the bench's other plot is made the same way, with no
//! plotting dependency to build): one metric against the number of Services, one line per proxy.

use std::fmt::Write as _;

pub struct Series {
    pub label: String,
    pub color: &'static str,
    /// (services, value), services ascending.
    pub points: Vec<(usize, f64)>,
}

pub const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// A chart with a log x axis (services) and a linear y axis from 0. None when nothing to draw.
pub fn chart(title: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| (p.0 as f64).log10()))
        .collect();
    if xs.is_empty() {
        return None;
    }
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 70.0, 210.0, 40.0, 50.0);
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let xmax = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let px = |n: usize| {
        let span = (xmax - xmin).max(1e-9);
        let x = if xmax > xmin {
            ((n as f64).log10() - xmin) / span
        } else {
            0.5
        };
        left + x * (w - left - right)
    };
    let py = |y: f64| h - bottom - y / ymax * (h - top - bottom);
    let frame = crate::svg_chart::Frame {
        w,
        h,
        left,
        right,
        bottom,
    };
    let mut s = String::new();
    crate::svg_chart::open(&mut s, frame, title);
    for k in 0..=5 {
        let y = ymax / 1.15 * f64::from(k) / 5.0;
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0,
            tick(y)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{y_label}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    let mut sizes: Vec<usize> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    crate::svg_chart::x_axis(
        &mut s,
        frame,
        sizes.iter().map(|n| (px(*n), n.to_string())),
        "services (10 endpoints each, log scale)",
    );
    for (i, se) in series.iter().enumerate() {
        let path: Vec<String> = se
            .points
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", px(*n), py(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            se.color
        );
        for (n, v) in &se.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}, {n} services: {}</title></circle>"#,
                px(*n),
                py(*v),
                se.color,
                se.label,
                tick(*v)
            );
        }
        let (lx, ly) = (w - right + 15.0, top + 20.0 + i as f64 * 22.0);
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            se.color,
            lx + 28.0,
            ly + 4.0,
            se.label
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

fn tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_line_and_a_legend_entry_per_series() {
        let series = vec![
            Series {
                label: "a".into(),
                color: COLORS[0],
                points: vec![(10, 1.0), (1000, 2.0)],
            },
            Series {
                label: "b".into(),
                color: COLORS[1],
                points: vec![(10, 3.0), (1000, 0.5)],
            },
        ];
        let svg = chart("t", "y", &series).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains(">b, 1000 services: 0.50<"));
        assert!(chart("t", "y", &[]).is_none());
    }
}
