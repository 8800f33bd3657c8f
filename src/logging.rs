//! Tracing set-up: text or JSON lines to stderr, optionally a daily-rolling file, every line
//! passed through [`crate::audit::redact`] before it is written.

use std::io::{self, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::audit::redact::redact;
use crate::config::LoggingConfig;

/// A writer that buffers one formatted event and writes it redacted when dropped.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = redact(&String::from_utf8_lossy(&self.buf));
        let _ = self.inner.write_all(line.as_bytes());
        let _ = self.inner.flush();
    }
}

/// Wraps any `MakeWriter` so that everything it writes is redacted.
#[derive(Clone)]
pub struct Redacting<M>(pub M);

impl<'a, M> MakeWriter<'a> for Redacting<M>
where
    M: MakeWriter<'a>,
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.0.make_writer(),
            buf: Vec::with_capacity(256),
        }
    }
}

fn layer<S, M>(json: bool, writer: M, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    M: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(Redacting(writer))
        .with_ansi(ansi);
    if json {
        base.json().flatten_event(true).boxed()
    } else {
        base.boxed()
    }
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Set by [`init`]; [`set_level`] changes the filter through it.
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// The filter for `level`. async-nats logs each reconnect attempt at info; `nats` logs
/// each change of the connection's state once, so its lines are only shown from warn
/// unless asked for.
fn filter(level: &str) -> Result<EnvFilter, String> {
    let level = if level.contains("async_nats") {
        level.to_string()
    } else {
        format!("{level},async_nats=warn")
    };
    EnvFilter::try_new(&level).map_err(|e| e.to_string())
}

/// `[logging] level` changed live (`PATCH /api/v1/config`). Without a subscriber from
/// [`init`] (a server embedded in tests) there is nothing to change.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = filter(level)?;
    match FILTER.get() {
        Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Installs the global subscriber; keep the returned guard alive so the file writer flushes.
pub fn init(cfg: &LoggingConfig) -> Option<WorkerGuard> {
    let filter = filter(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = cfg.format == "json";
    let stderr = layer(json, io::stderr, false);
    let (file, guard) = match &cfg.dir {
        Some(dir) => {
            let appender = tracing_appender::rolling::daily(dir, "inferno.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (Some(layer(json, writer, false)), Some(guard))
        }
        None => (None, None),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
    guard
}
