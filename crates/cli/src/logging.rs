//! Logging for every subcommand: human-readable by default, `--log-format json` for machines,
//! filtered by `RUST_LOG` (e.g. `RUST_LOG=rebalanser=debug`), `info` when unset. Colour only
//! when stderr is a terminal and `NO_COLOR` is unset or empty (https://no-color.org).

use std::io::IsTerminal as _;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl LogFormat {
    /// As given on the command line (for the processes `member run` starts).
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber; logs go to stderr so that stdout stays the command's output.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Escape codes help a person at a terminal and garble everything else that reads stderr (a
/// file, a journal, a CI log, a pipe into grep); tracing-subscriber alone colours everywhere.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
