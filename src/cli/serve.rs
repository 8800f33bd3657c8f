//! `inferno serve`.

use std::path::PathBuf;

use super::ConfigArgs;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address to listen on, e.g. 127.0.0.1:8080; overrides `[server] bind`.
    #[arg(long)]
    pub bind: Option<String>,
    /// Folder of GGUF models; overrides `[models] dir`.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Start even when the newest events of the log fail verification (the reason is
    /// logged). Investigate with `inferno audit verify` first.
    #[arg(long)]
    pub allow_broken_tail: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = args.common.load()?;
    if let Some(bind) = args.bind {
        cfg.server.bind = bind;
        cfg.sources
            .insert("server.bind".into(), crate::config::Source::Cli);
    }
    if let Some(dir) = args.models_dir {
        cfg.models.dir = dir;
    }
    let _guard = crate::logging::init(&cfg.logging);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut opts = crate::server::StartOptions::from_env();
    opts.allow_broken_tail = args.allow_broken_tail;
    let result = runtime.block_on(crate::server::serve(cfg, opts));
    if let Err(e) = &result {
        // Into the log too (e.g. a broken event chain), not only onto the terminal.
        tracing::error!(error = format!("{e:#}"), "inferno stopped");
    }
    result
}
