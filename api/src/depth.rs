//! A cheap upper bound on how deeply a YAML text nests, read in one pass before any parse:
//! the YAML parser's time grows with the square of the depth, and its own limit of 128
//! levels applies only once the whole document is parsed, so a hostile body of 80 KB could
//! hold the API for seconds. Flow collections count their brackets (outside quotes and
//! comments); block collections count the indentation levels open on the way to a line and
//! the `- ` items that start on it; block scalars (`|`, `>`) count as one level, whatever
//! their content's indentation.

/// The first line (1-based) where `text` may nest deeper than `limit`, if any. The bound
/// may overestimate (a `[` inside a plain scalar counts), never underestimate.
pub fn deeper_than(text: &str, limit: usize) -> Option<usize> {
    let (depth, line) = yaml_depth(text, limit);
    (depth > limit).then_some(line)
}

/// The deepest nesting anything in `text` may have and the line where it is first reached,
/// scanning no further than the first line past `stop`.
fn yaml_depth(text: &str, stop: usize) -> (usize, usize) {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut scalar_at: Option<usize> = None;
    let (mut deepest, mut at) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = line.trim_start_matches(' ');
        if let Some(s) = scalar_at {
            if body.is_empty() || indent > s {
                continue;
            }
            scalar_at = None;
        }
        if body.is_empty() || body.starts_with('#') || body.starts_with("---") || body.starts_with("...") {
            continue;
        }
        if flow == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let dashes = body.split_inclusive(' ').take_while(|w| w.trim_end() == "-").count();
        let (opened, closed_to, scalar) = scan_flow(body, flow);
        let depth = indents.len() + dashes + opened.max(flow);
        if depth > deepest {
            (deepest, at) = (depth, n + 1);
            if deepest > stop {
                break;
            }
        }
        flow = closed_to;
        if scalar {
            scalar_at = Some(indent);
        }
    }
    (deepest, at)
}

/// Scans one line's flow brackets from depth `flow`: the deepest it reaches, the depth at
/// its end, and whether it ends in a block scalar indicator (`|`, `>`, with modifiers).
fn scan_flow(body: &str, mut flow: usize) -> (usize, usize, bool) {
    let mut deepest = flow;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') if matches!(prev, ' ' | '[' | '{' | ',' | ':') => quote = Some(c),
            (None, '#') if prev == ' ' => {
                end = i;
                break;
            }
            (None, '[' | '{') => {
                flow += 1;
                deepest = deepest.max(flow);
            }
            (None, ']' | '}') => flow = flow.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    let tail = body[..end].trim_end();
    let last = tail.rsplit(' ').next().unwrap_or("");
    let scalar = flow == 0 && (last.starts_with('|') || last.starts_with('>')) && last.len() <= 3;
    (deepest, flow, scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_bounded_from_above_cheaply() {
        let flow = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert_eq!(deeper_than(&flow, 128), Some(1));
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert_eq!(deeper_than(&block, 128), Some(129), "the first line past the limit");
        let dashes = format!("{}x\n", "- ".repeat(150));
        assert_eq!(deeper_than(&dashes, 128), Some(1));
        let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        args: ['a # not a comment', \"[\"]\n        command:\n        - sh\n        - -c\n        - |\n          if true; then\n                        echo deep   # script indentation is not nesting\n          fi\n";
        let (d, _) = yaml_depth(manifest, 128);
        assert!(d <= 8, "{d}");
        assert_eq!(deeper_than(manifest, 128), None);
    }
}
