//! kubectl's output: aligned tables; the columns themselves are `tug_api::columns`.

pub use tug_api::columns::{headers, row};

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
