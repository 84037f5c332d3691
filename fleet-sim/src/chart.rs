//! The run drawn as an SVG: devices online and serving, telemetry windows sealed, and drift
//! (Wasserstein/σ per feature) over time, with the timeline's events as vertical marks. Pure:
//! a report in, SVG text out.

use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 160.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const GAP: f64 = 40.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Panel<'a> {
    out: &'a mut String,
    top: f64,
    t_max: f64,
    y_max: f64,
}

impl Panel<'_> {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * t / self.t_max
    }
    fn y(&self, v: f64) -> f64 {
        self.top + PANEL - PANEL * (v / self.y_max).min(1.0)
    }
    fn frame(&mut self, title: &str) {
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let _ = write!(
            self.out,
            r##"<text x="{x0}" y="{}" font-size="13">{}</text><rect x="{x0}" y="{}" width="{}" height="{PANEL}" fill="none" stroke="#999"/><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">0</text>"##,
            self.top - 6.0,
            escape(title),
            self.top,
            x1 - x0,
            LEFT - 4.0,
            self.top + 10.0,
            format_value(self.y_max),
            LEFT - 4.0,
            self.top + PANEL
        );
    }
    fn line(&mut self, points: &[(f64, f64)], colour: &str, label: &str, index: usize) {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v)))
            .collect();
        let _ = write!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/><text x="{}" y="{}" font-size="11" fill="{colour}">{}</text>"#,
            path.join(" "),
            LEFT + 8.0 + 150.0 * index as f64,
            self.top + 14.0,
            escape(label)
        );
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The report's series as an SVG document.
pub fn svg(report: &Report) -> String {
    let t_max = report.series.last().map_or(1.0, |s| s.at_seconds).max(1.0);
    let height = TOP + 3.0 * (PANEL + GAP) + 20.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="16" font-size="14" font-weight="bold">{} — {} devices</text>"#,
        escape(&report.scenario),
        report.devices
    );
    let series = &report.series;
    let panels: [(&str, f64); 3] = [
        ("devices", report.devices.max(1) as f64),
        (
            "windows sealed (cumulative)",
            series
                .iter()
                .map(|s| s.windows_sealed as f64)
                .fold(1.0, f64::max),
        ),
        (
            "drift: Wasserstein/σ vs reference, fleet-wide (threshold 0.1)",
            series
                .iter()
                .flat_map(|s| s.drift.values().copied())
                .fold(0.2, f64::max),
        ),
    ];
    for (i, (title, y_max)) in panels.iter().enumerate() {
        let top = TOP + 20.0 + i as f64 * (PANEL + GAP);
        let mut panel = Panel {
            out: &mut out,
            top,
            t_max,
            y_max: *y_max,
        };
        panel.frame(title);
        match i {
            0 => {
                let online: Vec<_> = series
                    .iter()
                    .map(|s| (s.at_seconds, s.online as f64))
                    .collect();
                let installed: Vec<_> = series
                    .iter()
                    .map(|s| (s.at_seconds, s.installed as f64))
                    .collect();
                panel.line(&online, COLOURS[0], "online", 0);
                panel.line(&installed, COLOURS[2], "serving the deployed version", 1);
            }
            1 => {
                let sealed: Vec<_> = series
                    .iter()
                    .map(|s| (s.at_seconds, s.windows_sealed as f64))
                    .collect();
                panel.line(&sealed, COLOURS[0], "sealed", 0);
            }
            _ => {
                let features: std::collections::BTreeSet<&String> =
                    series.iter().flat_map(|s| s.drift.keys()).collect();
                for (k, feature) in features.iter().enumerate() {
                    let points: Vec<_> = series
                        .iter()
                        .filter_map(|s| s.drift.get(*feature).map(|v| (s.at_seconds, *v)))
                        .collect();
                    panel.line(&points, COLOURS[k % COLOURS.len()], feature, k);
                }
                let y = panel.y(0.1);
                let _ = write!(
                    panel.out,
                    r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
                    WIDTH - RIGHT
                );
            }
        }
    }
    // Timeline events as vertical marks across the panels.
    let bottom = TOP + 20.0 + 3.0 * (PANEL + GAP) - GAP;
    for event in &report.timeline {
        let x = LEFT + (WIDTH - LEFT - RIGHT) * (event.at_seconds / t_max).min(1.0);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{bottom}" stroke="#bbb" stroke-width="0.8"><title>{:.1} s: {}</title></line>"##,
            TOP + 20.0,
            event.at_seconds,
            escape(&event.what)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{t_max:.0} s</text></svg>"#,
        WIDTH - RIGHT,
        bottom + 14.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Sample, TimelineEvent};

    #[test]
    fn draws_every_series_and_event() {
        let mut report = Report {
            scenario: "x<y".into(),
            devices: 2,
            ..Report::default()
        };
        for t in 0..10 {
            let mut s = Sample {
                at_seconds: t as f64,
                online: 2,
                installed: 1,
                requests: t,
                windows_sealed: t,
                ..Sample::default()
            };
            s.drift.insert("petal_length".into(), t as f64 / 10.0);
            report.series.push(s);
        }
        report.timeline.push(TimelineEvent {
            at_seconds: 5.0,
            what: "drift injected".into(),
        });
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(
            svg.contains("petal_length")
                && svg.contains("drift injected")
                && svg.contains("x&lt;y")
        );
    }
}
