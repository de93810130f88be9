//! The reviewer's report: one self-contained HTML page.
//!
//! Feed every entry to a [`Summary`], then [`render`] it with the
//! verification status. The page has no external resources (inline CSS and
//! SVG, no scripts): who talks to whom (`id="talk-graph"`), volume per message
//! name over time, denials and handshake failures (by identity, by name, over
//! time), policy loads, gaps and alerts. Every string from the log is
//! HTML-escaped: names and reasons come from peers and must never become markup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::Entry;

/// Columns in the over-time charts.
const BUCKETS: usize = 24;
/// Names drawn separately in the volume chart; the rest are summed as "other".
const TOP_NAMES: usize = 6;
/// Colours for chart series (readable on white).
const PALETTE: [&str; 7] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#7f7f7f"];

/// Counts gathered from a log, ready to render.
#[derive(Debug, Default)]
pub struct Summary {
    lines: u64,
    first_time: Option<String>,
    last_time: Option<String>,
    events: BTreeMap<String, u64>,
    /// (sender, receiver) → name → count, from `deliver`.
    delivered: BTreeMap<(String, String), BTreeMap<String, u64>>,
    /// Same, from `send`/`reply` lines that name a receiver (used when there is no `deliver`).
    sent_to: BTreeMap<(String, String), BTreeMap<String, u64>>,
    /// (sender, receiver or "") → count of denials.
    denied_edges: BTreeMap<(String, String), u64>,
    services: BTreeSet<String>,
    /// name → second → sends.
    volume: HashMap<String, BTreeMap<i64, u64>>,
    denials_by_identity: BTreeMap<String, u64>,
    denials_by_name: BTreeMap<String, u64>,
    denials_time: BTreeMap<i64, u64>,
    handshake_by_identity: BTreeMap<String, u64>,
    handshake_by_reason: BTreeMap<String, u64>,
    handshake_time: BTreeMap<i64, u64>,
    policy: Vec<Entry>,
    incidents: Vec<Entry>,
}

/// Whether the log verified, for the page's banner.
#[derive(Clone, Debug)]
pub struct Status {
    /// `verified`, `TAMPERED` or `not verified`.
    pub verdict: Verdict,
    /// The details (first bad line and why, or what was checked).
    pub detail: String,
}

/// The banner's colour and word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Chains and signatures checked.
    Verified,
    /// Verification found tampering.
    Tampered,
    /// Could not be fully verified (no key).
    Unverified,
}

/// The second a line was written (the time axis' unit).
fn second_of(time: &str) -> Option<i64> {
    OffsetDateTime::parse(time, &Rfc3339).ok().map(|t| t.unix_timestamp())
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_insert(0) += 1;
}

impl Summary {
    /// An empty summary.
    pub fn new() -> Self {
        Summary::default()
    }

    /// Counts one entry.
    pub fn add(&mut self, e: &Entry) {
        self.lines += 1;
        if self.first_time.is_none() {
            self.first_time = Some(e.time.clone());
        }
        self.last_time = Some(e.time.clone());
        bump(&mut self.events, e.event.clone());
        let name = e.name.clone().unwrap_or_else(|| "(none)".into());
        match e.event.as_str() {
            "deliver" | "send" | "reply" => {
                if let Some(s) = &e.sender {
                    self.services.insert(s.clone());
                }
                if let (Some(s), Some(r)) = (&e.sender, &e.receiver) {
                    self.services.insert(r.clone());
                    let map = if e.event == "deliver" { &mut self.delivered } else { &mut self.sent_to };
                    bump(map.entry((s.clone(), r.clone())).or_default(), name.clone());
                }
                if e.event != "deliver"
                    && let Some(m) = second_of(&e.time)
                {
                    bump(self.volume.entry(name).or_default(), m);
                }
            }
            "deny" => {
                let who = e.sender.clone().unwrap_or_else(|| "(unknown)".into());
                self.services.insert(who.clone());
                if let Some(r) = &e.receiver {
                    self.services.insert(r.clone());
                }
                bump(&mut self.denied_edges, (who.clone(), e.receiver.clone().unwrap_or_default()));
                bump(&mut self.denials_by_identity, who);
                bump(&mut self.denials_by_name, name);
                if let Some(m) = second_of(&e.time) {
                    bump(&mut self.denials_time, m);
                }
            }
            "handshake_failed" => {
                let who = e
                    .identity
                    .clone()
                    .or_else(|| e.sender.clone())
                    .or_else(|| e.remote.as_deref().map(strip_port))
                    .unwrap_or_else(|| "(unknown)".into());
                bump(&mut self.handshake_by_identity, who);
                bump(&mut self.handshake_by_reason, e.reason.clone().unwrap_or_else(|| "(no reason)".into()));
                if let Some(m) = second_of(&e.time) {
                    bump(&mut self.handshake_time, m);
                }
            }
            "connect" => {
                if let Some(s) = &e.sender {
                    self.services.insert(s.clone());
                }
            }
            "policy_loaded" | "policy_rejected" => self.policy.push(e.clone()),
            "audit_gap" | "alert" => self.incidents.push(e.clone()),
            _ => {}
        }
    }

    fn edges(&self) -> &BTreeMap<(String, String), BTreeMap<String, u64>> {
        if self.delivered.is_empty() { &self.sent_to } else { &self.delivered }
    }

    fn time_range(&self) -> Option<(i64, i64)> {
        let all = self
            .volume
            .values()
            .chain([&self.denials_time, &self.handshake_time])
            .flat_map(|m| m.keys().next().into_iter().chain(m.keys().next_back()));
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for &m in all {
            lo = lo.min(m);
            hi = hi.max(m);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

fn strip_port(remote: &str) -> String {
    remote.rsplit_once(':').map_or(remote, |(host, _)| host).to_owned()
}

/// Escapes text for HTML and SVG.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Per-bucket counts over [lo, hi] seconds.
fn bucketize(series: &BTreeMap<i64, u64>, lo: i64, hi: i64) -> [u64; BUCKETS] {
    let mut out = [0u64; BUCKETS];
    let span = (hi - lo + 1).max(1);
    for (&m, &n) in series {
        let i = (((m - lo) * BUCKETS as i64) / span).clamp(0, BUCKETS as i64 - 1) as usize;
        out[i] += n;
    }
    out
}

fn time_label(m: i64) -> String {
    OffsetDateTime::from_unix_timestamp(m)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok()
        })
        .unwrap_or_default()
}

/// Renders the page.
pub fn render(summary: &Summary, status: &Status, title: &str) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let (banner_class, word) = match status.verdict {
        Verdict::Verified => ("ok", "Verified"),
        Verdict::Tampered => ("bad", "TAMPERED"),
        Verdict::Unverified => ("warn", "Not verified"),
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{t}</title><style>{css}</style></head><body>\
         <h1>{t}</h1>\
         <p class=\"meta\">{lines} lines · {first} → {last}</p>\
         <div id=\"verification\" class=\"banner {banner_class}\"><strong>{word}</strong> — {detail}</div>",
        t = esc(title),
        css = CSS,
        lines = summary.lines,
        first = esc(summary.first_time.as_deref().unwrap_or("-")),
        last = esc(summary.last_time.as_deref().unwrap_or("-")),
        detail = esc(&status.detail),
    );

    h.push_str("<h2>Who talks to whom</h2><p class=\"note\">Arrows: messages delivered from sender to receiver, labelled with names and counts. Red dashed: denied.</p>");
    talk_graph(&mut h, summary);
    h.push_str("<table><tr><th>sender</th><th>receiver</th><th>messages</th><th>names</th></tr>");
    for ((s, r), names) in summary.edges() {
        let total: u64 = names.values().sum();
        let list: Vec<String> = names.iter().map(|(n, c)| format!("{} ({c})", esc(n))).collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{total}</td><td>{}</td></tr>",
            esc(s),
            esc(r),
            list.join(", ")
        );
    }
    h.push_str("</table>");

    let range = summary.time_range();
    h.push_str("<h2>Volume per message name over time</h2>");
    volume_chart(&mut h, summary, range);

    h.push_str("<h2>Denials</h2>");
    bar_chart(&mut h, "denials-chart", &summary.denials_time, range, "#d62728");
    h.push_str("<div class=\"cols\">");
    count_table(&mut h, "by identity", &summary.denials_by_identity);
    count_table(&mut h, "by name", &summary.denials_by_name);
    h.push_str("</div>");

    h.push_str("<h2>Handshake failures</h2>");
    bar_chart(&mut h, "handshake-chart", &summary.handshake_time, range, "#ff7f0e");
    h.push_str("<div class=\"cols\">");
    count_table(&mut h, "by identity or address", &summary.handshake_by_identity);
    count_table(&mut h, "by reason", &summary.handshake_by_reason);
    h.push_str("</div>");

    h.push_str("<h2>Policy loads</h2>");
    entry_table(&mut h, &summary.policy);
    h.push_str("<h2>Audit gaps and alerts</h2>");
    entry_table(&mut h, &summary.incidents);
    h.push_str("<h2>Events</h2>");
    count_table(&mut h, "lines per event", &summary.events);
    h.push_str("</body></html>\n");
    h
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px 32px;color:#222;max-width:1320px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}\
.meta,.note{color:#666;margin:4px 0}.banner{padding:10px 14px;border-radius:6px;margin:12px 0}\
.ok{background:#e5f5e5;border:1px solid #4a4}.bad{background:#fde8e8;border:1px solid #c33}\
.warn{background:#fff5dd;border:1px solid #c90}table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}\
.num{text-align:right}.cols{display:flex;gap:32px;flex-wrap:wrap}svg{background:#fcfcfc;border:1px solid #eee}\
.empty{color:#888;font-style:italic}";

fn count_table(h: &mut String, title: &str, counts: &BTreeMap<String, u64>) {
    let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let _ = write!(h, "<table><tr><th>{}</th><th>count</th></tr>", esc(title));
    if rows.is_empty() {
        h.push_str("<tr><td class=\"empty\" colspan=\"2\">none</td></tr>");
    }
    for (k, v) in rows.iter().take(50) {
        let _ = write!(h, "<tr><td>{}</td><td class=\"num\">{v}</td></tr>", esc(k));
    }
    h.push_str("</table>");
}

fn entry_table(h: &mut String, entries: &[Entry]) {
    if entries.is_empty() {
        h.push_str("<p class=\"empty\">none</p>");
        return;
    }
    h.push_str(
        "<table><tr><th>time</th><th>seq</th><th>event</th><th>serial / rule</th><th>reason</th></tr>",
    );
    for e in entries.iter().take(500) {
        let what = match (e.policy_serial, &e.rule) {
            (Some(s), Some(r)) => format!("{s} / {r}"),
            (Some(s), None) => s.to_string(),
            (None, Some(r)) => r.clone(),
            (None, None) => e.dropped.map_or("-".into(), |d| format!("{d} records not written")),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.time),
            e.seq,
            esc(&e.event),
            esc(&what),
            esc(e.reason.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>");
}

fn talk_graph(h: &mut String, s: &Summary) {
    const W: f64 = 1000.0;
    const H: f64 = 640.0;
    let nodes: Vec<&String> = s.services.iter().collect();
    let _ = write!(
        h,
        "<svg id=\"talk-graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
         <title>Who talks to whom</title><defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"12\" markerHeight=\"12\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#456\"/></marker>\
         <marker id=\"arrow-deny\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"12\" markerHeight=\"12\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#c33\"/></marker></defs>"
    );
    if nodes.is_empty() {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no traffic in this log</text></svg>",
            W / 2.0,
            H / 2.0
        );
        return;
    }
    let (cx, cy) = (W / 2.0, H / 2.0);
    let radius = if nodes.len() == 1 { 0.0 } else { (H / 2.0 - 90.0).max(60.0) };
    let pos: HashMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let a = std::f64::consts::TAU * i as f64 / nodes.len() as f64 - std::f64::consts::FRAC_PI_2;
            (n.as_str(), (cx + radius * 1.35 * a.cos(), cy + radius * a.sin()))
        })
        .collect();
    let max = s.edges().values().map(|m| m.values().sum::<u64>()).max().unwrap_or(1).max(1);
    let node_r = 38.0;
    for ((from, to), names) in s.edges() {
        let total: u64 = names.values().sum();
        let width = 1.5 + 6.0 * ((total as f64).ln_1p() / (max as f64).ln_1p());
        let mut top: Vec<(&String, &u64)> = names.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let mut label: Vec<String> = top.iter().take(3).map(|(n, c)| format!("{n} ×{c}")).collect();
        if top.len() > 3 {
            label.push(format!("+{} more", top.len() - 3));
        }
        edge(h, &pos, from, to, node_r, width, "#456", "arrow", "", &label.join(", "));
    }
    for ((from, to), n) in &s.denied_edges {
        if to.is_empty() {
            continue;
        }
        edge(
            h,
            &pos,
            from,
            to,
            node_r,
            1.5,
            "#c33",
            "arrow-deny",
            " stroke-dasharray=\"6 4\"",
            &format!("denied ×{n}"),
        );
    }
    for n in &nodes {
        let (x, y) = pos[n.as_str()];
        let denied = s.denials_by_identity.get(*n).copied().unwrap_or(0);
        let stroke = if denied > 0 { "#c33" } else { "#345" };
        let _ = write!(
            h,
            "<g class=\"node\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{node_r}\" fill=\"#eef4fb\" stroke=\"{stroke}\" stroke-width=\"2\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"600\">{}</text></g>",
            y + 4.5,
            esc(n)
        );
    }
    h.push_str("</svg>");
}

#[allow(clippy::too_many_arguments)]
fn edge(
    h: &mut String,
    pos: &HashMap<&str, (f64, f64)>,
    from: &str,
    to: &str,
    node_r: f64,
    width: f64,
    colour: &str,
    marker: &str,
    extra: &str,
    label: &str,
) {
    let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(from), pos.get(to)) else {
        return;
    };
    if from == to {
        let _ = write!(
            h,
            "<path d=\"M{:.1},{:.1} c-50,-90 50,-90 14,-2\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"{width:.1}\"{extra} marker-end=\"url(#{marker})\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            x1 - 7.0,
            y1 - node_r,
            x1,
            y1 - node_r - 72.0,
            esc(label)
        );
        return;
    }
    let (dx, dy) = (x2 - x1, y2 - y1);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    let (ux, uy) = (dx / len, dy / len);
    // Bend every edge to its left so that a→b and b→a do not overlap.
    let (nx, ny) = (-uy, ux);
    let bend = 28.0;
    let (sx, sy) = (x1 + ux * node_r + nx * 8.0, y1 + uy * node_r + ny * 8.0);
    let (ex, ey) = (x2 - ux * (node_r + 2.0) + nx * 8.0, y2 - uy * (node_r + 2.0) + ny * 8.0);
    let (qx, qy) = ((sx + ex) / 2.0 + nx * bend, (sy + ey) / 2.0 + ny * bend);
    let (lx, ly) = ((sx + ex) / 4.0 + qx / 2.0 + nx * 10.0, (sy + ey) / 4.0 + qy / 2.0 + ny * 10.0);
    let _ = write!(
        h,
        "<path class=\"edge\" d=\"M{sx:.1},{sy:.1} Q{qx:.1},{qy:.1} {ex:.1},{ey:.1}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"{width:.1}\" stroke-opacity=\"0.8\"{extra} marker-end=\"url(#{marker})\"/>\
         <text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{colour}\" paint-order=\"stroke\" stroke=\"#fcfcfc\" stroke-width=\"3\">{}</text>",
        esc(label)
    );
}

fn axis_labels(h: &mut String, range: (i64, i64), x0: f64, x1: f64, y: f64) {
    let _ = write!(
        h,
        "<text x=\"{x0}\" y=\"{y}\" font-size=\"11\" fill=\"#666\">{}</text><text x=\"{x1}\" y=\"{y}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">{}</text>",
        time_label(range.0),
        time_label(range.1 + 1)
    );
}

fn volume_chart(h: &mut String, s: &Summary, range: Option<(i64, i64)>) {
    let (svg_w, svg_h, left, top, bottom) = (1000.0, 300.0, 50.0, 20.0, 40.0);
    let _ = write!(
        h,
        "<svg id=\"volume-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{svg_w}\" height=\"{svg_h}\" viewBox=\"0 0 {svg_w} {svg_h}\" role=\"img\"><title>Volume per message name</title>"
    );
    let Some((lo, hi)) = range.filter(|_| !s.volume.is_empty()) else {
        h.push_str(
            "<text x=\"500\" y=\"150\" text-anchor=\"middle\" fill=\"#888\">no messages sent</text></svg>",
        );
        return;
    };
    let mut names: Vec<(&String, u64)> = s.volume.iter().map(|(n, m)| (n, m.values().sum())).collect();
    names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut series: Vec<(String, [u64; BUCKETS])> =
        names.iter().take(TOP_NAMES).map(|(n, _)| ((*n).clone(), bucketize(&s.volume[*n], lo, hi))).collect();
    if names.len() > TOP_NAMES {
        let mut other = [0u64; BUCKETS];
        for (n, _) in &names[TOP_NAMES..] {
            for (o, v) in other.iter_mut().zip(bucketize(&s.volume[*n], lo, hi)) {
                *o += v;
            }
        }
        series.push(("(other)".into(), other));
    }
    let max = series.iter().flat_map(|(_, b)| b.iter()).copied().max().unwrap_or(1).max(1);
    let plot_w = svg_w - left - 220.0;
    let plot_h = svg_h - top - bottom;
    let _ = write!(
        h,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">{max}</text>",
        top + plot_h,
        left + plot_w,
        top + plot_h,
        left - 6.0,
        top + 10.0
    );
    for (i, (name, buckets)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<String> = buckets
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                let x = left + plot_w * (j as f64 + 0.5) / BUCKETS as f64;
                let y = top + plot_h - plot_h * v as f64 / max as f64;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let total: u64 = buckets.iter().sum();
        let _ = write!(
            h,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{} ({total})</text>",
            points.join(" "),
            left + plot_w + 20.0,
            top + 20.0 * i as f64,
            left + plot_w + 38.0,
            top + 20.0 * i as f64 + 10.5,
            esc(name)
        );
    }
    axis_labels(h, (lo, hi), left, left + plot_w, svg_h - 14.0);
    h.push_str("</svg>");
}

fn bar_chart(h: &mut String, id: &str, series: &BTreeMap<i64, u64>, range: Option<(i64, i64)>, colour: &str) {
    let (svg_w, svg_h, left, top, bottom) = (1000.0, 160.0, 50.0, 14.0, 34.0);
    let _ = write!(
        h,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{svg_w}\" height=\"{svg_h}\" viewBox=\"0 0 {svg_w} {svg_h}\" role=\"img\">"
    );
    let Some((lo, hi)) = range.filter(|_| !series.is_empty()) else {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">none</text></svg>",
            svg_w / 2.0,
            svg_h / 2.0
        );
        return;
    };
    let buckets = bucketize(series, lo, hi);
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    let plot_w = svg_w - left - 220.0;
    let plot_h = svg_h - top - bottom;
    let bw = plot_w / BUCKETS as f64;
    for (j, &v) in buckets.iter().enumerate() {
        let bh = plot_h * v as f64 / max as f64;
        let _ = write!(
            h,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{v}</title></rect>",
            left + bw * j as f64 + 1.0,
            top + plot_h - bh,
            bw - 2.0
        );
    }
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">{max}</text>",
        left - 6.0,
        top + 10.0
    );
    axis_labels(h, (lo, hi), left, left + plot_w, svg_h - 12.0);
    h.push_str("</svg>");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn page_has_the_graph_and_escapes_log_text() {
        let mut s = Summary::new();
        s.add(&entry(r#"{"seq":1,"time":"2026-11-22T10:00:00.000000000Z","event":"send","name":"todos.list","sender":"web"}"#));
        s.add(&entry(r#"{"seq":2,"time":"2026-11-22T10:00:01.000000000Z","event":"deliver","name":"todos.list","sender":"web","receiver":"todo"}"#));
        s.add(&entry(r#"{"seq":3,"time":"2026-11-22T10:05:00.000000000Z","event":"deny","name":"<script>x</script>","sender":"web","decision":"deny"}"#));
        s.add(&entry(r#"{"seq":4,"time":"2026-11-22T10:06:00.000000000Z","event":"handshake_failed","remote":"10.0.0.9:4000","reason":"unknown CA"}"#));
        let status = Status { verdict: Verdict::Verified, detail: "4 lines".into() };
        let page = render(&s, &status, "audit");
        assert!(page.contains("id=\"talk-graph\""));
        assert!(page.contains("todos.list ×1"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("10.0.0.9"));
        assert!(!page.contains("http://") || !page.contains("src=\"http"));
    }

    #[test]
    fn buckets_cover_the_range() {
        let mut m = BTreeMap::new();
        m.insert(0, 1);
        m.insert(99, 2);
        let b = bucketize(&m, 0, 99);
        assert_eq!(b[0], 1);
        assert_eq!(b[BUCKETS - 1], 2);
        assert_eq!(b.iter().sum::<u64>(), 3);
    }
}
