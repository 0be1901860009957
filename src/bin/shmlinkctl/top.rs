//! `shmlinkctl top`'s screen: a pure function of two successive snapshots, drawn on any
//! ratatui backend (the terminal, or `TestBackend` in tests/inspect).
#![allow(dead_code)] // tests/inspect includes this file for the rendering alone

use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use shmlink::inspect::{SessionInfo, Snapshot};

/// What the sessions table is sorted by (highest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Sort {
    /// Messages per second, both ways together.
    #[default]
    Messages,
    /// Bytes per second, both ways together.
    Bytes,
}

impl Sort {
    /// The other key (the `s` key toggles).
    pub(crate) fn toggled(self) -> Self {
        match self {
            Self::Messages => Self::Bytes,
            Self::Bytes => Self::Messages,
        }
    }
}

/// One session's rates between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rate {
    /// The session's first end.
    pub(crate) end: u32,
    /// `a -> b` and `b -> a` nodes, for display.
    pub(crate) label: String,
    /// Messages per second, both ways.
    pub(crate) msgs_per_sec: f64,
    /// Bytes per second, both ways.
    pub(crate) bytes_per_sec: f64,
    /// Messages in flight (both ends) and the window of one end.
    pub(crate) in_flight: u32,
}

fn sent(s: &SessionInfo) -> (u64, u64) {
    let b = s.b.as_ref();
    (
        s.a.sent_messages + b.map_or(0, |b| b.sent_messages),
        s.a.sent_bytes + b.map_or(0, |b| b.sent_bytes),
    )
}

/// Per-session rates from `prev` to `cur`, `secs` apart, sorted by `sort` (highest first,
/// then by end id). A session absent from `prev` counts from zero.
pub(crate) fn rates(prev: Option<&Snapshot>, cur: &Snapshot, secs: f64, sort: Sort) -> Vec<Rate> {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let mut rates: Vec<Rate> = cur
        .sessions
        .iter()
        .map(|s| {
            let (m1, b1) = sent(s);
            let (m0, b0) = prev
                .and_then(|p| p.sessions.iter().find(|o| o.a.end == s.a.end))
                .map_or((0, 0), sent);
            let label = match &s.b {
                Some(b) => format!("{} <-> {}", s.a.node_name, b.node_name),
                None => format!("{} <-> (closed)", s.a.node_name),
            };
            Rate {
                end: s.a.end,
                label,
                msgs_per_sec: m1.saturating_sub(m0) as f64 / secs,
                bytes_per_sec: b1.saturating_sub(b0) as f64 / secs,
                in_flight: s.a.in_flight + s.b.as_ref().map_or(0, |b| b.in_flight),
            }
        })
        .collect();
    rates.sort_by(|x, y| {
        let (kx, ky) = match sort {
            Sort::Messages => (x.msgs_per_sec, y.msgs_per_sec),
            Sort::Bytes => (x.bytes_per_sec, y.bytes_per_sec),
        };
        ky.total_cmp(&kx).then(x.end.cmp(&y.end))
    });
    rates
}

/// A text bar of `width` cells for `used` of `total`, with the percentage.
pub(crate) fn bar(used: u64, total: u64, width: usize) -> String {
    let fraction = if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = ((fraction * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(width - filled),
        fraction * 100.0
    )
}

/// A count with a K/M/G suffix.
pub(crate) fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}K", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Draws one screen of `top` from `prev` (the snapshot before, if any) and `cur`, taken
/// `secs` apart.
///
/// # Errors
///
/// The backend's error, if drawing fails.
pub(crate) fn render<B: Backend>(
    terminal: &mut Terminal<B>,
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    secs: f64,
    sort: Sort,
) -> Result<(), B::Error> {
    let rates = rates(prev, cur, secs, sort);
    let total_msgs: f64 = rates.iter().map(|r| r.msgs_per_sec).sum();
    let total_bytes: f64 = rates.iter().map(|r| r.bytes_per_sec).sum();
    terminal.draw(|frame| {
        let [head, nodes_area, sessions_area, help] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Length(cur.nodes.len().min(12) as u16 + 3),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let e = &cur.engine;
        let c = &cur.counters;
        let summary = vec![
            Line::from(format!(
                "shmlink engine {} pid {}  up {}s  policy {}  {} nodes  {} services  {} sessions",
                e.version,
                e.pid,
                e.uptime_ms / 1000,
                e.policy,
                c.nodes,
                c.services,
                cur.sessions.len()
            )),
            Line::from(format!(
                "{} msg/s  {}B/s  total {} msgs {}B  violations {}  waiting {}",
                human(total_msgs),
                human(total_bytes),
                c.messages,
                human(c.bytes as f64),
                c.violations,
                c.waiting
            )),
        ];
        frame.render_widget(
            Paragraph::new(summary).block(Block::default().borders(Borders::BOTTOM)),
            head,
        );
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let node_rows = cur.nodes.iter().map(|n| {
            Row::new(vec![
                n.id.to_string(),
                n.name.clone(),
                n.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                n.sessions.to_string(),
                if n.active { "active" } else { "idle" }.to_owned(),
                bar(n.rx_in_use, n.rx_size, 20),
            ])
        });
        frame.render_widget(
            Table::new(
                node_rows,
                [
                    Constraint::Length(5),
                    Constraint::Length(20),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(7),
                    Constraint::Length(28),
                ],
            )
            .header(
                Row::new(vec!["ID", "NODE", "PID", "SESSIONS", "STATE", "RX ARENA"]).style(bold),
            )
            .block(Block::default().title("nodes").borders(Borders::TOP)),
            nodes_area,
        );
        let session_rows = rates.iter().map(|r| {
            Row::new(vec![
                r.end.to_string(),
                r.label.clone(),
                human(r.msgs_per_sec),
                format!("{}B", human(r.bytes_per_sec)),
                format!("{}/{}", r.in_flight, e.window_messages),
            ])
        });
        let title = match sort {
            Sort::Messages => "sessions (by msg/s)",
            Sort::Bytes => "sessions (by bytes/s)",
        };
        frame.render_widget(
            Table::new(
                session_rows,
                [
                    Constraint::Length(6),
                    Constraint::Length(34),
                    Constraint::Length(9),
                    Constraint::Length(9),
                    Constraint::Length(11),
                ],
            )
            .header(Row::new(vec!["END", "NODES", "MSG/S", "BYTES/S", "IN FLIGHT"]).style(bold))
            .block(Block::default().title(title).borders(Borders::TOP)),
            sessions_area,
        );
        frame.render_widget(Paragraph::new("q quit  s sort by msg/s or bytes/s"), help);
    })?;
    Ok(())
}
