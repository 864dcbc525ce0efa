//! `tug`: the command-line client for Tug clusters, in kubectl's habits.
//!
//! `tug apply -f FILE|DIR|-`, `tug get KIND [NAME]`, `tug describe`, `tug delete`,
//! `tug logs POD`, `tug exec POD -- CMD`, `tug top node|pod`,
//! `tug create namespace|configmap|secret`, `tug version`, `tug image pull|import|ls|rm`
//! (the node's image store, no control plane needed). `--server` or `TUG_SOCKET` choose
//! the control plane's socket.

use tug_client as client;
mod commands;
use tug_api::jsonpath;
mod printers;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command-line client for Tug clusters.
#[derive(Parser)]
#[command(name = "tug", version = tug_api::VERSION, about)]
struct Cli {
    /// The control plane: a Unix socket path (default /run/tug/tug.sock, or $TUG_SOCKET), or
    /// https://HOST:PORT; several, comma-separated, are the replicas of one control plane,
    /// tried in turn when one cannot be reached.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Credentials for https:// servers (ca.crt, client.crt, client.key; `tug join` writes
    /// them). Default: $TUG_TLS_DIR, else ~/.tug.
    #[arg(long, global = true)]
    tls_dir: Option<std::path::PathBuf>,
    /// A bearer token to authenticate with (a service account's: `tug create token SA`).
    #[arg(long, global = true)]
    token: Option<String>,
    /// The namespace for namespaced objects (default: "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update objects from manifests (files, directories, or - for stdin).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// server: checked and answered by the server, not stored; client: only validated here.
        #[arg(long)]
        dry_run: Option<String>,
    },
    /// Replace objects by those in manifests.
    Replace {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// What applying manifests would change (a unified diff; exit 1 when they differ).
    Diff {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Copy files and directories to and from containers: `cp FILE POD:/PATH`, `cp POD:/PATH DIR`.
    Cp(commands::copy::CopyArgs),
    /// Attach to a running container's own output (and input with -i).
    Attach(commands::logs::AttachArgs),
    /// Forward local ports to a pod: `port-forward pod/web 8080:80` (LOCAL:REMOTE, or PORT).
    PortForward(commands::forward::ForwardArgs),
    /// Run a pod: `run NAME --image=I [--restart=Never] [-- CMD...]`.
    Run(commands::workloads::RunArgs),
    /// A Service for a deployment, pod or service: `expose deploy/web --port=80 [--target-port=8080]`.
    Expose(commands::workloads::ExposeArgs),
    /// Scale a Deployment on its CPU use: `autoscale deploy/web --min 2 --max 10 --cpu-percent 60`.
    Autoscale(commands::workloads::AutoscaleArgs),
    /// Wait for a condition: `wait --for=condition=Available deploy/web`, `--for=delete`,
    /// `--for=jsonpath='{.status.phase}'=Running`.
    Wait(commands::workloads::WaitArgs),
    /// List objects, or show one.
    Get(commands::get::GetArgs),
    /// Show objects in detail, with their events (kubectl's layout for pods and deployments).
    Describe {
        /// `KIND [NAME...]` or `KIND/NAME...`; a kind alone describes every object of it.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Delete objects by kind and name, or those in manifests.
    Delete(commands::delete::DeleteArgs),
    /// Create a namespace, configmap or secret from the command line.
    #[command(subcommand)]
    Create(commands::create::CreateCmd),
    /// Manage a Deployment's rollout: status, history, undo, pause, resume, restart.
    #[command(subcommand)]
    Rollout(commands::rollout::RolloutCmd),
    /// Set the number of replicas of a Deployment or ReplicaSet.
    Scale(commands::rollout::ScaleArgs),
    /// Print a container's log (through its node's agent).
    Logs(commands::logs::LogsArgs),
    /// Run a command in a container (-it: an interactive shell).
    Exec(commands::logs::ExecArgs),
    /// Show CPU and memory use of nodes or pods.
    #[command(subcommand)]
    Top(commands::top::TopCmd),
    /// Cluster administration: `reencrypt` (after rotating an encryption key).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Access: `can-i VERB RESOURCE` (yes or no), `whoami`.
    #[command(subcommand)]
    Auth(commands::auth::AuthCmd),
    /// Print the client and server versions.
    Version {
        /// yaml or json.
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// The resources the server serves (NAME, SHORTNAMES, APIVERSION, NAMESPACED, KIND).
    ApiResources {
        /// `name`: names only, as `tug get` takes them.
        #[arg(short = 'o', long)]
        output: Option<String>,
        /// Only namespaced (true) or cluster-wide (false) resources.
        #[arg(long)]
        namespaced: Option<bool>,
    },
    /// Documentation of a kind or one of its fields: `explain deployment.spec.strategy`.
    Explain { what: String },
    /// Where the control plane answers.
    ClusterInfo,
    /// A shell completion script: `source <(tug completion bash)`.
    Completion { shell: clap_complete::Shell },
    /// Add, change (--overwrite) or remove (`key-`) labels.
    Label(commands::modify::MetaArgs),
    /// Add, change (--overwrite) or remove (`key-`) annotations.
    Annotate(commands::modify::MetaArgs),
    /// Patch an object: strategic merge (the default), JSON merge or JSON patch.
    Patch(commands::modify::PatchArgs),
    /// Edit an object in $EDITOR; saving replaces it.
    Edit {
        /// `KIND NAME` or `KIND/NAME`.
        #[arg(required = true)]
        target: Vec<String>,
    },
    /// Mark a node unschedulable.
    Cordon { node: String },
    /// Mark a node schedulable again.
    Uncordon { node: String },
    /// Change a running pod's cpu and memory in place: `resize pod/web --limits memory=256Mi`.
    Resize(commands::modify::ResizeArgs),
    /// Cordon a node and evict its pods, within their PodDisruptionBudgets.
    Drain(commands::drain::DrainArgs),
    /// Add or remove a node's taints: `taint nodes NAME key=value:NoSchedule`, `key:NoSchedule-`.
    Taint(commands::modify::TaintArgs),
    /// Set a field of a pod template: `set image deploy/web web=nginx:1.27`.
    #[command(subcommand)]
    Set(commands::modify::SetCmd),
    /// Client configuration: `kubeconfig` prints a kubeconfig for kubectl.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The node's images: pull, import, ls, inspect, rm, prune.
    Image(commands::image::ImageArgs),
    /// Get credentials from a control plane over TLS with its join token.
    Join {
        /// https://HOST:PORT of the control plane's --listen address.
        url: String,
        #[arg(long)]
        token: String,
        /// The name in the client certificate (default: this host's name).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print a kubeconfig for kubectl with your credentials: over TLS the ones in --tls-dir;
    /// over the socket a new client certificate for your user and groups (cluster admins).
    Kubeconfig {
        /// The https:// address kubectl should use (default: --server when it is one, else
        /// https://127.0.0.1:6443).
        #[arg(long)]
        cluster_url: Option<String>,
        /// How long a new certificate is valid (`8760h`, `30d`).
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Rewrite every object the control plane encrypts at rest with its current key (the
    /// first of `--encryption-config`'s first provider): run after putting a new key first.
    Reencrypt,
}

/// kubectl's verbs that tug does not have, with what to use instead (clap's own "similar
/// subcommand" tip would point at an unrelated one).
const NOT_YET: &[(&str, &str)] = &[
    ("events", "tug get events [--for KIND/NAME]"),
    ("debug", "tug exec -it POD -- sh"),
    ("proxy", "kubectl proxy with the kubeconfig from `tug config kubeconfig`"),
    ("certificate", "tug create user NAME for a client certificate"),
    ("kustomize", "kubectl kustomize DIR | tug apply -f -"),
    ("plugin", "nothing yet"),
    ("alpha", "nothing yet"),
];

/// The message for a kubectl verb tug does not have, if the command line names one.
fn unsupported(args: &[String]) -> Option<String> {
    let verb = args.iter().skip(1).find(|a| !a.starts_with('-'))?;
    let known = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .any(|c| c.get_name() == verb || c.get_all_aliases().any(|a| a == verb));
    if known {
        return None;
    }
    NOT_YET
        .iter()
        .find(|(v, _)| v == verb)
        .map(|(v, alt)| format!("tug: \"{v}\" is not supported yet; instead: {alt}"))
}

fn main() -> ExitCode {
    // `tug get pods | head`: a reader that goes away ends tug quietly (SIGPIPE's default, as
    // for C tools), not with a panic from println!.
    // SAFETY: setting a signal's disposition has no preconditions; no thread runs yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Some(message) = unsupported(&std::env::args().collect::<Vec<_>>()) {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let tls_dir = cli
        .tls_dir
        .clone()
        .or_else(|| std::env::var_os("TUG_TLS_DIR").map(Into::into))
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".tug")
        });
    if let Cmd::Join { url, token, name } = &cli.command {
        return commands::join::run(url, token, name.as_deref(), &tls_dir).await;
    }
    if let Cmd::Image(args) = cli.command {
        return commands::image::run(args).await;
    }
    if let Cmd::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "tug",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(t) = &cli.token {
        client::http::set_bearer(t);
    }
    let client = client::Client::new(cli.server.as_deref(), &tls_dir).map_err(|e| format!("error: {e:#}"))?;
    let ns = cli.namespace.clone();
    match cli.command {
        Cmd::Apply { files, dry_run } => {
            commands::apply::run(&client, &files, ns.as_deref(), dry_run.as_deref()).await
        }
        Cmd::Replace { files } => commands::workloads::replace(&client, &files, ns.as_deref()).await,
        Cmd::Diff { files } => commands::workloads::diff(&client, &files, ns.as_deref()).await,
        Cmd::Run(a) => commands::workloads::run(&client, &a, ns.as_deref()).await,
        Cmd::Attach(a) => commands::logs::attach(&client, &a, ns.as_deref()).await,
        Cmd::Cp(a) => commands::copy::run(&client, &a, ns.as_deref()).await,
        Cmd::PortForward(a) => commands::forward::run(&client, &a, ns.as_deref()).await,
        Cmd::Expose(a) => commands::workloads::expose(&client, &a, ns.as_deref()).await,
        Cmd::Autoscale(a) => commands::workloads::autoscale(&client, &a, ns.as_deref()).await,
        Cmd::Wait(a) => commands::workloads::wait(&client, &a, ns.as_deref()).await,
        Cmd::Get(args) => commands::get::run(&client, &args, ns.as_deref()).await,
        Cmd::Describe { targets } => commands::describe::run(&client, &targets, ns.as_deref()).await,
        Cmd::Delete(args) => commands::delete::run(&client, &args, ns.as_deref()).await,
        Cmd::Rollout(c) => commands::rollout::run(&client, c, ns.as_deref()).await,
        Cmd::Scale(a) => commands::rollout::scale(&client, &a, ns.as_deref()).await,
        Cmd::Create(c) => commands::create::run(&client, c, ns.as_deref(), cli.server.as_deref()).await,
        Cmd::Logs(a) => commands::logs::logs(&client, &a, ns.as_deref()).await,
        Cmd::Exec(a) => commands::logs::exec(&client, &a, ns.as_deref()).await,
        Cmd::Top(c) => commands::top::run(&client, c, ns.as_deref()).await,
        Cmd::Auth(c) => commands::auth::run(&client, c, ns.as_deref()).await,
        Cmd::Admin(AdminCmd::Reencrypt) => {
            let (v, _) = client
                .call(
                    hyper::Method::POST,
                    "/apis/tug.io/v1/reencryptions",
                    "application/json",
                    b"{}".to_vec(),
                )
                .await
                .map_err(|e| match e {
                    client::CallError::Server(s) => {
                        format!("Error from server ({}): {}", s.reason, s.message)
                    }
                    e => e.to_string(),
                })?;
            let resources: Vec<&str> =
                v["resources"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
            println!("re-encrypted {} objects ({})", v["rewritten"], resources.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Version { output } => commands::version(&client, output.as_deref()).await,
        Cmd::ApiResources { output, namespaced } => {
            commands::api_resources(&client, output.as_deref(), namespaced).await
        }
        Cmd::Explain { what } => commands::explain(&client, &what).await,
        Cmd::ClusterInfo => {
            let v = client.get("/version").await.map_err(|e| e.to_string())?;
            let at = cli
                .server
                .clone()
                .or_else(|| std::env::var("TUG_SOCKET").ok())
                .unwrap_or_else(|| "/run/tug/tug.sock".into());
            println!(
                "Tug control plane is running at {at} (Kubernetes API {})",
                v["gitVersion"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completion { .. } => Ok(ExitCode::SUCCESS),
        Cmd::Label(a) => commands::modify::meta(&client, &a, ns.as_deref(), "labels").await,
        Cmd::Annotate(a) => commands::modify::meta(&client, &a, ns.as_deref(), "annotations").await,
        Cmd::Patch(a) => commands::modify::patch(&client, &a, ns.as_deref()).await,
        Cmd::Edit { target } => commands::modify::edit(&client, &target, ns.as_deref()).await,
        Cmd::Cordon { node } => commands::modify::cordon(&client, &node, true).await,
        Cmd::Uncordon { node } => commands::modify::cordon(&client, &node, false).await,
        Cmd::Drain(a) => commands::drain::run(&client, &a).await,
        Cmd::Resize(a) => commands::modify::resize(&client, &a, ns.as_deref()).await,
        Cmd::Taint(a) => commands::modify::taint(&client, &a).await,
        Cmd::Set(c) => commands::modify::set(&client, &c, ns.as_deref()).await,
        Cmd::Config(ConfigCmd::Kubeconfig { cluster_url, ttl }) => {
            commands::create::config_kubeconfig(&client, cli.server.as_deref(), &tls_dir, cluster_url, ttl)
                .await
        }
        Cmd::Join { .. } | Cmd::Image(_) => Ok(ExitCode::SUCCESS),
    }
}
