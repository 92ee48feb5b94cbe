//! The parts of the benchmark charts that every chart draws the same way: the SVG header with its
//! title, and the x axis of service counts (log scale) with its label.

use std::fmt::Write;

/// Canvas size and margins, in SVG units.
#[derive(Clone, Copy)]
pub struct Frame {
    pub w: f64,
    pub h: f64,
    pub left: f64,
    pub right: f64,
    pub bottom: f64,
}

/// `<svg>` opening tag, white background, title at the top left.
pub fn open(s: &mut String, f: Frame, title: &str) {
    let (w, h, left) = (f.w, f.h, f.left);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{left}" y="22" font-size="14">{title}</text>"#);
}

/// A tick and its number under the plot at each `(x, n)`, then the axis label centred below.
pub fn x_axis(s: &mut String, f: Frame, ticks: impl IntoIterator<Item = (f64, String)>, label: &str) {
    for (x, n) in ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{n}</text>"##,
            f.h - f.bottom,
            f.h - f.bottom + 5.0,
            f.h - f.bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
        (f.left + f.w - f.right) / 2.0,
        f.h - 10.0
    );
}
