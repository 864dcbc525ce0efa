//! `tug create namespace|configmap|secret generic`.

use crate::client::{CallError, Client};
use base64::Engine;
use hyper::Method;
use serde_json::{Map, json};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum CreateCmd {
    /// Create a namespace.
    #[command(alias = "ns")]
    Namespace { name: String },
    /// Create a configmap from literals and files.
    #[command(alias = "cm")]
    Configmap {
        name: String,
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// Create a secret.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Credentials for a user: a client certificate the cluster CA signs (user = NAME,
    /// groups = --group), for `tug --tls-dir` or, with `-o kubeconfig`, for kubectl. Admin only.
    User(UserArgs),
    /// A token of a service account (a TokenRequest), printed: `--duration`, `--audience`,
    /// `--bound-object-kind Pod --bound-object-name NAME` (the token dies with the pod).
    Token(TokenArgs),
    /// Create a service account.
    #[command(alias = "sa")]
    Serviceaccount { name: String },
    /// Create a deployment: `create deployment web --image=nginx [--replicas=N] [--port=P] [-- CMD]`.
    #[command(alias = "deploy")]
    Deployment {
        name: String,
        #[arg(long, required = true)]
        image: String,
        #[arg(long, default_value_t = 1)]
        replicas: i64,
        #[arg(long)]
        port: Option<u16>,
        /// server or client.
        #[arg(long)]
        dry_run: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create a job: `create job NAME --image=I [-- CMD]`.
    Job {
        name: String,
        #[arg(long, required = true)]
        image: String,
        #[arg(long)]
        dry_run: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create a cronjob: `create cronjob NAME --image=I --schedule='*/5 * * * *' [-- CMD]`.
    #[command(alias = "cj")]
    Cronjob {
        name: String,
        #[arg(long, required = true)]
        image: String,
        #[arg(long, required = true)]
        schedule: String,
        #[arg(long)]
        dry_run: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create a service: `create service clusterip|nodeport NAME --tcp=PORT[:TARGET]`.
    #[command(subcommand, alias = "svc")]
    Service(ServiceCmd),
}

#[derive(clap::Subcommand)]
pub enum ServiceCmd {
    /// A ClusterIP service (selector app=NAME).
    Clusterip {
        name: String,
        #[arg(long, required = true)]
        tcp: Vec<String>,
    },
    /// A NodePort service (selector app=NAME).
    Nodeport {
        name: String,
        #[arg(long, required = true)]
        tcp: Vec<String>,
    },
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The service account.
    name: String,
    /// How long the token is valid (at least 10m; default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// An audience of the token (repeatable; default: the API's).
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// The kind of object the token is bound to: Pod.
    #[arg(long)]
    bound_object_kind: Option<String>,
    /// The name of that object.
    #[arg(long)]
    bound_object_name: Option<String>,
}

#[derive(clap::Args)]
pub struct UserArgs {
    name: String,
    /// A group the user is in (repeatable): what RBAC Group subjects match.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How long the certificate is valid (`8760h`, `30d`).
    #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// `kubeconfig`: print a kubeconfig instead of writing a credentials directory.
    #[arg(short = 'o', long = "output")]
    output: Option<String>,
    /// Where the credentials go (ca.crt, client.crt, client.key; default: ./NAME).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// The https:// address the kubeconfig names (default: --server when it is one, else
    /// https://127.0.0.1:6443).
    #[arg(long)]
    cluster_url: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum SecretCmd {
    /// An Opaque secret from literals and files.
    Generic {
        name: String,
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
}

/// `key=value` literals and `[key=]path` files into a map.
fn entries(literals: &[String], files: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for l in literals {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("error: invalid literal source {l}, expected key=value"))?;
        out.push((k.to_string(), v.as_bytes().to_vec()));
    }
    for f in files {
        let (k, p) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), p.to_string()),
            None => (
                std::path::Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                f.clone(),
            ),
        };
        let bytes = std::fs::read(&p).map_err(|e| format!("error: {p}: {e}"))?;
        out.push((k, bytes));
    }
    Ok(out)
}

/// `tug create token SA`: kubectl's `create token`.
async fn token(client: &Client, a: TokenArgs, ns: &str) -> Result<ExitCode, String> {
    let mut spec = serde_json::Map::new();
    if !a.audiences.is_empty() {
        spec.insert("audiences".into(), json!(a.audiences));
    }
    if let Some(d) = a.duration {
        spec.insert("expirationSeconds".into(), json!(d.as_secs()));
    }
    match (a.bound_object_kind.as_deref(), a.bound_object_name) {
        (None, None) => {}
        (Some("Pod"), Some(name)) => {
            let pod = client
                .get(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
                .await
                .map_err(|e| format!("error: {e}"))?;
            spec.insert(
                "boundObjectRef".into(),
                json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod["metadata"]["uid"]}),
            );
        }
        (Some(k), Some(_)) if k != "Pod" => {
            return Err(format!("error: --bound-object-kind {k:?}: supported kinds are Pod"));
        }
        _ => return Err("error: --bound-object-kind and --bound-object-name go together".into()),
    }
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{}/token", a.name);
    match client.call(Method::POST, &path, "application/json", body.to_string().into_bytes()).await {
        Ok((v, _)) => {
            println!("{}", v["status"]["token"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(CallError::Server(s)) => Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// A kubeconfig for kubectl with a client certificate (PEM texts), its context current.
pub fn kubeconfig(url: &str, user: &str, ca: &str, cert: &str, key: &str) -> Result<String, String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let context = format!("{user}@tug");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "tug", "cluster": {"server": url, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": context, "context": {"cluster": "tug", "user": user}}],
        "current-context": context,
    });
    serde_yaml_ng::to_string(&config).map_err(|e| format!("error: {e}"))
}

/// `tug config kubeconfig`: a kubeconfig for who is asking. Over TLS, the credentials in
/// `--tls-dir`; over the socket, a new certificate for the caller's own user and groups (as
/// `tug auth whoami` names them), which only a cluster admin (root on the socket) may have.
pub async fn config_kubeconfig(
    client: &Client,
    server: Option<&str>,
    tls_dir: &std::path::Path,
    cluster_url: Option<String>,
    ttl: std::time::Duration,
) -> Result<ExitCode, String> {
    let https = server.filter(|s| s.starts_with("https://"));
    let url =
        cluster_url.or_else(|| https.map(str::to_string)).unwrap_or_else(|| "https://127.0.0.1:6443".into());
    if https.is_some() {
        let read = |f: &str| {
            std::fs::read_to_string(tls_dir.join(f))
                .map_err(|e| format!("error: {}: {e}", tls_dir.join(f).display()))
        };
        let cert = read("client.crt")?;
        let name = x509_name(&cert).unwrap_or_else(|| "tug-user".into());
        print!("{}", kubeconfig(&url, &name, &read("ca.crt")?, &cert, &read("client.key")?)?);
        return Ok(ExitCode::SUCCESS);
    }
    let who = super::auth::whoami(client).await?;
    let info = &who["status"]["userInfo"];
    let name = info["username"].as_str().unwrap_or_default().to_string();
    let groups: Vec<&str> = info["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str())
        .filter(|g| *g != "system:authenticated")
        .collect();
    let body = json!({"name": name, "groups": groups, "ttlSeconds": ttl.as_secs()});
    let v = match client
        .call(
            Method::POST,
            "/apis/tug.io/v1/usercredentials",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    {
        Ok((v, _)) => v,
        Err(CallError::Server(s)) => {
            return Err(format!(
                "Error from server ({}): {} (a kubeconfig for the socket's user is a new certificate, which a cluster admin issues: `tug create user NAME -o kubeconfig`)",
                s.reason, s.message
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
    print!("{}", kubeconfig(&url, &name, &field("ca"), &field("cert"), &field("key"))?);
    Ok(ExitCode::SUCCESS)
}

/// The CN of a PEM certificate's subject, found without a full parse: the user it names.
fn x509_name(pem: &str) -> Option<String> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    // The CN attribute: OID 2.5.4.3 (06 03 55 04 03), then a string's tag and length.
    let at = der.windows(5).position(|w| w == [0x06, 0x03, 0x55, 0x04, 0x03])?;
    let len = *der.get(at + 6)? as usize;
    String::from_utf8(der.get(at + 7..at + 7 + len)?.to_vec()).ok()
}

/// The container name kubectl gives an image: its last path part without tag or digest.
fn container_name(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    base.to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect()
}

/// `tug create user`.
async fn user(client: &Client, a: UserArgs, server: Option<&str>) -> Result<ExitCode, String> {
    if let Some(o) = a.output.as_deref().filter(|o| *o != "kubeconfig") {
        return Err(format!("error: --output {o:?}: the only format is kubeconfig"));
    }
    let body = json!({"name": a.name, "groups": a.groups, "ttlSeconds": a.ttl.as_secs()});
    let v = match client
        .call(
            Method::POST,
            "/apis/tug.io/v1/usercredentials",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    {
        Ok((v, _)) => v,
        Err(CallError::Server(s)) => return Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => return Err(e.to_string()),
    };
    let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
    if a.output.is_some() {
        let url = a
            .cluster_url
            .or_else(|| server.filter(|s| s.starts_with("https://")).map(str::to_string))
            .unwrap_or_else(|| "https://127.0.0.1:6443".into());
        print!("{}", kubeconfig(&url, &a.name, &field("ca"), &field("cert"), &field("key"))?);
        return Ok(ExitCode::SUCCESS);
    }
    let dir = a.dir.unwrap_or_else(|| std::path::PathBuf::from(&a.name));
    crate::client::join::write_credentials(&dir, &field("ca"), &field("cert"), &field("key"))?;
    println!(
        "user/{} created: credentials in {} until {} (tug --server https://HOST:PORT --tls-dir {})",
        a.name,
        dir.display(),
        field("expirationTimestamp"),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(
    client: &Client,
    cmd: CreateCmd,
    ns: Option<&str>,
    server: Option<&str>,
) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let labels = |name: &str| json!({"app": name});
    let (kind, obj) = match cmd {
        CreateCmd::Deployment { name, image, replicas, port, dry_run, command } => {
            let tpl = super::workloads::template(
                &labels(&name),
                &image,
                &container_name(&image),
                &command,
                port,
                None,
            );
            let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "labels": labels(&name)},
                "spec": {"replicas": replicas, "selector": {"matchLabels": labels(&name)}, "template": tpl}});
            return super::workloads::create_workload(client, "deployments", obj, dry_run.as_deref()).await;
        }
        CreateCmd::Job { name, image, dry_run, command } => {
            let tpl = super::workloads::template(&json!({}), &image, &name, &command, None, Some("Never"));
            let obj = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
                "spec": {"template": tpl}});
            return super::workloads::create_workload(client, "jobs", obj, dry_run.as_deref()).await;
        }
        CreateCmd::Cronjob { name, image, schedule, dry_run, command } => {
            let tpl =
                super::workloads::template(&json!({}), &image, &name, &command, None, Some("OnFailure"));
            let obj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": ns},
                "spec": {"schedule": schedule, "jobTemplate": {"metadata": {"name": name}, "spec": {"template": tpl}}}});
            return super::workloads::create_workload(client, "cronjobs", obj, dry_run.as_deref()).await;
        }
        CreateCmd::Service(svc) => {
            let (name, tcp, kind) = match svc {
                ServiceCmd::Clusterip { name, tcp } => (name, tcp, "ClusterIP"),
                ServiceCmd::Nodeport { name, tcp } => (name, tcp, "NodePort"),
            };
            let mut ports = Vec::new();
            for t in &tcp {
                let (p, target) = t.split_once(':').unwrap_or((t, t));
                let p: u16 =
                    p.parse().map_err(|_| format!("error: --tcp {t:?}: the port must be a number"))?;
                let target: serde_json::Value =
                    target.parse::<u16>().map(Into::into).unwrap_or_else(|_| target.into());
                ports.push(json!({"name": format!("{p}-{}", target.to_string().trim_matches('"')), "port": p, "targetPort": target, "protocol": "TCP"}));
            }
            let obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels(&name)},
                "spec": {"type": kind, "selector": labels(&name), "ports": ports}});
            return super::workloads::create_workload(client, "services", obj, None).await;
        }
        CreateCmd::User(a) => return user(client, a, server).await,
        CreateCmd::Token(a) => return token(client, a, ns).await,
        CreateCmd::Serviceaccount { name } => (
            "serviceaccount",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}),
        ),
        CreateCmd::Namespace { name } => {
            ("namespace", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        }
        CreateCmd::Configmap { name, literals, files } => {
            let mut data = Map::new();
            for (k, v) in entries(&literals, &files)? {
                let text = String::from_utf8(v).map_err(|_| {
                    format!("error: {k}: not UTF-8 text (binaryData is not supported by create configmap)")
                })?;
                data.insert(k, text.into());
            }
            (
                "configmap",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}),
            )
        }
        CreateCmd::Secret(SecretCmd::Generic { name, literals, files }) => {
            let mut data = Map::new();
            for (k, v) in entries(&literals, &files)? {
                data.insert(k, base64::engine::general_purpose::STANDARD.encode(v).into());
            }
            (
                "secret",
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": ns}, "data": data}),
            )
        }
    };
    let text = obj.to_string();
    let objects = tug_api::manifest::load(&text).map_err(|e| format!("error: {e}"))?;
    let o = &objects[0];
    let info = o.info();
    let path = info.path(o.metadata().namespace.as_deref(), None);
    match client
        .call(Method::POST, &path, "application/json", serde_json::to_vec(&o.to_value()).unwrap_or_default())
        .await
    {
        Ok((v, _)) => {
            println!("{kind}/{} created", v["metadata"]["name"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(CallError::Server(s)) => Err(format!("Error from server ({}): {}", s.reason, s.message)),
        Err(e) => Err(e.to_string()),
    }
}
