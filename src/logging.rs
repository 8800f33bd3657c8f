//! Tracing set-up: text or JSON lines to stderr, optionally a daily-rolling file, every line
//! passed through [`crate::audit::redact`] before it is written.

use std::io::{self, Write};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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

/// Installs the global subscriber; keep the returned guard alive so the file writer flushes.
pub fn init(cfg: &LoggingConfig) -> Option<WorkerGuard> {
    // async-nats logs each reconnect attempt at info; `nats` logs each change of the
    // connection's state once, so its lines are only shown from warn unless asked for.
    let level = if cfg.level.contains("async_nats") {
        cfg.level.clone()
    } else {
        format!("{},async_nats=warn", cfg.level)
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
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
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
    guard
}
