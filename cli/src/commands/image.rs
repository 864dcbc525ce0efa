//! `tug image`: the node's image store, used directly (like `crictl images` on a kubelet
//! host): pull, import, ls, inspect, rm, prune. The agent uses the same store, so what is
//! imported here is what its pods run.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tug_images::pull::{LayerProgress, LayerState, Progress};
use tug_images::{ImageRef, Puller, Store};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The image store (default $TUG_IMAGE_ROOT, else /var/lib/tug/images).
    #[arg(long, global = true)]
    pub image_root: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: ImageCmd,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry.
    Pull {
        image: String,
        /// A registry (HOST[:PORT]) to reach over plain HTTP. Repeatable.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        /// USER:PASSWORD for the registry.
        #[arg(long)]
        creds: Option<String>,
    },
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        file: PathBuf,
        /// The name to give the image (required when the archive names it only by a tag).
        #[arg(long)]
        name: Option<String>,
        /// The largest blob (a layer, a config) to read from the archive: a quantity such as
        /// 512Mi or 20Gi.
        #[arg(long, default_value = "16Gi")]
        max_blob_size: String,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only image names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an image's record and config as JSON.
    Inspect { image: String },
    /// Remove images by name or ID.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove every image no container uses.
    Prune,
}

pub async fn run(args: ImageArgs) -> Result<ExitCode, String> {
    let root = args
        .image_root
        .or_else(|| std::env::var_os("TUG_IMAGE_ROOT").map(Into::into))
        .unwrap_or_else(|| PathBuf::from(tug_images::DEFAULT_ROOT));
    let store = Arc::new(Store::open(&root).map_err(|e| format!("error: {e}"))?);
    match args.cmd {
        ImageCmd::Pull { image, insecure, creds } => {
            let r = ImageRef::parse(&image).map_err(|e| format!("error: {e}"))?;
            let creds = match creds {
                Some(c) => {
                    let (u, p) = c.split_once(':').ok_or("error: --creds: expected USER:PASSWORD")?;
                    Some(tug_images::auth::Credentials { username: u.into(), password: p.into() })
                }
                None => None,
            };
            let name = r.name();
            let before = store.find(&name).ok().flatten().map(|i| i.digest);
            let puller = Puller::new(store, insecure);
            println!("{}: Pulling from {}", r.tag().unwrap_or("latest"), r.repository());
            let pull = puller.pull(&r, creds);
            tokio::pin!(pull);
            let mut board = Board::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            let rec = loop {
                tokio::select! {
                    done = &mut pull => break done,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                        if let Some(p) = puller.progress(&name) {
                            board.draw(&p);
                        }
                    }
                }
            };
            let rec = rec.map_err(|e| format!("error: pulling image {image}: {}", e.message))?;
            board.finish(puller.finished_progress(&name));
            println!("Digest: {}", rec.index_digest.as_deref().unwrap_or(&rec.digest));
            if before.as_deref() == Some(rec.digest.as_str()) {
                println!("Status: Image is up to date for {name}");
            } else {
                println!("Status: Downloaded newer image for {name}");
            }
        }
        ImageCmd::Import { file, name, max_blob_size } => {
            let max = tug_api::quantity::Quantity::parse(&max_blob_size)
                .ok()
                .and_then(|q| u64::try_from(q.value()).ok())
                .filter(|m| *m > 0)
                .ok_or_else(|| {
                    format!("error: --max-blob-size: {max_blob_size:?} is not a size such as 512Mi or 20Gi")
                })?;
            let got = tokio::task::spawn_blocking(move || {
                tug_images::import::import_with(&store, &file, name.as_deref(), max)
            })
            .await
            .map_err(|e| format!("error: {e}"))?
            .map_err(|e| format!("error: import: {e}"))?;
            for r in got {
                println!("imported {} ({})", r.name, &r.config[..19]);
            }
        }
        ImageCmd::Ls { quiet } => {
            let images = store.images().map_err(|e| format!("error: {e}"))?;
            if quiet {
                for r in images {
                    println!("{}", r.name);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 4]> = images
                .iter()
                .map(|r| {
                    let (repo, tag) = split_name(&r.name);
                    [repo, tag, r.config[7..19].to_string(), human_size(r.size)]
                })
                .collect();
            print_table(&["IMAGE", "TAG", "IMAGE ID", "SIZE"], &rows);
        }
        ImageCmd::Inspect { image } => {
            let rec =
                store.find(&image).map_err(|e| format!("error: {e}"))?.ok_or_else(|| not_found(&image))?;
            let config = store.config(&rec).map_err(|e| format!("error: {e}"))?;
            let out = serde_json::json!({"image": rec, "config": config});
            println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        }
        ImageCmd::Rm { images } => {
            let mut names = Vec::new();
            for i in &images {
                names.push(
                    store.find(i).map_err(|e| format!("error: {e}"))?.ok_or_else(|| not_found(i))?.name,
                );
            }
            let removed = store.remove(&names).map_err(|e| format!("error: {e}"))?;
            for n in removed.images {
                println!("Deleted: {n}");
            }
        }
        ImageCmd::Prune => {
            let in_use: Vec<String> =
                store.snapshots().map_err(|e| format!("error: {e}"))?.into_iter().map(|s| s.digest).collect();
            let unused: Vec<String> = store
                .images()
                .map_err(|e| format!("error: {e}"))?
                .into_iter()
                .filter(|r| !in_use.contains(&r.digest))
                .map(|r| r.name)
                .collect();
            let removed = if unused.is_empty() { store.sweep() } else { store.remove(&unused) };
            let removed = removed.map_err(|e| format!("error: {e}"))?;
            for n in &removed.images {
                println!("Deleted: {n}");
            }
            println!("Total reclaimed space: {}", human_size(removed.bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn not_found(image: &str) -> String {
    format!("error: image {image:?} not found (tug image ls lists the images)")
}

/// `registry/repo:tag` → (`registry/repo`, `tag`); a digest-only name has tag `<none>`.
fn split_name(name: &str) -> (String, String) {
    let base = name.split('@').next().unwrap_or(name);
    match base.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (base.to_string(), "<none>".to_string()),
    }
}

/// A pull's layers as Docker shows them: on a terminal, one line per layer redrawn in place
/// (a progress bar while it downloads); otherwise a plain line each time a layer moves on.
struct Board {
    tty: bool,
    last: Progress,
    /// Lines drawn on the terminal, to move back over.
    drawn: usize,
}

impl Board {
    fn new(tty: bool) -> Board {
        Board { tty, last: Progress::default(), drawn: 0 }
    }

    fn line(l: &LayerProgress) -> String {
        let id = l.digest.split_once(':').map_or(l.digest.as_str(), |(_, h)| h);
        let id = &id[..id.len().min(12)];
        if l.state == LayerState::Downloading && l.total > 0 {
            const WIDTH: usize = 50;
            let filled = usize::try_from(l.done.min(l.total) * WIDTH as u64 / l.total).unwrap_or(WIDTH);
            let bar = if filled >= WIDTH {
                "=".repeat(WIDTH)
            } else {
                format!("{}>{}", "=".repeat(filled), " ".repeat(WIDTH - filled - 1))
            };
            return format!("{id}: Downloading [{bar}]  {}/{}", human_size(l.done), human_size(l.total));
        }
        format!("{id}: {}", l.state.words())
    }

    fn draw(&mut self, p: &Progress) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in &p.layers {
                let _ = writeln!(out, "\x1b[2K{}", Board::line(l));
            }
            self.drawn = p.layers.len();
        } else {
            for (i, l) in p.layers.iter().enumerate() {
                let before = self.last.layers.get(i).map(|b| b.state);
                if before != Some(l.state) && l.state != LayerState::Waiting {
                    let _ = writeln!(out, "{}", Board::line(&LayerProgress { state: l.state, ..l.clone() }));
                }
            }
        }
        let _ = out.flush();
        self.last = p.clone();
    }

    /// The last picture: the pull's own final one, else what was last seen with every layer
    /// that was not already here complete.
    fn finish(&mut self, last: Option<Progress>) {
        let mut p = last.unwrap_or_else(|| self.last.clone());
        for l in &mut p.layers {
            if l.state != LayerState::AlreadyExists {
                l.state = LayerState::PullComplete;
            }
        }
        self.draw(&p);
    }
}

/// Docker's sizes: decimal units, three significant digits (`2.15MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = if i == 0 { format!("{bytes}") } else { format!("{v:.digits$}") };
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{}", UNITS[i])
}

fn print_table(header: &[&str; 4], rows: &[[String; 4]]) {
    let mut w = header.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(*header);
    for r in rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_154_000), "2.15MB");
        assert_eq!(human_size(52_428_800), "52.4MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn splits_names() {
        assert_eq!(
            split_name("docker.io/library/busybox:1.36"),
            ("docker.io/library/busybox".into(), "1.36".into())
        );
        assert_eq!(split_name("127.0.0.1:5000/x@sha256:ab"), ("127.0.0.1:5000/x".into(), "<none>".into()));
    }
}
