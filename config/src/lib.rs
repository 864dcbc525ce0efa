//! Configuration files for `tug-scheduler` and `tug-agent`.
//!
//! A file is TOML whose keys are the daemon's long flag names (`node-name = "a"`,
//! `insecure-registry = ["r:5000"]`). It is turned into arguments placed *before* the
//! command line's, then clap parses everything once: the file's values are validated exactly
//! like flags, and a flag on the command line wins over the file (the daemons let a later
//! flag override an earlier one). An unknown key, or a value of the wrong shape, is an error
//! naming the file and the key — never a silently ignored line.

pub mod private;

use clap::{ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// Keys a file may not set: the ones about the file itself and the one-shot commands.
const RESERVED: &[&str] = &["config", "print-config", "help", "version"];

/// The `--config` value in `argv`, if any.
fn config_path(argv: &[OsString]) -> Result<Option<OsString>, String> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().cloned().map(Some).ok_or_else(|| "--config needs a file".to_string());
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Ok(Some(OsString::from(v)));
        }
    }
    Ok(None)
}

fn scalar(key: &str, v: &toml::Value, file: &str) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        _ => Err(format!("{file}: key {key:?}: expected a string, number or boolean")),
    }
}

/// Converts the TOML `text` of `file` into arguments for `cmd`.
pub fn file_args(cmd: &Command, text: &str, file: &str) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("{file}: not valid TOML: {e}"))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !RESERVED.contains(&key.as_str()))
            .ok_or_else(|| {
                let mut known: Vec<&str> = cmd
                    .get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| !RESERVED.contains(l))
                    .collect();
                known.sort_unstable();
                format!(
                    "{file}: unknown key {key:?} (the keys are the flags' long names: {})",
                    known.join(", ")
                )
            })?;
        let flag = format!("--{key}");
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => out.push(OsString::from(flag)),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(format!("{file}: key {key:?}: expected true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for it in items {
                    out.push(OsString::from(format!("{flag}={}", scalar(key, it, file)?)));
                }
            }
            (_, toml::Value::Array(_)) => {
                return Err(format!("{file}: key {key:?}: takes one value, not a list"));
            }
            (_, v) => out.push(OsString::from(format!("{flag}={}", scalar(key, v, file)?))),
        }
    }
    Ok(out)
}

/// `argv` with the arguments of its `--config` file (if it names one) inserted after the
/// program name.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&argv)? else { return Ok(argv) };
    let file = Path::new(&path).display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--config {file}: {e}"))?;
    let extra = file_args(cmd, &text, &file)?;
    let mut out = Vec::with_capacity(argv.len() + extra.len());
    let mut it = argv.into_iter();
    out.extend(it.next());
    out.extend(extra);
    out.extend(it);
    Ok(out)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The effective configuration as a file `expand` reads back: every flag with its value
/// (defaults included), commented out where it has none.
pub fn print(cmd: &Command, m: &ArgMatches) -> String {
    let mut out = format!("# Effective configuration of {} (flags, file and defaults).\n", cmd.get_name());
    for a in cmd.get_arguments() {
        let (Some(long), id) = (a.get_long(), a.get_id().as_str()) else { continue };
        if RESERVED.contains(&long) {
            continue;
        }
        if let Some(h) = a.get_help() {
            out.push_str(&format!("# {h}\n"));
        }
        match a.get_action() {
            ArgAction::SetTrue => out.push_str(&format!("{long} = {}\n", m.get_flag(id))),
            action => {
                let values: Vec<String> = m
                    .get_raw(id)
                    .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                match (action, values.as_slice()) {
                    (ArgAction::Append, vs) => {
                        let items: Vec<String> = vs.iter().map(|v| toml_string(v)).collect();
                        out.push_str(&format!("{long} = [{}]\n", items.join(", ")));
                    }
                    (_, []) => out.push_str(&format!("# {long} = (not set)\n")),
                    (_, [v, ..]) => out.push_str(&format!("{long} = {}\n", toml_string(v))),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("d")
            .args_override_self(true)
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("print-config").long("print-config").action(ArgAction::SetTrue))
            .arg(Arg::new("node-name").long("node-name").default_value("host"))
            .arg(
                Arg::new("max-pods")
                    .long("max-pods")
                    .value_parser(clap::value_parser!(u32))
                    .default_value("110"),
            )
            .arg(Arg::new("registry").long("registry").action(ArgAction::Append))
            .arg(Arg::new("debug").long("debug").action(ArgAction::SetTrue))
    }

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_win_over_the_file() {
        let c = cmd();
        let extra = file_args(
            &c,
            "node-name = \"file\"\nmax-pods = 50\nregistry = [\"a:5000\", \"b\"]\ndebug = true\n",
            "f.toml",
        )
        .unwrap();
        let mut all = argv(&["d"]);
        all.extend(extra);
        all.extend(argv(&["--node-name", "flag"]));
        let m = c.clone().try_get_matches_from(all).unwrap();
        assert_eq!(m.get_one::<String>("node-name").unwrap(), "flag");
        assert_eq!(*m.get_one::<u32>("max-pods").unwrap(), 50);
        assert_eq!(m.get_many::<String>("registry").unwrap().collect::<Vec<_>>(), ["a:5000", "b"]);
        assert!(m.get_flag("debug"));
        let printed = print(&c, &m);
        assert!(
            printed.contains("node-name = \"flag\"") && printed.contains("max-pods = \"50\""),
            "{printed}"
        );
        // What print writes, file_args reads back.
        assert!(file_args(&c, &printed, "p").is_ok(), "{printed}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let c = cmd();
        let e = file_args(&c, "node-nmae = \"x\"\n", "/etc/tug/agent.toml").unwrap_err();
        assert!(e.contains("/etc/tug/agent.toml") && e.contains("unknown key \"node-nmae\""), "{e}");
        assert!(file_args(&c, "debug = \"yes\"\n", "f").unwrap_err().contains("true or false"));
        assert!(file_args(&c, "node-name = [\"a\"]\n", "f").unwrap_err().contains("not a list"));
        assert!(file_args(&c, "config = \"other\"\n", "f").unwrap_err().contains("unknown key"));
        assert!(file_args(&c, "x = \n", "f").unwrap_err().contains("not valid TOML"));
        // A bad value is clap's error, naming the flag the key is.
        let mut all = argv(&["d"]);
        all.extend(file_args(&c, "max-pods = \"many\"\n", "f").unwrap());
        let e = c.try_get_matches_from(all).unwrap_err().to_string();
        assert!(e.contains("--max-pods"), "{e}");
    }

    #[test]
    fn expand_reads_the_file_named_by_config() {
        let dir = std::env::temp_dir().join(format!("tug-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(&f, "node-name = \"fromfile\"\n").unwrap();
        let out = expand(&cmd(), argv(&["d", "--config", f.to_str().unwrap(), "--debug"])).unwrap();
        assert_eq!(out[1], OsString::from("--node-name=fromfile"));
        assert!(
            expand(&cmd(), argv(&["d", "--config", "/nonexistent.toml"]))
                .unwrap_err()
                .contains("/nonexistent.toml")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
