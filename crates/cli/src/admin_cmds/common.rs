//! What the admin subcommands share: the store/group/timeout arguments, durations, the error
//! type (one line on stderr, an exit status), the runtime and the bounded wait for the store.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use rebalanser::{Admin, Error, IdError, OpenOptions};

pub use crate::util::{parse_duration, DurationError};

/// The environment variables that stand in for `--store` and `--group` (a flag given wins).
pub const STORE_ENV: &str = "REBALANSER_STORE";
pub const GROUP_ENV: &str = "REBALANSER_GROUP";

/// `--store`, `--group`, `--timeout`: flattened into every admin subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store URL: zk://HOST:PORT[,HOST:PORT...]/CHROOT or sqlite:///PATH.db
    #[arg(long, value_name = "URL", env = STORE_ENV)]
    pub store: String,
    /// The group.
    #[arg(long, short = 'g', value_name = "GROUP", env = GROUP_ENV)]
    pub group: String,
    /// Longest wait for the store before giving up (e.g. 500ms, 5s, 1m).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        allow_hyphen_values = true
    )]
    pub timeout: String,
}

/// `--store` and `--timeout` alone, for commands about the store rather than one group
/// (`group list`).
#[derive(clap::Args, Debug, Clone)]
pub struct StoreOnlyArgs {
    /// Store URL: zk://HOST:PORT[,HOST:PORT...]/CHROOT or sqlite:///PATH.db
    #[arg(long, value_name = "URL", env = STORE_ENV)]
    pub store: String,
    /// Longest wait for the store before giving up (e.g. 500ms, 5s, 1m).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        allow_hyphen_values = true
    )]
    pub timeout: String,
}

/// Everything an admin subcommand can fail with. Printed as one line after `rebalanser: `.
#[derive(Debug)]
pub enum CliError {
    /// A duration argument (`--timeout`, `--interval`) did not parse.
    BadDuration {
        flag: &'static str,
        value: String,
        reason: DurationError,
    },
    /// A resource id was rejected before anything was written.
    BadId {
        id: String,
        origin: String,
        reason: IdError,
    },
    /// `resource add|remove` without ids and without `--from-file`.
    NoIds { verb: &'static str },
    /// The ids file could not be read.
    ReadFile { path: String, reason: String },
    /// `memory://` names a store inside one process: a CLI process cannot see it.
    MemoryStore { url: String },
    /// A `sqlite://` file that does not exist, for a command that does not create it.
    NoStoreFile { url: String, path: String },
    /// The store did not answer within `--timeout`.
    Timeout { store: String, after: Duration },
    /// The group does not exist.
    NoGroup {
        group: String,
        store: String,
        hint: &'static str,
    },
    /// What the API said (a bad URL, a store failure...).
    Api(Error),
    /// What the RabbitMQ broker (or its URL) said.
    Broker(String),
    /// Writing the output failed (other than a closed pipe).
    Output(std::io::Error),
    /// Stdout was closed (`| head`): stop quietly.
    ClosedPipe,
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError::Api(e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BadDuration {
                flag,
                value,
                reason,
            } => write!(
                f,
                "invalid duration {value:?} for {flag}: {reason} (write e.g. 250ms, 2s, 1.5s, 1m)"
            ),
            CliError::BadId { id, origin, reason } => write!(
                f,
                "invalid resource id {} ({origin}): {reason}; nothing was changed",
                shorten(id)
            ),
            CliError::NoIds { verb } => write!(
                f,
                "no resource ids to {verb}: give them as arguments or with --from-file FILE \
                 (- for stdin)"
            ),
            CliError::ReadFile { path, reason } => {
                write!(f, "cannot read resource ids from {path}: {reason}")
            }
            CliError::MemoryStore { url } => write!(
                f,
                "{url:?} is an in-process store: another process (like this command) cannot \
                 see it; use zk://HOST:PORT/CHROOT or sqlite:///PATH.db"
            ),
            CliError::NoStoreFile { url, path } => write!(
                f,
                "no such store file {path} (store {url:?}); nothing was created: only \
                 `rebalanser group create`, `resource add` and `rabbitmq setup` create a store \
                 file"
            ),
            CliError::Timeout { store, after } => write!(
                f,
                "store {store} did not answer within {} (is it running and reachable? \
                 --timeout waits longer)",
                fmt_duration(*after)
            ),
            CliError::NoGroup { group, store, hint } => {
                write!(f, "group {group} does not exist in {store} ({hint})")
            }
            CliError::Api(e) => write!(f, "{e}"),
            CliError::Broker(e) => write!(f, "{e}"),
            CliError::Output(e) => write!(f, "cannot write the output: {e}"),
            CliError::ClosedPipe => write!(f, "stdout closed"),
        }
    }
}

impl CliError {
    /// 2: the command line was wrong (nothing was tried); 1: the store or the group said no.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BadDuration { .. }
            | CliError::BadId { .. }
            | CliError::NoIds { .. }
            | CliError::MemoryStore { .. } => 2,
            CliError::Api(Error::BadUrl { .. } | Error::UnsupportedStore { .. })
            | CliError::Api(Error::InvalidId(_)) => 2,
            _ => 1,
        }
    }
}

/// An id for an error message: quoted, and cut after 60 characters.
pub fn shorten(id: &str) -> String {
    const MAX: usize = 60;
    if id.chars().count() <= MAX {
        format!("{id:?}")
    } else {
        let head: String = id.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", id.len())
    }
}

/// `250ms`, `5s`, `1.5s`, `2m`, `1m30s`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let (secs, rest_ms) = (ms / 1000, ms % 1000);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        if rest_ms == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else {
        let (mins, rest_s) = (secs / 60, secs % 60);
        if rest_s == 0 && rest_ms == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{rest_s}s")
        }
    }
}

/// Prints the error as one line on stderr and returns its exit status.
pub fn report(e: CliError) -> ExitCode {
    if matches!(e, CliError::ClosedPipe) {
        return ExitCode::FAILURE;
    }
    eprintln!("rebalanser: {}", one_line(&e.to_string()));
    ExitCode::from(e.exit_code())
}

/// Folds any line breaks (from a store's error text) so an error stays one line.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A panic in this process (or in a store client's task) is a bug: report it as one line, not
/// as a panic message with a backtrace hint.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "rebalanser: internal error (a bug, please report it): {}{at}",
            one_line(&msg)
        );
    }));
}

/// Runs a command's future on a fresh runtime, then reports its error, if any.
pub fn run<F>(f: F) -> ExitCode
where
    F: Future<Output = Result<(), CliError>>,
{
    install_panic_hook();
    let quiet = super::quiet::dispatch();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if let Some(d) = quiet.clone() {
        // For the thread's whole life (worker and blocking threads alike).
        builder.on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)));
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebalanser: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &quiet {
        Some(d) => tracing::dispatcher::with_default(d, || rt.block_on(f)),
        None => rt.block_on(f),
    };
    // Store clients may leave tasks (reconnect loops) behind: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

pub fn duration_arg(flag: &'static str, value: &str) -> Result<Duration, CliError> {
    parse_duration(value).map_err(|reason| CliError::BadDuration {
        flag,
        value: value.to_string(),
        reason,
    })
}

/// A connected admin handle and the bound on each wait for the store.
pub struct Conn {
    pub admin: Admin,
    pub timeout: Duration,
    /// The store as it describes itself (credentials redacted).
    pub store: String,
}

impl Conn {
    /// Runs one store interaction, bounded by `--timeout`.
    pub async fn bounded<T, F>(&self, f: F) -> Result<T, CliError>
    where
        F: Future<Output = Result<T, Error>>,
    {
        bounded(&self.store, self.timeout, f).await
    }
}

/// One store interaction bounded by `--timeout`, for commands without a [`Conn`].
pub async fn bounded_on<T, F>(store: &str, timeout: Duration, f: F) -> Result<T, CliError>
where
    F: Future<Output = Result<T, Error>>,
{
    bounded(store, timeout, f).await
}

async fn bounded<T, F>(store: &str, timeout: Duration, f: F) -> Result<T, CliError>
where
    F: Future<Output = Result<T, Error>>,
{
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| match e {
            Error::UnknownGroup { group } => CliError::NoGroup {
                group: group.to_string(),
                store: store.to_string(),
                hint: "`rebalanser resource add` creates it",
            },
            Error::NoStoreFile { url, path } => CliError::NoStoreFile { url, path },
            e => CliError::Api(e),
        }),
        Err(_) => Err(CliError::Timeout {
            store: store.to_string(),
            after: timeout,
        }),
    }
}

/// How a command uses the store. Only the commands that create a group may create a
/// `sqlite://` file; the others refuse a missing one ([`CliError::NoStoreFile`]), so a
/// mistyped path leaves no stray file behind.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads: opened read-only (a file the user may only read works; it is never
    /// changed, and every write is refused).
    Read,
    /// Writes to an existing store.
    Write,
    /// Writes, creating a missing `sqlite://` file (`group create`, `resource add`,
    /// `rabbitmq setup`).
    Create,
}

impl Access {
    fn options(self) -> OpenOptions {
        match self {
            Access::Read => OpenOptions::new().read_only(true),
            Access::Write => OpenOptions::new().create(false),
            Access::Create => OpenOptions::new(),
        }
    }
}

/// Validates the arguments and opens the store, bounded by `--timeout`.
pub async fn connect(a: &StoreArgs, access: Access) -> Result<Conn, CliError> {
    let timeout = duration_arg("--timeout", &a.timeout)?;
    // The group's error first: it is the more useful one when both are wrong.
    rebalanser::GroupId::new(a.group.as_str()).map_err(|e| CliError::Api(e.into()))?;
    let url = a.store.trim().to_string();
    if url.to_ascii_lowercase().starts_with("memory://") {
        return Err(CliError::MemoryStore { url });
    }
    let group = a.group.clone();
    let shown = url.clone();
    let opts = access.options();
    // Opening a store may block (SQLite checks the file and takes its lock): off the runtime.
    let open = async move {
        match tokio::task::spawn_blocking(move || Admin::connect_with(&url, &group, opts)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    };
    let admin = bounded(&shown, timeout, open).await?;
    let store = admin.store().describe();
    Ok(Conn {
        admin: admin.with_op_timeout(timeout),
        timeout,
        store,
    })
}

/// A store opened for a command about the whole store: the handle, the bound on each wait,
/// and the store as it describes itself.
pub struct StoreConn {
    pub store: std::sync::Arc<dyn rebalanser::Store>,
    pub timeout: Duration,
    pub shown: String,
}

/// Opens the store alone (no group), bounded by `--timeout`.
pub async fn connect_store(a: &StoreOnlyArgs, access: Access) -> Result<StoreConn, CliError> {
    let timeout = duration_arg("--timeout", &a.timeout)?;
    let url = a.store.trim().to_string();
    if url.to_ascii_lowercase().starts_with("memory://") {
        return Err(CliError::MemoryStore { url });
    }
    let shown = url.clone();
    let opts = access.options();
    let open = async move {
        match tokio::task::spawn_blocking(move || rebalanser::open_store_with(&url, opts)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    };
    let store = bounded(&shown, timeout, open).await?;
    Ok(StoreConn {
        shown: store.describe(),
        store,
        timeout,
    })
}

/// Writes a command's output to stdout in one go; a closed pipe ends the command quietly.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::ClosedPipe
            } else {
                CliError::Output(e)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5"), Err(DurationError::NoUnit));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit("x".into()))
        );
        assert_eq!(parse_duration("ms"), Err(DurationError::NoNumber));
        assert_eq!(
            parse_duration("1.2.3s"),
            Err(DurationError::BadNumber("1.2.3".into()))
        );
        assert_eq!(parse_duration("-1s"), Err(DurationError::NoNumber));
        assert_eq!(
            parse_duration("2d"),
            Err(DurationError::UnknownUnit("d".into()))
        );
        assert_eq!(parse_duration("100000h"), Err(DurationError::TooLong));
    }

    #[test]
    fn duration_display() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a\nb\r\n c\n"), "a b c");
    }
}
