//! `tug get KIND [NAME...] | KIND/NAME... | KIND,KIND... | all [-A] [-l SEL]
//! [-o wide|yaml|json|name] [--show-labels] [-L KEY] [--no-headers] [--sort-by PATH] [-w]`.

use super::kind;
use crate::client::Client;
use crate::printers;
use serde_json::Value;
use std::process::ExitCode;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct GetArgs {
    /// What to get: `KIND [NAME...]` (pods, deploy, svc, cm, …), `KIND/NAME...`, `KIND,KIND`,
    /// or `all` (pods, services, deployments, replicasets, jobs, cronjobs, autoscalers).
    #[arg(required_unless_present = "raw")]
    targets: Vec<String>,
    /// Print what the server answers at this path (`/metrics`, `/api/v1/pods`), as it is.
    #[arg(long, conflicts_with = "targets")]
    raw: Option<String>,
    /// Print the labels as a last column.
    #[arg(long)]
    show_labels: bool,
    /// A label's value as a column of its own (repeatable, or comma-separated).
    #[arg(short = 'L', long = "label-columns")]
    label_columns: Vec<String>,
    /// Leave out the header line.
    #[arg(long)]
    no_headers: bool,
    /// Sort by a field (`.metadata.name`, `{.status.startTime}`). Events sort by their last
    /// timestamp unless told otherwise.
    #[arg(long)]
    sort_by: Option<String>,
    /// A field selector, answered by the server: `status.phase=Running`, `spec.nodeName=n1`,
    /// `metadata.name!=web` (comma-separated, all must hold).
    #[arg(long)]
    field_selector: Option<String>,
    /// Events: only those about this object (`KIND/NAME`).
    #[arg(long = "for")]
    for_object: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=NAME:.path,….
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Objects asked for per request (kubectl's pages); 0: all at once.
    #[arg(long = "chunk-size", default_value_t = 500)]
    chunk_size: usize,
}

/// The kinds `all` stands for (Kubernetes' `all` category, of the kinds Tug serves).
const ALL: &[&str] = &[
    "pods",
    "services",
    "daemonsets",
    "deployments",
    "replicasets",
    "statefulsets",
    "jobs",
    "cronjobs",
    "horizontalpodautoscalers",
];

/// What the arguments ask for: each kind with the names asked for (none: all of them).
fn targets(args: &[String]) -> Result<Vec<(&'static tug_api::object::KindInfo, Vec<String>)>, String> {
    let mut out: Vec<(&'static tug_api::object::KindInfo, Vec<String>)> = Vec::new();
    if args[0].contains('/') {
        for a in args {
            let (k, name) = a.split_once('/').ok_or_else(|| {
                format!("error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'tug get resource/<resource_name>' instead of 'tug get resource resource/<resource_name>'): {a}")
            })?;
            let info = kind(k)?;
            match out.iter_mut().find(|(i, _)| std::ptr::eq(*i, info)) {
                Some((_, names)) => names.push(name.to_string()),
                None => out.push((info, vec![name.to_string()])),
            }
        }
        return Ok(out);
    }
    let kinds: Vec<&str> = args[0].split(',').filter(|k| !k.is_empty()).collect();
    let names: Vec<String> = args[1..].to_vec();
    if let Some(n) = names.iter().find(|n| n.contains('/')) {
        return Err(format!(
            "error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form: {n}"
        ));
    }
    for k in kinds {
        let expanded: Vec<&str> = if k == "all" { ALL.to_vec() } else { vec![k] };
        for k in expanded {
            out.push((kind(k)?, names.clone()));
        }
    }
    Ok(out)
}

pub async fn run(client: &Client, a: &GetArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    if let Some(path) = &a.raw {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        client.stream(path, |bytes| out.write_all(bytes).is_ok()).await.map_err(|e| format!("{e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let groups = targets(&a.targets)?;
    if groups.len() == 1 {
        let (info, names) = &groups[0];
        if names.len() <= 1 {
            return run_one(client, a, ns, info, names.first().cloned(), false).await;
        }
    }
    if a.watch {
        return Err("error: you may only specify a single resource type with --watch".into());
    }
    // Several kinds or names: each kind's objects, one table each, names prefixed by their
    // kind (`pod/web-1`), as kubectl prints them.
    let mut failed = false;
    let mut printed = false;
    let several_kinds = groups.len() > 1;
    for (info, names) in groups {
        let objs = if names.is_empty() {
            list(client, a, ns, info).await?
        } else {
            let mut v = Vec::new();
            for n in &names {
                let namespace = if info.namespaced { Some(ns.unwrap_or("default")) } else { None };
                match client.get(&info.path(namespace, Some(n))).await {
                    Ok(o) => v.push(o),
                    Err(tug_client::http::CallError::Server(s)) => {
                        eprintln!("Error from server ({}): {}", s.reason, s.message);
                        failed = true;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            v
        };
        if objs.is_empty() {
            continue;
        }
        if printed && matches!(a.output.as_deref(), None | Some("wide")) {
            println!();
        }
        let with_ns = a.all_namespaces && info.namespaced;
        print_objects(&objs, info.kind, a, with_ns, false, several_kinds);
        printed = true;
    }
    if !printed && !failed && a.output.is_none() {
        match ns {
            _ if a.all_namespaces => eprintln!("No resources found"),
            n => eprintln!("No resources found in {} namespace.", n.unwrap_or("default")),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Refuses an output format kubectl would not print, naming the ones there are.
fn check_output(output: &str) -> Result<(), String> {
    if let Some(t) = output.strip_prefix("jsonpath=") {
        return crate::jsonpath::parse(t)
            .map(drop)
            .map_err(|e| format!("error: error parsing jsonpath {t}: {e}"));
    }
    if let Some(spec) = output.strip_prefix("custom-columns=") {
        return columns_spec(spec).map(drop);
    }
    if ["", "wide", "yaml", "json", "name"].contains(&output) {
        return Ok(());
    }
    Err(format!(
        "error: unable to match a printer suitable for the output format \"{output}\", allowed formats are: custom-columns,json,jsonpath,name,wide,yaml"
    ))
}

/// `NAME:.path,NAME:.path` as (header, path) pairs.
fn columns_spec(spec: &str) -> Result<Vec<(String, String)>, String> {
    spec.split(',')
        .map(|c| {
            c.split_once(':').map(|(h, p)| (h.to_string(), p.to_string())).ok_or_else(|| {
                format!(
                    "error: custom-columns format must be NAME:JSONPATH pairs separated by commas, not {c:?}"
                )
            })
        })
        .collect()
}

/// Every object of a kind the flags select, page by page.
async fn list(
    client: &Client,
    a: &GetArgs,
    ns: Option<&str>,
    info: &'static tug_api::object::KindInfo,
) -> Result<Vec<Value>, String> {
    let namespace = if a.all_namespaces || !info.namespaced { None } else { Some(ns.unwrap_or("default")) };
    let mut query = Vec::new();
    if let Some(s) = &a.selector {
        query.push(format!("labelSelector={}", encode(s)));
    }
    if let Some(f) = &a.field_selector {
        query.push(format!("fieldSelector={}", encode(f)));
    }
    let path = info.path(namespace, None);
    let mut items = Vec::new();
    let mut next = String::new();
    loop {
        let mut q = query.clone();
        if a.chunk_size > 0 {
            q.push(format!("limit={}", a.chunk_size));
        }
        if !next.is_empty() {
            q.push(format!("continue={}", encode(&next)));
        }
        let q = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        let mut page = client.get(&format!("{path}{q}")).await.map_err(|e| e.to_string())?;
        if let Some(Value::Array(more)) = page.get_mut("items").map(Value::take) {
            items.extend(more);
        }
        next = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if next.is_empty() {
            return Ok(items);
        }
    }
}

async fn run_one(
    client: &Client,
    a: &GetArgs,
    ns: Option<&str>,
    info: &'static tug_api::object::KindInfo,
    name: Option<String>,
    several_kinds: bool,
) -> Result<ExitCode, String> {
    let output = a.output.as_deref().unwrap_or("");
    check_output(output)?;
    let namespace = if a.all_namespaces || !info.namespaced { None } else { Some(ns.unwrap_or("default")) };
    let mut query = Vec::new();
    if let Some(s) = &a.selector {
        tug_api::labels::Selector::parse(s).map_err(|e| format!("error: {e}"))?;
        query.push(format!("labelSelector={}", encode(s)));
    }
    let mut fields: Vec<String> = a.field_selector.iter().cloned().collect();
    if let Some(f) = &a.for_object {
        if info.kind != "Event" {
            return Err("error: --for is only for events".into());
        }
        let (k, n) = f.split_once('/').ok_or_else(|| format!("error: --for takes KIND/NAME, not {f:?}"))?;
        let about = kind(k)?;
        fields.push(format!("involvedObject.kind={},involvedObject.name={n}", about.kind));
    }
    if let Some(name) = &name {
        fields.push(format!("metadata.name={name}"));
    }
    if !fields.is_empty() {
        query.push(format!("fieldSelector={}", encode(&fields.join(","))));
    }
    let path = info.path(namespace, None);
    if let (Some(name), false) = (&name, a.watch) {
        // One object: read it by name, as kubectl does (a list would need `list` rights).
        let obj = match client.get(&info.path(namespace, Some(name))).await {
            Ok(o) => o,
            Err(tug_client::http::CallError::Server(s)) => {
                return Err(format!("Error from server ({}): {}", s.reason, s.message));
            }
            Err(e) => return Err(e.to_string()),
        };
        print_objects(std::slice::from_ref(&obj), info.kind, a, false, true, several_kinds);
        return Ok(ExitCode::SUCCESS);
    }
    let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    // Page by page, as kubectl does (`--chunk-size`): no request asks for everything.
    let mut items = Vec::new();
    let mut next = String::new();
    let list = loop {
        let mut page_q = query.clone();
        if a.chunk_size > 0 {
            page_q.push(format!("limit={}", a.chunk_size));
        }
        if !next.is_empty() {
            page_q.push(format!("continue={}", encode(&next)));
        }
        let page_q = if page_q.is_empty() { String::new() } else { format!("?{}", page_q.join("&")) };
        let mut page = client.get(&format!("{path}{page_q}")).await.map_err(|e| e.to_string())?;
        if let Some(Value::Array(more)) = page.get_mut("items").map(Value::take) {
            items.extend(more);
        }
        next = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if next.is_empty() {
            break page;
        }
    };
    if let (Some(name), true) = (&name, items.is_empty()) {
        let resource = if info.group.is_empty() {
            info.plural.to_string()
        } else {
            format!("{}.{}", info.plural, info.group)
        };
        return Err(format!("Error from server (NotFound): {resource} \"{name}\" not found"));
    }
    let with_ns = a.all_namespaces && info.namespaced;
    print_objects(&items, info.kind, a, with_ns, name.is_some(), several_kinds);
    if items.is_empty() && output.is_empty() {
        match namespace {
            Some(n) => eprintln!("No resources found in {n} namespace."),
            None => eprintln!("No resources found"),
        }
    }
    if a.watch {
        // The rows to come line up under the table just printed (or a header of their own).
        let tabular = matches!(output, "" | "wide");
        let header = header_for(info.kind, a, with_ns);
        let mut widths = printers::widths(&header, &rows(&items, a, with_ns));
        if tabular && items.is_empty() && !a.no_headers {
            print!("{}", printers::line(&header, &mut widths));
        }
        let mut rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let sep = if q.is_empty() { "?" } else { "&" };
        // A stream the server ends (a restart, a replica going away) is taken up again from
        // the last revision seen, as kubectl's retrying watcher does; an ERROR event ends it.
        let mut pause = std::time::Duration::from_millis(250);
        loop {
            let wpath = format!("{path}{q}{sep}watch=true&resourceVersion={rv}");
            let mut failed = None;
            let result = client
                .watch(&wpath, |event| {
                    let obj = &event["object"];
                    if event["type"] == "ERROR" {
                        failed = Some(obj["message"].as_str().unwrap_or("watch failed").to_string());
                        return false;
                    }
                    if let Some(r) = obj["metadata"]["resourceVersion"].as_str() {
                        rv = r.to_string();
                    }
                    if tabular {
                        for r in rows(std::slice::from_ref(obj), a, with_ns) {
                            print!("{}", printers::line(&r, &mut widths));
                        }
                    } else {
                        print_rows(std::slice::from_ref(obj), a, with_ns);
                    }
                    true
                })
                .await;
            if let Some(message) = failed {
                return Err(format!("error: {message}"));
            }
            match result {
                Ok(()) => pause = std::time::Duration::from_millis(250),
                Err(e @ tug_client::http::CallError::Server(_)) => return Err(e.to_string()),
                Err(_) => pause = (pause * 2).min(std::time::Duration::from_secs(5)),
            }
            tokio::time::sleep(pause).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_objects(items: &[Value], kind: &str, a: &GetArgs, with_ns: bool, single: bool, prefix_kind: bool) {
    let output = a.output.as_deref().unwrap_or("");
    let mut sorted;
    let by_time = (kind == "Event" && a.sort_by.is_none()).then(|| ".lastTimestamp".to_string());
    let items = match a.sort_by.as_ref().or(by_time.as_ref()) {
        Some(path) => {
            sorted = items.to_vec();
            let path = path.trim_start_matches('{').trim_end_matches('}').trim_start_matches('.').to_string();
            let key = |v: &Value| -> Value {
                path.split('.').filter(|p| !p.is_empty()).fold(v, |v, k| &v[k]).clone()
            };
            sorted.sort_by(|x, y| compare(&key(x), &key(y)));
            &sorted[..]
        }
        None => items,
    };
    let whole = || {
        if single {
            items[0].clone()
        } else {
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
        }
    };
    let qualified = tug_api::object::lookup(kind).map(|k| k.qualified_singular()).unwrap_or_default();
    if let Some(t) = output.strip_prefix("jsonpath=") {
        // A list is rendered as one document (`{.items[*]…}`), one object as itself.
        match crate::jsonpath::parse(t).and_then(|n| crate::jsonpath::render(&n, &whole())) {
            Ok(text) => print!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
        return;
    }
    if let Some(spec) = output.strip_prefix("custom-columns=") {
        let Ok(cols) = columns_spec(spec) else { return };
        let header: Vec<String> =
            if a.no_headers { Vec::new() } else { cols.iter().map(|(h, _)| h.clone()).collect() };
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| cols.iter().map(|(_, p)| crate::jsonpath::column(p, i).unwrap_or_else(|e| e)).collect())
            .collect();
        print!("{}", printers::table(&header, &rows));
        return;
    }
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&whole()).unwrap_or_default()),
        "yaml" => print!("{}", serde_yaml_ng::to_string(&whole()).unwrap_or_default()),
        "name" => {
            for i in items {
                println!("{qualified}/{}", i["metadata"]["name"].as_str().unwrap_or_default());
            }
        }
        _ if items.is_empty() => {}
        _ => {
            let header = header_for(kind, a, with_ns);
            let mut rows = rows(items, a, with_ns);
            if prefix_kind {
                let at = usize::from(with_ns);
                for r in &mut rows {
                    if let Some(n) = r.get_mut(at) {
                        *n = format!("{qualified}/{n}");
                    }
                }
            }
            let header = if a.no_headers { Vec::new() } else { header };
            print!("{}", printers::table(&header, &rows));
        }
    }
}

/// The table's header: the kind's columns, with NAMESPACE first for `-A` and the label
/// columns last.
fn header_for(kind: &str, a: &GetArgs, with_ns: bool) -> Vec<String> {
    let wide = a.output.as_deref() == Some("wide");
    let mut header: Vec<String> = printers::headers(kind, wide).into_iter().map(String::from).collect();
    if with_ns {
        header.insert(0, "NAMESPACE".into());
    }
    header.extend(label_columns(a).iter().map(|l| l.rsplit('/').next().unwrap_or(l).to_ascii_uppercase()));
    if a.show_labels {
        header.push("LABELS".into());
    }
    header
}

/// Orders two field values as kubectl's `--sort-by` does: numbers as numbers, else text.
fn compare(x: &Value, y: &Value) -> std::cmp::Ordering {
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
        _ => {
            let t = |v: &Value| {
                v.as_str()
                    .map_or_else(|| if v.is_null() { String::new() } else { v.to_string() }, str::to_string)
            };
            t(x).cmp(&t(y))
        }
    }
}

fn label_columns(a: &GetArgs) -> Vec<String> {
    a.label_columns.iter().flat_map(|l| l.split(',')).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

fn rows(items: &[Value], a: &GetArgs, with_ns: bool) -> Vec<Vec<String>> {
    let now = SystemTime::now();
    let wide = a.output.as_deref() == Some("wide");
    let extra = label_columns(a);
    items
        .iter()
        .map(|i| {
            let mut r = printers::row(i, wide, now);
            if with_ns {
                r.insert(0, i["metadata"]["namespace"].as_str().unwrap_or_default().to_string());
            }
            let labels = &i["metadata"]["labels"];
            for l in &extra {
                r.push(labels[l.as_str()].as_str().unwrap_or_default().to_string());
            }
            if a.show_labels {
                let all: Vec<String> = labels
                    .as_object()
                    .map(|m| {
                        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect()
                    })
                    .unwrap_or_default();
                r.push(if all.is_empty() { "<none>".into() } else { all.join(",") });
            }
            r
        })
        .collect()
}

fn print_rows(items: &[Value], a: &GetArgs, with_ns: bool) {
    let rows = rows(items, a, with_ns);
    print!("{}", printers::table(&[], &rows));
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
