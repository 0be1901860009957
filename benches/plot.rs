//! Draws the round-trip chart of `compare`: p50 against payload size, log-log, one line per
//! transport, placement `split`, as a hand-written SVG.
//!
//! `cargo run --release -p shmlink-benches --bin plot -- [JSON] [SVG]`
//!
//! Defaults: `docs/bench.json` and `docs/rtt.svg`; relative paths are taken from the
//! workspace root.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use shmlink_benches::{Pattern, Placement, Record, resolve};

const TRANSPORTS: [(&str, &str); 7] = [
    ("shmlink", "#d62728"),
    ("shmlink-typed", "#ff7f0e"),
    ("uds", "#1f77b4"),
    ("tcp", "#17becf"),
    ("tarpc", "#9467bd"),
    ("iceoryx2-event", "#2ca02c"),
    ("iceoryx2-poll", "#8c564b"),
];

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

fn time_label(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{} µs", ns / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// The SVG for `lines`: transport name to (size, p50 ns) points.
fn svg(lines: &BTreeMap<&str, Vec<(f64, f64)>>) -> String {
    let points = lines.values().flatten();
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if x_min > x_max {
        (x_min, x_max, y_min, y_max) = (64.0, 16.0 * 1024.0 * 1024.0, 1e3, 1e7);
    }
    // Whole decades on the time axis, powers of two (labelled every 4) on the size axis.
    let (lx0, lx1) = (
        x_min.log2().floor(),
        x_max.log2().ceil().max(x_min.log2().floor() + 1.0),
    );
    let (ly0, ly1) = (
        y_min.log10().floor(),
        y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x.log2() - lx0) / (lx1 - lx0) * plot_w;
    let py = |y: f64| TOP + plot_h - (y.log10() - ly0) / (ly1 - ly0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">Round trip p50 by payload size (endpoints on separate CPUs)</text>"#,
        LEFT + plot_w / 2.0
    );
    // Grid: every power of two, labelled at the measured sizes.
    let mut sizes: Vec<f64> = lines.values().flatten().map(|p| p.0).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let mut e = lx0;
    while e <= lx1 {
        let x = px(2f64.powf(e));
        let major = sizes.iter().any(|&v| (v.log2() - e).abs() < 1e-9);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-width="1"/>"##,
            TOP + plot_h,
            if major { "#ccc" } else { "#eee" }
        );
        if major {
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + plot_h + 18.0,
                size_label(2f64.powf(e))
            );
        }
        e += 1.0;
    }
    let mut e = ly0;
    while e <= ly1 {
        let y = py(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ccc" stroke-width="1"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 4.0,
            time_label(10f64.powf(e))
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">payload size (log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">round trip, p50 (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    // Lines and legend, in the fixed transport order.
    let mut row = 0.0;
    for (name, color) in TRANSPORTS {
        let Some(points) = lines.get(name) else {
            continue;
        };
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = TOP + 10.0 + row * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
        row += 1.0;
    }
    s.push_str("</svg>\n");
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let input = resolve(args.first().map_or("docs/bench.json", String::as_str));
    let output = resolve(args.get(1).map_or("docs/rtt.svg", String::as_str));
    let records: Vec<Record> = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
    let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &records {
        if r.pattern != Pattern::Rtt || r.placement != Placement::Split {
            continue;
        }
        if let (Some(size), Some(p50)) = (r.size, r.p50_ns)
            && size > 0
            && p50 > 0.0
            && let Some((name, _)) = TRANSPORTS.iter().find(|(n, _)| *n == r.transport.name())
        {
            lines.entry(name).or_default().push((size as f64, p50));
        }
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&output, svg(&lines))?;
    println!(
        "wrote {} ({} transports) from {}",
        output.display(),
        lines.len(),
        input.display()
    );
    Ok(())
}
