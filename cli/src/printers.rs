//! kubectl's output: aligned tables; the columns themselves are `tug_api::columns`.

pub use tug_api::columns::{headers, row};

/// The width of each column over a header and rows.
pub fn widths(header: &[String], rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).chain([header.len()]).max().unwrap_or(0);
    let mut w = vec![0usize; columns];
    for r in rows.iter().chain([header.to_vec()].iter()) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    w
}

/// One line of cells padded to `widths` (a wider cell widens its column from then on), three
/// spaces apart: a watch's rows line up under the table printed before them.
pub fn line(cells: &[String], widths: &mut Vec<usize>) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i >= widths.len() {
            widths.push(0);
        }
        widths[i] = widths[i].max(c.chars().count());
        if i + 1 == cells.len() {
            out += c;
        } else {
            out += &format!("{c:<w$}   ", w = widths[i]);
        }
    }
    out.trim_end().to_string() + "\n"
}

/// Aligns rows as kubectl's tabwriter does: columns padded to the widest cell, three spaces
/// apart.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).chain([header.len()]).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for r in rows.iter().chain([header.to_vec()].iter()) {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out += c;
            } else {
                out += &format!("{c:<w$}   ", w = widths[i]);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = if header.is_empty() { String::new() } else { line(header) };
    for r in rows {
        out += &line(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_rows_line_up_under_the_table() {
        let h: Vec<String> = ["NAME", "DATA", "AGE"].iter().map(|s| s.to_string()).collect();
        let rows = vec![vec!["a-long-name".to_string(), "1".into(), "5s".into()]];
        let mut w = widths(&h, &rows);
        let next = line(&["b".into(), "12".into(), "0s".into()], &mut w);
        assert_eq!(next, "b             12     0s\n");
        assert_eq!(table(&h, &rows).lines().next().unwrap().find("DATA"), next.find("12"));
    }

    #[test]
    fn tables_align() {
        let h: Vec<String> = ["NAME", "DATA", "AGE"].iter().map(|s| s.to_string()).collect();
        let rows = vec![
            vec!["a-long-name".to_string(), "1".into(), "5s".into()],
            vec!["b".into(), "12".into(), "3m".into()],
        ];
        assert_eq!(
            table(&h, &rows),
            "NAME          DATA   AGE\na-long-name   1      5s\nb             12     3m\n"
        );
    }
}
