//! The subset of Argo Rollouts' analysis expressions (antonmedv/expr) that success and
//! failure conditions use: `result == 'ok'`, `result[0] >= 0.95`, `result.status == "UP"`,
//! `len(result) > 0 && asFloat(result.rate) < 0.01`, `not isNil(result)`.
//!
//! Literals (numbers, `'…'`/`"…"` strings, `true`, `false`, `nil`, `[a, b]`), `result` and
//! its members (`.name`, `[index]`, `["key"]`), the functions `len`, `asInt`, `asFloat`,
//! `isNil`, `isNaN`, `default`, and the operators `!`/`not`, unary `-`, `* / %`, `+ -`,
//! `< <= > >= == !=`, `in`, `&&`/`and`, `||`/`or`, with the usual precedence.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    const OPS: [&str; 21] = [
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", ".",
        ",", "=",
    ];
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
                i += 1;
            }
            let text: String = b[start..i].iter().collect();
            out.push(Tok::Num(text.parse().map_err(|_| format!("bad number {text:?}"))?));
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        i += 1;
                        match b.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(&o) => s.push(o),
                            None => return Err("unterminated string".into()),
                        }
                    }
                    Some(&o) => s.push(o),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else {
            let rest: String = b[i..b.len().min(i + 2)].iter().collect();
            let op = OPS.iter().find(|o| rest.starts_with(**o)).ok_or_else(|| format!("unexpected {c:?}"))?;
            if *op == "=" {
                return Err("unexpected \"=\" (comparison is \"==\")".into());
            }
            i += op.len();
            out.push(Tok::Op(op));
        }
    }
    Ok(out)
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Var(String),
    List(Vec<Expr>),
    Member(Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.at) {
            Some(Tok::Op(o)) => Some(o),
            Some(Tok::Ident(w)) => match w.as_str() {
                "and" => Some("&&"),
                "or" => Some("||"),
                "in" => Some("in"),
                _ => None,
            },
            _ => None,
        }
    }

    fn eat(&mut self, op: &str) -> bool {
        if self.peek_op() == Some(op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) { Ok(()) } else { Err(format!("expected {op:?}")) }
    }

    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        const LEVELS: [&[&str]; 6] =
            [&["||"], &["&&"], &["==", "!="], &["<", "<=", ">", ">=", "in"], &["+", "-"], &["*", "/", "%"]];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        while let Some(op) = self.peek_op().filter(|o| LEVELS[level].contains(o)) {
            self.at += 1;
            let right = self.binary(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!")
            || matches!(self.toks.get(self.at), Some(Tok::Ident(w)) if w == "not") && {
                self.at += 1;
                true
            }
        {
            return Ok(Expr::Unary("!", Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Unary("-", Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                match self.toks.get(self.at).cloned() {
                    Some(Tok::Ident(name)) => {
                        self.at += 1;
                        e = Expr::Member(Box::new(e), Box::new(Expr::Lit(Value::String(name))));
                    }
                    _ => return Err("expected a field name after \".\"".into()),
                }
            } else if self.eat("[") {
                let index = self.binary(0)?;
                self.expect("]")?;
                e = Expr::Member(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let t = self.toks.get(self.at).cloned().ok_or("unexpected end of expression")?;
        self.at += 1;
        match t {
            Tok::Num(n) => Ok(Expr::Lit(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Op("(") => {
                let e = self.binary(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.binary(0)?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::Ident(w) => match w.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "nil" => Ok(Expr::Lit(Value::Null)),
                _ if self.eat("(") => {
                    if !["len", "asInt", "asFloat", "isNil", "isNaN", "default"].contains(&w.as_str()) {
                        return Err(format!("unknown function {w}()"));
                    }
                    let mut args = Vec::new();
                    if !self.eat(")") {
                        loop {
                            args.push(self.binary(0)?);
                            if self.eat(")") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    Ok(Expr::Call(w, args))
                }
                _ => Ok(Expr::Var(w)),
            },
            Tok::Op(o) => Err(format!("unexpected {o:?}")),
        }
    }
}

/// Parses an expression; the error names what is wrong.
pub fn parse(src: &str) -> Result<Expr, String> {
    let mut p = Parser { toks: lex(src)?, at: 0 };
    let e = p.binary(0)?;
    if p.at < p.toks.len() {
        return Err(format!("unexpected {:?} after the expression", p.toks[p.at]));
    }
    Ok(e)
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn truthy(v: &Value, what: &str) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{what} is {v}, not a boolean"))
}

fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".into()),
        Value::String(s) => s.trim().parse().map_err(|_| format!("cannot convert {s:?} to a number")),
        other => Err(format!("cannot convert {other} to a number")),
    }
}

/// A whole number as an integer (None when it has a fraction or is out of range).
fn whole(f: f64) -> Option<i64> {
    // Exact: |f| < 2^53 with no fraction converts without loss.
    #[allow(clippy::cast_possible_truncation)]
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn eval(e: &Expr, vars: &dyn Fn(&str) -> Option<Value>) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(name) => vars(name).ok_or_else(|| format!("unknown name {name:?}"))?,
        Expr::List(items) => Value::Array(items.iter().map(|i| eval(i, vars)).collect::<Result<_, _>>()?),
        Expr::Member(base, index) => {
            let (b, i) = (eval(base, vars)?, eval(index, vars)?);
            match (&b, &i) {
                (Value::Object(m), Value::String(k)) => m.get(k).cloned().unwrap_or(Value::Null),
                (Value::Array(a), Value::Number(n)) => {
                    // An index is a whole number; a negative one counts from the end.
                    let k = n.as_i64().or_else(|| n.as_f64().and_then(whole));
                    let len = i64::try_from(a.len()).unwrap_or(i64::MAX);
                    let idx = k.map(|k| if k < 0 { len + k } else { k });
                    idx.and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| a.get(i))
                        .cloned()
                        .ok_or_else(|| format!("index {n} out of range (the list has {} items)", a.len()))?
                }
                (Value::Null, _) => return Err(format!("cannot read {i} of nil")),
                _ => return Err(format!("cannot index {b} with {i}")),
            }
        }
        Expr::Call(f, args) => {
            let a: Vec<Value> = args.iter().map(|x| eval(x, vars)).collect::<Result<_, _>>()?;
            let one = || a.first().cloned().ok_or_else(|| format!("{f}() needs an argument"));
            match f.as_str() {
                "len" => match one()? {
                    Value::Array(x) => x.len().into(),
                    Value::Object(x) => x.len().into(),
                    Value::String(x) => x.chars().count().into(),
                    other => return Err(format!("len() of {other}")),
                },
                "asInt" => {
                    let v = to_float(&one()?)?.trunc();
                    whole(v).ok_or_else(|| format!("asInt({v}): out of range"))?.into()
                }
                "asFloat" => float(to_float(&one()?)?),
                "isNil" => one()?.is_null().into(),
                "isNaN" => {
                    let v = one()?;
                    (v.is_null() || v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("nan"))).into()
                }
                "default" => {
                    let v = one()?;
                    if v.is_null() { a.get(1).cloned().unwrap_or(Value::Null) } else { v }
                }
                _ => return Err(format!("unknown function {f}()")),
            }
        }
        Expr::Unary(op, x) => {
            let v = eval(x, vars)?;
            if *op == "!" {
                (!truthy(&v, "the operand of !")?).into()
            } else {
                float(-num(&v).ok_or_else(|| format!("cannot negate {v}"))?)
            }
        }
        Expr::Binary(op, l, r) => {
            if *op == "&&" || *op == "||" {
                let left = truthy(&eval(l, vars)?, &format!("the left side of {op}"))?;
                if (*op == "&&") != left {
                    return Ok(left.into());
                }
                return Ok(truthy(&eval(r, vars)?, &format!("the right side of {op}"))?.into());
            }
            let (a, b) = (eval(l, vars)?, eval(r, vars)?);
            match *op {
                "==" | "!=" => {
                    let same = match (num(&a), num(&b)) {
                        (Some(x), Some(y)) => x == y,
                        _ => a == b,
                    };
                    (same == (*op == "==")).into()
                }
                "in" => match &b {
                    Value::Array(items) => {
                        items
                            .iter()
                            .any(|i| i == &a || matches!((num(i), num(&a)), (Some(x), Some(y)) if x == y))
                    }
                    .into(),
                    Value::Object(m) => a.as_str().is_some_and(|k| m.contains_key(k)).into(),
                    Value::String(s) => a.as_str().is_some_and(|k| s.contains(k)).into(),
                    _ => return Err(format!("cannot look for {a} in {b}")),
                },
                "<" | "<=" | ">" | ">=" => {
                    let ord = match (&a, &b) {
                        (Value::String(x), Value::String(y)) => x.partial_cmp(y),
                        _ => match (num(&a), num(&b)) {
                            (Some(x), Some(y)) => x.partial_cmp(&y),
                            _ => return Err(format!("cannot compare {a} {op} {b}")),
                        },
                    };
                    let Some(o) = ord else { return Ok(false.into()) };
                    match *op {
                        "<" => o.is_lt(),
                        "<=" => o.is_le(),
                        ">" => o.is_gt(),
                        _ => o.is_ge(),
                    }
                    .into()
                }
                "+" if a.is_string() || b.is_string() => match (&a, &b) {
                    (Value::String(x), Value::String(y)) => format!("{x}{y}").into(),
                    _ => return Err(format!("cannot add {a} and {b}")),
                },
                _ => {
                    let (x, y) = match (num(&a), num(&b)) {
                        (Some(x), Some(y)) => (x, y),
                        _ => return Err(format!("cannot compute {a} {op} {b}")),
                    };
                    float(match *op {
                        "+" => x + y,
                        "-" => x - y,
                        "*" => x * y,
                        "/" => x / y,
                        _ => x % y,
                    })
                }
            }
        }
    })
}

/// Evaluates a condition with `result` bound; anything but a boolean is an error.
pub fn condition(src: &str, result: &Value) -> Result<bool, String> {
    let e = parse(src)?;
    let v = eval(&e, &|name| (name == "result").then(|| result.clone()))?;
    truthy(&v, "the condition")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn argo_conditions_evaluate() {
        let r = json!({"status": "UP", "rate": "0.004", "values": [0.97, 0.5], "n": 3});
        for (src, want) in [
            ("result.status == 'UP'", true),
            ("result.status != \"UP\"", false),
            ("result.values[0] >= 0.95", true),
            ("result.values[-1] < 0.6 && result.n == 3", true),
            ("len(result.values) > 0 and asFloat(result.rate) < 0.01", true),
            ("not isNil(result.status) || false", true),
            ("result.n * 2 + 1 == 7", true),
            ("result.status in ['DOWN', 'UP']", true),
            ("asInt(result.rate) == 0", true),
            ("default(result.missing, 5) > 4", true),
            ("!(result.n >= 3)", false),
        ] {
            assert_eq!(condition(src, &r), Ok(want), "{src}");
        }
        assert_eq!(condition("result == 'ok'", &json!("ok")), Ok(true));
        assert_eq!(condition("result[0] >= 0.95", &json!([0.9])), Ok(false));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(parse("result = 1").unwrap_err().contains("=="));
        assert!(parse("result ==").unwrap_err().contains("end"));
        assert!(parse("frob(result)").unwrap_err().contains("frob"));
        assert!(condition("result.n", &json!({"n": 1})).unwrap_err().contains("not a boolean"));
        assert!(condition("result.a.b == 1", &json!({})).unwrap_err().contains("nil"));
        assert!(condition("result[3] == 1", &json!([1])).unwrap_err().contains("out of range"));
    }
}
