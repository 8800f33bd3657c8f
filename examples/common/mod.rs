//! What the benchmark examples share: their figures as JSON lines for `ops/bench-report.py`.

/// Appends one figure to the file `EVENTS_BENCH_JSONL` names, when set:
/// `{"bench":..,"case":..,"metric":..,"subject":"inferno","value":..}`.
pub fn figure(bench: &str, case: &str, metric: &str, value: f64) {
    let Some(path) = std::env::var_os("EVENTS_BENCH_JSONL") else {
        return;
    };
    let line = serde_json::json!({
        "bench": bench, "case": case, "metric": metric, "subject": "inferno", "value": value,
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open EVENTS_BENCH_JSONL");
    std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()).expect("write figure");
}
