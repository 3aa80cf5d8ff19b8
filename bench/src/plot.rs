//! The `--plot` SVG: throughput and p99 per second, one panel each, faults as red vertical lines. Hand-written
//! SVG keeps the bench free of a plotting stack for two polylines.

use std::fmt::Write;

use crate::faults::Applied;
use crate::live::Second;

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

/// An SVG document of the run's timeline.
pub fn svg(title: &str, seconds: &[Second], faults: &[Applied]) -> String {
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    let rps: Vec<f64> = seconds.iter().map(|x| (x.ok + x.errors) as f64).collect();
    let errs: Vec<f64> = seconds.iter().map(|x| x.errors as f64).collect();
    let p99: Vec<f64> = seconds.iter().map(|x| x.p99_ms).collect();
    let span = seconds.len().max(1) as f64;
    panel(
        &mut s,
        TOP,
        "requests/s",
        &[(&rps, "#1f77b4"), (&errs, "#d62728")],
        span,
        faults,
    );
    panel(
        &mut s,
        TOP + PANEL_H + GAP,
        "p99 latency (ms)",
        &[(&p99, "#2ca02c")],
        span,
        faults,
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        h - 8.0
    );
    s.push_str("</svg>\n");
    s
}

fn panel(
    s: &mut String,
    y0: f64,
    label: &str,
    series: &[(&Vec<f64>, &str)],
    span: f64,
    faults: &[Applied],
) {
    let pw = W - LEFT - RIGHT;
    let max = series
        .iter()
        .flat_map(|(v, _)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let top = nice_ceiling(max);
    let x = |t: f64| LEFT + t / span * pw;
    let y = |v: f64| y0 + PANEL_H - v / top * PANEL_H;
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" >{}</text>"#,
        y0 - 6.0,
        escape(label)
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            LEFT + pw,
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            fmt_num(v)
        );
    }
    let step = tick_step(span);
    let mut t = 0.0;
    while t <= span {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t),
            y0 + PANEL_H + 15.0,
            t as u64
        );
        t += step;
    }
    for f in faults {
        let fx = x(f.at_ms as f64 / 1000.0);
        let _ = writeln!(
            s,
            r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{y0}" y2="{}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
            y0 + PANEL_H
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728">{}</text>"##,
            fx + 3.0,
            y0 + 12.0,
            escape(&f.label)
        );
    }
    for (v, color) in series {
        // Each second's value is drawn at the middle of its second.
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, &val)| format!("{:.1},{:.1}", x(i as f64 + 0.5), y(val)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
    }
}

/// A round number at or above `v`, for the axis top.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * mag)
}

fn tick_step(span: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| span / s <= 12.0)
        .unwrap_or(1200.0)
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_series_and_faults() {
        let secs: Vec<Second> = (0..10)
            .map(|i| Second {
                ok: 1000 + i,
                errors: 0,
                p99_ms: 1.5,
            })
            .collect();
        let doc = svg(
            "run <1>",
            &secs,
            &[Applied {
                at_ms: 5000,
                label: "kill n1".into(),
            }],
        );
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 3);
        assert!(doc.contains("kill n1"));
        assert!(doc.contains("run &lt;1&gt;"));
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(1800.0), 2000.0);
        assert_eq!(nice_ceiling(2400.0), 2500.0);
    }
}
