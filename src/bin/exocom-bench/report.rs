//! The figures: one row per workload and metric, printed, written as a
//! markdown table and drawn as an SVG bar chart.

use std::fmt::Write as _;

use crate::cpu::Cpu;
use crate::measure::Outcome;

/// One metric of one workload, for the three systems.
pub struct Row {
    /// e.g. "W2 one-way 1→1".
    pub workload: String,
    /// e.g. "msg/s".
    pub unit: &'static str,
    /// Latency: lower is better.
    pub lower_is_better: bool,
    /// Our router.
    pub ours: Option<f64>,
    /// nats-server.
    pub nats: Option<f64>,
    /// The bare forwarder.
    pub fwd: Option<f64>,
    /// Notes from each system.
    pub notes: Vec<String>,
    /// Systems that did not finish the workload in the time bound: their
    /// rate covers the whole bound and compares with nothing.
    pub incomplete: Vec<&'static str>,
    /// CPU per unit of work of ours, nats-server and the forwarder (on the
    /// first row of a workload only).
    pub cpu: [Option<Cpu>; 3],
}

impl Row {
    /// ours/theirs as the goal states it (≥ 1 for rates, ≤ 1 for latency).
    pub fn vs_nats(&self) -> Option<f64> {
        Some(self.ours? / self.nats?)
    }

    /// Our share of the forwarder's performance (≥ 0.7 is the goal).
    pub fn vs_fwd(&self) -> Option<f64> {
        let (o, f) = (self.ours?, self.fwd?);
        Some(if self.lower_is_better { f / o } else { o / f })
    }

    /// Whether the row meets the goal (None when a figure is missing or a
    /// system did not finish).
    pub fn meets_goal(&self) -> Option<bool> {
        if !self.incomplete.is_empty() {
            return None;
        }
        let nats_ok = self.vs_nats().map(|r| if self.lower_is_better { r <= 1.0 } else { r >= 1.0 });
        let fwd_ok = self.vs_fwd().map(|r| r >= 0.7);
        match (nats_ok, fwd_ok) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(true) && b.unwrap_or(true)),
        }
    }
}

/// Rows for one outcome triple (ours, nats-server, forwarder) and their CPU
/// per unit. Latency outcomes give three rows.
pub fn rows(workload: &str, unit: &'static str, outcomes: [&Outcome; 3], cpu: [Option<Cpu>; 3]) -> Vec<Row> {
    let [ours, nats, fwd] = outcomes;
    let notes: Vec<String> = [("ours", ours), ("nats", nats), ("fwd", fwd)]
        .iter()
        .filter_map(|(who, o)| match o {
            Outcome::Rate { note, .. } if !note.is_empty() => Some(format!("{who}: {note}")),
            Outcome::Failed(e) => Some(format!("{who} failed: {e}")),
            _ => None,
        })
        .collect();
    let lat = |o: &Outcome, k: usize| match o {
        Outcome::Latency { p50, p99, p999, .. } => Some([*p50, *p99, *p999][k]),
        _ => None,
    };
    let incomplete: Vec<&'static str> = [("ours", ours), ("nats", nats), ("fwd", fwd)]
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Rate { done, wanted, .. } if done < wanted))
        .map(|(who, _)| *who)
        .collect();
    let is_latency = [ours, nats, fwd].iter().any(|o| matches!(o, Outcome::Latency { .. }));
    if is_latency {
        return ["p50", "p99", "p99.9"]
            .iter()
            .enumerate()
            .map(|(k, q)| Row {
                workload: format!("{workload} {q}"),
                unit: "µs",
                lower_is_better: true,
                ours: lat(ours, k),
                nats: lat(nats, k),
                fwd: lat(fwd, k),
                notes: if k == 0 { notes.clone() } else { Vec::new() },
                incomplete: Vec::new(),
                cpu: if k == 0 { cpu } else { [None; 3] },
            })
            .collect();
    }
    let rate = |o: &Outcome| match o {
        Outcome::Rate { per_s, .. } => Some(*per_s),
        _ => None,
    };
    vec![Row {
        workload: workload.to_string(),
        unit,
        lower_is_better: false,
        ours: rate(ours),
        nats: rate(nats),
        fwd: rate(fwd),
        notes,
        incomplete,
        cpu,
    }]
}

/// What CPU time is divided by, for a row's unit.
fn unit_of_work(unit: &str) -> &'static str {
    match unit {
        "deliveries/s" => "delivery",
        "round trips/s" | "µs" => "round trip",
        _ => "message",
    }
}

fn fig(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{:.0}", v),
        Some(v) => format!("{:.1}", v),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

/// The markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | unit | ours | nats-server | forwarder | ours/nats | ours vs forwarder | goal |\n|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let goal = match r.meets_goal() {
            Some(true) => "met".to_string(),
            Some(false) => "**not met**".to_string(),
            None if !r.incomplete.is_empty() => {
                format!("not comparable: {} incomplete", r.incomplete.join(", "))
            }
            None => "–".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.unit,
            fig(r.ours),
            fig(r.nats),
            fig(r.fwd),
            ratio(r.vs_nats()),
            ratio(r.vs_fwd()),
            goal
        );
    }
    if rows.iter().any(|r| r.cpu.iter().any(Option::is_some)) {
        out.push_str(
            "\nCPU µs per unit of work (server process + all clients), from /proc:\n\n\
             | workload | per | ours | nats-server | forwarder |\n|---|---|---:|---:|---:|\n",
        );
        for r in rows.iter().filter(|r| r.cpu.iter().any(Option::is_some)) {
            let cell = |c: &Option<Cpu>| c.map_or("–".to_string(), |c| c.show());
            let workload = r.workload.trim_end_matches(" p50");
            let _ = writeln!(
                out,
                "| {workload} | {} | {} | {} | {} |",
                unit_of_work(r.unit),
                cell(&r.cpu[0]),
                cell(&r.cpu[1]),
                cell(&r.cpu[2])
            );
        }
    }
    let notes: Vec<&String> = rows.iter().flat_map(|r| &r.notes).collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for (r, n) in rows.iter().flat_map(|r| r.notes.iter().map(move |n| (r, n))) {
            let _ = writeln!(out, "- {}: {n}", r.workload);
        }
    }
    out.push_str(
        "\nours/nats: ours divided by nats-server (rates: ≥ 1 is the goal; latency: ≤ 1). \
         ours vs forwarder: our performance as a share of the bare forwarder's (≥ 0.7 is the goal).\n",
    );
    out
}

/// A hand-drawn SVG: per row, three bars scaled to the best system of that row.
pub fn svg(rows: &[Row], title: &str) -> String {
    const W: f64 = 760.0;
    const LABEL: f64 = 200.0;
    const BAR_H: f64 = 12.0;
    const ROW_H: f64 = 3.0 * BAR_H + 16.0;
    let colors = [("ours", "#2b6cb0"), ("nats-server", "#dd6b20"), ("forwarder", "#718096")];
    let height = 60.0 + ROW_H * rows.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">{title}</text>\n"
    );
    for (i, (name, color)) in colors.iter().enumerate() {
        let x = 10.0 + i as f64 * 120.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"37\">{name}</text>",
            x + 14.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"400\" y=\"37\" fill=\"#555\">bar length: performance relative to the best of the three (latency inverted)</text>"
    );
    for (i, r) in rows.iter().enumerate() {
        let y0 = 50.0 + ROW_H * i as f64;
        let _ =
            writeln!(s, "<text x=\"10\" y=\"{}\">{} ({})</text>", y0 + 1.5 * BAR_H + 4.0, r.workload, r.unit);
        let perf = |v: Option<f64>| v.map(|v| if r.lower_is_better { 1.0 / v } else { v });
        let vals = [r.ours, r.nats, r.fwd];
        let best = vals.iter().filter_map(|v| perf(*v)).fold(0.0_f64, f64::max);
        for (k, v) in vals.iter().enumerate() {
            let y = y0 + k as f64 * BAR_H;
            let len = match (perf(*v), best > 0.0) {
                (Some(p), true) => (W - LABEL - 90.0) * p / best,
                _ => 0.0,
            };
            let _ = writeln!(
                s,
                "<rect x=\"{LABEL}\" y=\"{y}\" width=\"{len:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\">{}</text>",
                BAR_H - 2.0,
                colors[k].1,
                LABEL + len + 4.0,
                y + BAR_H - 3.0,
                fig(*v)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
