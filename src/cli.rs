//! What the three binaries share on their command lines: every flag falls back to an
//! environment variable `POSTERN_<FLAG>`, secrets come from files or the environment (never
//! argv), and logs go to stderr filtered by `RUST_LOG` (default `info`).

use std::path::Path;
use std::str::FromStr;

use crate::platform::token::Enrolment;

/// The flag's value, else `POSTERN_<var>` parsed; an unparsable variable is an error naming it.
pub fn flag<T: FromStr>(value: Option<T>, var: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    if value.is_some() {
        return Ok(value);
    }
    let name = format!("POSTERN_{var}");
    match std::env::var(&name) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={text:?}: {e}")),
        _ => Ok(None),
    }
}

/// As [`flag`], but missing is an error that says how to give it.
pub fn required<T: FromStr>(value: Option<T>, var: &str, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    flag(value, var)?.ok_or_else(|| {
        format!(
            "missing {what}: pass --{} or set POSTERN_{var}",
            var.to_lowercase().replace('_', "-")
        )
    })
}

/// A repeatable flag, else `POSTERN_<var>` split on commas, else `default`.
pub fn list(values: Vec<String>, var: &str, default: &[&str]) -> Vec<String> {
    if !values.is_empty() {
        return values;
    }
    let from_env: Vec<String> = std::env::var(format!("POSTERN_{var}"))
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if from_env.is_empty() {
        default.iter().map(|s| (*s).to_owned()).collect()
    } else {
        from_env
    }
}

/// Reads a secret or setting file.
pub fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The enrolment string from `--token-file` / `POSTERN_TOKEN_FILE`, else `POSTERN_TOKEN`.
pub fn enrolment(token_file: Option<std::path::PathBuf>) -> Result<Enrolment, String> {
    let text = match flag(token_file, "TOKEN_FILE")? {
        Some(path) => read_file(&path)?,
        None => std::env::var("POSTERN_TOKEN").map_err(|_| {
            "no enrolment string: pass --token-file, or set POSTERN_TOKEN_FILE or POSTERN_TOKEN"
        })?,
    };
    Enrolment::parse(&text).map_err(|e| format!("enrolment string: {e}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}
