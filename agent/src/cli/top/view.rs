//! Drawing one frame of `modelgate top`; laid out to fit 80x24.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{State, model::Row};

pub fn draw(frame: &mut Frame, state: &State, rows: &[Row]) {
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let totals = rows.iter().fold((0.0, 0.0, 0.0), |t, r| {
        (t.0 + r.req_s, t.1 + r.tok_s, t.2 + r.err_s)
    });
    let filter = if state.editing {
        format!("  filter: {}_", state.filter)
    } else if state.filter.is_empty() {
        String::new()
    } else {
        format!("  filter: {}", state.filter)
    };
    let title = format!(
        "modelgate {}  group: {}  sort: {}",
        state.agent,
        state.group.name(),
        state.sort.name()
    );
    let summary = match &state.problem {
        Some(problem) => problem.clone(),
        None => format!(
            "{} {}  {:.1} req/s  {:.0} tok/s  {:.2} err/s{filter}",
            rows.len(),
            state.group.plural(),
            totals.0,
            totals.1,
            totals.2
        ),
    };
    frame.render_widget(
        Paragraph::new(vec![
            Line::styled(title, Style::new().add_modifier(Modifier::BOLD)),
            Line::raw(summary),
        ]),
        head,
    );

    let header = TableRow::new(
        [
            "KEY", "REQ/S", "TOK/S", "ERR/S", "LAT MS", "MODEL", "DIRECT", "BLOCK",
        ]
        .map(Cell::from),
    )
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let body = rows.iter().map(|r| {
        TableRow::new([
            Cell::from(r.key.clone()),
            Cell::from(format!("{:.1}", r.req_s)),
            Cell::from(format!("{:.0}", r.tok_s)),
            Cell::from(format!("{:.2}", r.err_s)),
            Cell::from(r.latency_ms.map_or("-".into(), |l| format!("{l:.0}"))),
            Cell::from(r.model.clone()),
            Cell::from(r.direct.to_string()),
            Cell::from(r.blocked.to_string()),
        ])
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(5),
    ];
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        table,
    );
    let help = if state.editing {
        "type to filter  Enter keep  Esc clear"
    } else {
        "q quit  s sort  g group  / filter  p pause"
    };
    let paused = if state.paused { "  [paused]" } else { "" };
    frame.render_widget(Paragraph::new(format!("{help}{paused}")), foot);
}
