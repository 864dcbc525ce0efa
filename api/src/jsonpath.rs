//! kubectl's JSONPath templates (`-o jsonpath=…`, `-o custom-columns=…`): text with `{…}`
//! expressions — `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[*]`, `[1:3]`, `..name`, filters
//! `[?(@.type=="Ready")]` (`==`, `!=`, `<`, `>`, or a field's presence), `{range …}…{end}`,
//! and string literals `{"\n"}`. Several results of one expression print space-separated, as
//! kubectl prints them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Slice(Option<i64>, Option<i64>),
    Recursive(String),
    Filter(Vec<Step>, String, Option<Value>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

/// Parses a template.
pub fn parse(template: &str) -> Result<Vec<Node>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(i) => {
                if i > 0 {
                    tokens.push((false, rest[..i].to_string()));
                }
                let close =
                    find_close(&rest[i..]).ok_or_else(|| format!("unclosed action in {template:?}"))?;
                tokens.push((true, rest[i + 1..i + close].trim().to_string()));
                rest = &rest[i + close + 1..];
            }
            None => {
                tokens.push((false, rest.to_string()));
                rest = "";
            }
        }
    }
    let mut pos = 0;
    let nodes = nodes(&tokens, &mut pos, false)?;
    Ok(nodes)
}

/// The end of the action starting at `s[0] == '{'`, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

fn nodes(tokens: &[(bool, String)], pos: &mut usize, in_range: bool) -> Result<Vec<Node>, String> {
    let mut out = Vec::new();
    while *pos < tokens.len() {
        let (action, text) = &tokens[*pos];
        *pos += 1;
        if !action {
            out.push(Node::Text(text.clone()));
            continue;
        }
        if text == "end" {
            if in_range {
                return Ok(out);
            }
            return Err("{end} without {range}".into());
        }
        if let Some(p) = text.strip_prefix("range ") {
            let body = nodes(tokens, pos, true)?;
            out.push(Node::Range(path(p.trim())?, body));
            continue;
        }
        if (text.starts_with('"') && text.ends_with('"') && text.len() >= 2)
            || (text.starts_with('\'') && text.ends_with('\'') && text.len() >= 2)
        {
            let inner = &text[1..text.len() - 1];
            out.push(Node::Text(inner.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")));
            continue;
        }
        out.push(Node::Path(path(text)?));
    }
    if in_range {
        return Err("{range} without {end}".into());
    }
    Ok(out)
}

/// Parses one path: `.items[*].metadata.name`, `$.spec`, `@.x`.
fn path(p: &str) -> Result<Vec<Step>, String> {
    let p = p.trim_start_matches('$').trim_start_matches('@');
    let chars: Vec<char> = p.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let mut s = String::new();
        while *i < chars.len() && !matches!(chars[*i], '.' | '[') {
            if chars[*i] == '\\' && *i + 1 < chars.len() {
                *i += 1;
            }
            s.push(chars[*i]);
            *i += 1;
        }
        s
    };
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => {
                i += 2;
                steps.push(Step::Recursive(ident(&mut i)));
            }
            '.' => {
                i += 1;
                let name = ident(&mut i);
                if name == "*" {
                    steps.push(Step::Wildcard);
                } else if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let close = matching_bracket(&chars[i..]).ok_or_else(|| format!("unclosed [ in {p:?}"))?;
                let inner: String = chars[i + 1..i + close].iter().collect();
                i += close + 1;
                steps.push(bracket(inner.trim())?);
            }
            _ => {
                let name = ident(&mut i);
                steps.push(Step::Field(name));
            }
        }
    }
    Ok(steps)
}

/// The index of the `]` closing `chars[0] == '['`, past nested brackets and quotes.
fn matching_bracket(chars: &[char]) -> Option<usize> {
    let (mut depth, mut quote) = (0usize, None);
    for (i, c) in chars.iter().enumerate() {
        match (quote, *c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(*c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if let Some((l, r)) = f.split_once(op) {
                let field = path(l.trim())?;
                let r = r.trim();
                let value = if (r.starts_with('"') && r.ends_with('"'))
                    || (r.starts_with('\'') && r.ends_with('\''))
                {
                    Value::String(r[1..r.len() - 1].to_string())
                } else {
                    serde_json::from_str(r).map_err(|_| format!("bad filter value {r:?}"))?
                };
                return Ok(Step::Filter(field, op.to_string(), Some(value)));
            }
        }
        return Ok(Step::Filter(path(f.trim())?, String::new(), None));
    }
    if (inner.starts_with('\'') && inner.ends_with('\'')) || (inner.starts_with('"') && inner.ends_with('"'))
    {
        return Ok(Step::Field(inner[1..inner.len() - 1].to_string()));
    }
    if let Some((a, b)) = inner.split_once(':') {
        let n = |s: &str| {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                s.trim().parse().map(Some).map_err(|_| format!("bad slice {inner:?}"))
            }
        };
        return Ok(Step::Slice(n(a)?, n(b)?));
    }
    inner.parse().map(Step::Index).map_err(|_| format!("bad index {inner:?}"))
}

fn apply<'a>(values: Vec<&'a Value>, step: &Step) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for v in values {
        match step {
            Step::Field(f) => {
                if let Some(x) = v.get(f.as_str()) {
                    out.push(x);
                }
            }
            Step::Index(i) => {
                if let Some(a) = v.as_array() {
                    let len = i64::try_from(a.len()).unwrap_or(i64::MAX);
                    let idx = if *i < 0 { len + i } else { *i };
                    if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                        out.push(x);
                    }
                }
            }
            Step::Wildcard => match v {
                Value::Array(a) => out.extend(a.iter()),
                Value::Object(m) => out.extend(m.values()),
                _ => {}
            },
            Step::Slice(a, b) => {
                if let Some(arr) = v.as_array() {
                    let len = i64::try_from(arr.len()).unwrap_or(i64::MAX);
                    let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                    let (from, to) = (norm(a.unwrap_or(0)), norm(b.unwrap_or(len)));
                    if from < to {
                        let (from, to) =
                            (usize::try_from(from).unwrap_or(0), usize::try_from(to).unwrap_or(0));
                        out.extend(arr[from..to].iter());
                    }
                }
            }
            Step::Recursive(name) => recurse(v, name, &mut out),
            Step::Filter(field, op, want) => {
                for item in v.as_array().into_iter().flatten() {
                    let got = select(item, field).into_iter().next();
                    let keep = match (got, want) {
                        (Some(g), Some(w)) => compare(g, op, w),
                        (g, None) => g.is_some_and(|g| !g.is_null()),
                        (None, Some(_)) => false,
                    };
                    if keep {
                        out.push(item);
                    }
                }
            }
        }
    }
    out
}

fn compare(g: &Value, op: &str, w: &Value) -> bool {
    match op {
        "==" => g == w,
        "!=" => g != w,
        _ => match (g.as_f64(), w.as_f64()) {
            (Some(a), Some(b)) => match op {
                "<" => a < b,
                ">" => a > b,
                "<=" => a <= b,
                _ => a >= b,
            },
            _ => false,
        },
    }
}

fn recurse<'a>(v: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(name) {
                out.push(x);
            }
            for x in m.values() {
                recurse(x, name, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| recurse(x, name, out)),
        _ => {}
    }
}

/// The values a path selects from `root`.
pub fn select<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    steps.iter().fold(vec![root], |vs, s| apply(vs, s))
}

/// A value as kubectl prints it: strings bare, everything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The value a template selects (an analysis's `jsonPath`, `{$.data.ok}`): one result as
/// itself, several as a list; a template that is not one path renders as text.
pub fn value(template: &str, root: &Value) -> Result<Value, String> {
    let nodes = parse(template)?;
    if let [Node::Path(p)] = nodes.as_slice() {
        let mut vs: Vec<Value> = select(root, p).into_iter().cloned().collect();
        return Ok(if vs.len() == 1 { vs.remove(0) } else { Value::Array(vs) });
    }
    render(&nodes, root).map(Value::String)
}

/// Renders a template against `root`.
pub fn render(nodes: &[Node], root: &Value) -> Result<String, String> {
    let mut out = String::new();
    for n in nodes {
        match n {
            Node::Text(t) => out += t,
            Node::Path(p) => {
                let vs = select(root, p);
                out += &vs.iter().map(|v| text(v)).collect::<Vec<_>>().join(" ");
            }
            Node::Range(p, body) => {
                for v in select(root, p) {
                    out += &render(body, v)?;
                }
            }
        }
    }
    Ok(out)
}

/// The values of a custom column's path in one object (`.metadata.name`, `{.spec.x}`).
pub fn column(spec: &str, obj: &Value) -> Result<String, String> {
    let p = spec.trim().trim_start_matches('{').trim_end_matches('}');
    let p = if p.starts_with('.') || p.starts_with('$') || p.starts_with('[') {
        p.to_string()
    } else {
        format!(".{p}")
    };
    let vs = select(obj, &path(&p)?);
    Ok(if vs.is_empty() { "<none>".into() } else { vs.iter().map(|v| text(v)).collect::<Vec<_>>().join(",") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: &str, v: &Value) -> String {
        render(&parse(t).unwrap(), v).unwrap()
    }

    #[test]
    fn kubectls_templates() {
        let list = json!({"items": [
            {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"n": 1}},
            {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}, "spec": {"n": 5}}]});
        assert_eq!(run("{.items[*].metadata.name}", &list), "a b");
        assert_eq!(run("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list), "a\nb\n");
        assert_eq!(run("{.items[0].metadata.name}", &list), "a");
        assert_eq!(run("{.items[-1].metadata.name}", &list), "b");
        assert_eq!(run("{.items[?(@.status.conditions[0].status==\"True\")].metadata.name}", &list), "a");
        assert_eq!(run("{.items[?(@.spec.n>2)].metadata.name}", &list), "b");
        assert_eq!(run("{.items[0].status.conditions[?(@.type==\"Ready\")].status}", &list), "True");
        assert_eq!(run("{.items[0].metadata.labels['app.kubernetes.io/name']}", &list), "x");
        assert_eq!(run("{..name}", &list), "a b");
        assert_eq!(run("names: {.items[0:1].metadata.name}!", &list), "names: a!");
        assert_eq!(run("{.items[0].spec}", &list), "{\"n\":1}");
        assert!(parse("{range .items[*]}{.x}").is_err());
        assert_eq!(column(".metadata.name", &list["items"][0]).unwrap(), "a");
        assert_eq!(column(".metadata.nope", &list["items"][0]).unwrap(), "<none>");
    }
}
