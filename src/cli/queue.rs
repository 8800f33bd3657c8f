//! `inferno queue ...`: the queue manager's commands against a running server's API.
//!
//! The API key comes from `INFERNO_API_KEY` only (a flag would show in `ps` and shell
//! history); it needs `manage_queue`. Output is a table, or the API's JSON with `--json`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Base URL of the server.
    #[arg(
        long,
        env = "INFERNO_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// PEM file of the CA that signed the server's certificate (for a private CA).
    #[arg(long, global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List jobs, newest first.
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// Owner's user id.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        priority: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one job.
    Show { id: String },
    /// Counts, workers, throughput, paused flag.
    Stats,
    /// Cancel a job.
    Cancel { id: String },
    /// Queue a failed, dead or cancelled job again.
    Retry { id: String },
    /// Change a job's priority (low, normal, high, critical).
    Priority { id: String, priority: String },
    /// Stop starting jobs (they are still accepted).
    Pause,
    /// Start jobs again.
    Resume,
    /// Remove finished jobs and their results (their events stay).
    Purge {
        /// completed, failed, dead or cancelled.
        #[arg(long)]
        status: String,
        /// e.g. 30s, 15m, 12h, 7d.
        #[arg(long)]
        older_than: Option<String>,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(args: &QueueArgs) -> anyhow::Result<Client> {
        let key = std::env::var("INFERNO_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .context("set INFERNO_API_KEY to an API key with the manage_queue permission")?;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Client {
            http: builder.build()?,
            base: args.url.trim_end_matches('/').to_string(),
            key,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value["error"]["message"]
                .as_str()
                .unwrap_or("no error body");
            let code = value["error"]["code"].as_str().unwrap_or("");
            bail!("{} {code}: {msg}", status.as_u16());
        }
        Ok(value)
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

const JOB_COLUMNS: [&str; 8] = [
    "id",
    "status",
    "priority",
    "model",
    "owner",
    "attempts",
    "position",
    "queued_at",
];

fn job_row(j: &Value) -> Vec<String> {
    let mut row: Vec<String> = JOB_COLUMNS.iter().map(|c| cell(&j[*c])).collect();
    // `queued_at` without its fraction of a second.
    if let Some(t) = row.last_mut() {
        if let Some(dot) = t.find('.') {
            t.truncate(dot);
        }
    }
    row
}

fn print_value(args: &QueueArgs, v: &Value, table: impl FnOnce(&Value)) {
    if args.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        table(v);
    }
}

fn show_job(j: &Value) {
    for (k, v) in j.as_object().into_iter().flatten() {
        if v.is_object() {
            println!("{k}:");
            for (k2, v2) in v.as_object().into_iter().flatten() {
                println!("  {k2}: {}", cell(v2));
            }
        } else {
            println!("{k}: {}", cell(v));
        }
    }
}

pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: QueueArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    let c = Client::new(&args)?;
    match &args.command {
        QueueCommand::Ls {
            status,
            model,
            user,
            priority,
            limit,
            cursor,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            for (name, v) in [
                ("status", status),
                ("model", model),
                ("user", user),
                ("priority", priority),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    q.push((name, v.clone()));
                }
            }
            let v = c.call(Method::GET, "/api/v1/queue/jobs", &q, None).await?;
            print_value(&args, &v, |v| {
                let rows: Vec<Vec<String>> = v["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(job_row)
                    .collect();
                print_table(&JOB_COLUMNS, &rows);
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: --cursor {next}");
                }
            });
        }
        QueueCommand::Show { id } => {
            let v = c
                .call(Method::GET, &format!("/api/v1/jobs/{id}"), &[], None)
                .await?;
            print_value(&args, &v, show_job);
        }
        QueueCommand::Stats => {
            let v = c.call(Method::GET, "/api/v1/queue", &[], None).await?;
            print_value(&args, &v, |v| {
                let rows: Vec<Vec<String>> = v["by_status"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| vec![cell(&s["status"]), cell(&s["count"])])
                    .collect();
                print_table(&["status", "jobs"], &rows);
                println!();
                for k in [
                    "paused",
                    "max_depth",
                    "oldest_queued_age_secs",
                    "completed_last_minute",
                    "tokens_last_minute",
                ] {
                    println!("{k}: {}", cell(&v[k]));
                }
                for w in v["workers"].as_array().into_iter().flatten() {
                    println!(
                        "worker {}: last heartbeat {}, running {}",
                        cell(&w["name"]),
                        cell(&w["last_heartbeat"]),
                        w["running_jobs"].as_array().map_or(0, |a| a.len())
                    );
                }
            });
        }
        QueueCommand::Cancel { id } | QueueCommand::Retry { id } => {
            let verb = if matches!(args.command, QueueCommand::Cancel { .. }) {
                "cancel"
            } else {
                "retry"
            };
            let path = format!("/api/v1/queue/jobs/{id}/{verb}");
            let v = c.call(Method::POST, &path, &[], None).await?;
            print_value(&args, &v, |v| print_table(&JOB_COLUMNS, &[job_row(v)]));
        }
        QueueCommand::Priority { id, priority } => {
            let path = format!("/api/v1/queue/jobs/{id}/priority");
            let body = serde_json::json!({ "priority": priority });
            let v = c.call(Method::POST, &path, &[], Some(body)).await?;
            print_value(&args, &v, |v| print_table(&JOB_COLUMNS, &[job_row(v)]));
        }
        QueueCommand::Pause | QueueCommand::Resume => {
            let path = if matches!(args.command, QueueCommand::Pause) {
                "/api/v1/queue/pause"
            } else {
                "/api/v1/queue/resume"
            };
            let v = c.call(Method::POST, path, &[], None).await?;
            print_value(&args, &v, |v| println!("paused: {}", cell(&v["paused"])));
        }
        QueueCommand::Purge { status, older_than } => {
            let mut q = vec![("status", status.clone())];
            if let Some(o) = older_than {
                q.push(("older_than", o.clone()));
            }
            let v = c
                .call(Method::DELETE, "/api/v1/queue/jobs", &q, None)
                .await?;
            print_value(&args, &v, |v| println!("purged: {}", cell(&v["purged"])));
        }
    }
    Ok(())
}
