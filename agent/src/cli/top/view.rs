//! Drawing one frame of `modelgate top`; laid out to fit 80x24.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{State, model::Row};

/// The narrowest key column.
const KEY_MIN: u16 = 16;
/// The other columns' widths: ACT, REQ/S, TOK/S, ERR/S, LAT MS, MODEL,
/// DIRECT, BLOCK.
const FIXED: [u16; 8] = [3, 6, 7, 5, 6, 14, 6, 5];

/// `text` in at most `width` characters: the middle gives way, the end (an
/// executable's file name) stays: `/root/.pyenv/…/bin/python3.12`.
pub fn elide_middle(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_string();
    }
    if width < 2 {
        return chars[..width].iter().collect();
    }
    let name_len = text.rsplit('/').next().map_or(0, |n| n.chars().count());
    // The file name with its slash, when it fits beside a little of the
    // start; else as much of the end as fits; else half and half.
    let tail = if text.contains('/') && name_len + 1 + 2 <= width {
        name_len + 1
    } else if text.contains('/') {
        width - 1
    } else {
        (width - 1) / 2
    };
    let head = width - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

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
            "KEY", "ACT", "REQ/S", "TOK/S", "ERR/S", "LAT MS", "MODEL", "DIRECT", "BLOCK",
        ]
        .map(Cell::from),
    )
    .style(Style::new().add_modifier(Modifier::REVERSED));
    // The key column takes what the others leave.
    let fixed: u16 = FIXED.iter().sum::<u16>() + FIXED.len() as u16;
    let key_width = usize::from(table.width.saturating_sub(fixed).max(KEY_MIN));
    let body = rows.iter().map(|r| {
        TableRow::new([
            Cell::from(elide_middle(&r.key, key_width)),
            Cell::from(r.in_flight.to_string()),
            Cell::from(format!("{:.1}", r.req_s)),
            Cell::from(format!("{:.0}", r.tok_s)),
            Cell::from(format!("{:.2}", r.err_s)),
            Cell::from(r.latency_ms.map_or("-".into(), |l| format!("{l:.0}"))),
            Cell::from(r.model.clone()),
            Cell::from(r.direct.to_string()),
            Cell::from(r.blocked.to_string()),
        ])
    });
    let mut widths = vec![Constraint::Min(KEY_MIN)];
    widths.extend(FIXED.map(Constraint::Length));
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

#[cfg(test)]
mod tests {
    use super::elide_middle;

    #[test]
    fn the_middle_gives_way_and_the_file_name_stays() {
        let exe = "/root/.pyenv/versions/3.12.7/bin/python3.12";
        let short = elide_middle(exe, 23);
        assert_eq!(short, "/root/.pyen…/python3.12");
        assert_eq!(short.chars().count(), 23);
        assert_eq!(elide_middle(exe, 60), exe, "what fits is left alone");
        assert_eq!(
            elide_middle("/opt/a-very-long-executable-name", 10),
            "…able-name",
            "a name longer than the column keeps its end"
        );
        assert_eq!(
            elide_middle("billing-report-generator.service", 16),
            "billing-…service"
        );
    }
}
