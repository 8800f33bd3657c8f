//! `ops/bench-report.py` renders BENCHMARKS.md from a results dir of `ops/bench-all.sh`: fed
//! a sample dir here (no benchmark runs in the tests), its tables, medians, ratios against
//! llama.cpp's server and machine section are checked.

use std::path::Path;
use std::process::Command;

fn report(dir: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/bench-report.py"))
        .arg(dir)
        .output()
        .expect("run python3 ops/bench-report.py")
}

fn write(dir: &Path, name: &str, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join(name), text).unwrap();
}

fn figure(bench: &str, case: &str, metric: &str, subject: &str, value: f64) -> serde_json::Value {
    serde_json::json!({"bench": bench, "case": case, "metric": metric, "subject": subject,
                       "value": value})
}

/// The table under `## title`, as rows of cells (header first, separator dropped).
fn table(markdown: &str, title: &str) -> Vec<Vec<String>> {
    let section = markdown
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {title} in:\n{markdown}"));
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn renders_one_table_per_benchmark_with_ratios_to_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "machine.jsonl",
        &[
            serde_json::json!({"info": "CPU", "value": "Test CPU 9000 (family 25, model 17)"}),
            serde_json::json!({"info": "cores", "value": "2"}),
            serde_json::json!({"info": "RUSTFLAGS", "value": "-C target-cpu=x86-64-v3"}),
        ],
    );
    write(
        d,
        "status.jsonl",
        &[
            serde_json::json!({"info": "bench inference", "value": "ok (90 s)"}),
            serde_json::json!({"info": "bench auth", "value": "FAILED (exit 1 after 3 s; see auth.log)"}),
        ],
    );
    let inf = |case, metric, subject, value| figure("inference", case, metric, subject, value);
    write(
        d,
        "inference.jsonl",
        &[
            inf("single request", "tokens/s", "inferno-inproc", 86.2),
            inf("single request", "tokens/s", "inferno-http", 87.1),
            inf("single request", "tokens/s", "llama.cpp", 82.0),
            inf("8 concurrent", "tokens/s", "inferno-http", 214.9),
            inf("8 concurrent", "tokens/s", "llama.cpp", 188.6),
            inf("single request", "TTFT ms (server)", "inferno-http", 57.5),
            inf("single request", "TTFT ms (server)", "llama.cpp", 57.7),
            serde_json::json!({"info": "llama.cpp build of inferno (system_info)",
                               "value": "CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1"}),
        ],
    );
    // Three rounds of one figure: the median shows, with the count.
    write(
        d,
        "auth.jsonl",
        &[
            figure(
                "auth",
                "GET /health (no auth)",
                "req/s",
                "inferno",
                30_000.0,
            ),
            figure(
                "auth",
                "GET /health (no auth)",
                "req/s",
                "inferno",
                35_202.0,
            ),
            figure(
                "auth",
                "GET /health (no auth)",
                "req/s",
                "inferno",
                34_000.0,
            ),
            figure(
                "auth",
                "GET /auth/me X-API-Key",
                "req/s vs /health",
                "inferno",
                0.94,
            ),
        ],
    );
    write(
        d,
        "custom.jsonl",
        &[figure("newbench", "a case", "ops/s", "inferno", 12.5)],
    );
    std::fs::write(d.join("inference.log"), "not a results file\n").unwrap();

    let out = report(d);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{md}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(md.starts_with("# Benchmarks\n"), "{md}");
    assert!(
        md.contains("load-tests/HISTORY.md"),
        "links the older measurements"
    );

    let machine = table(&md, "Machine and build");
    assert!(machine.contains(&vec![
        "CPU".to_string(),
        "Test CPU 9000 (family 25, model 17)".to_string()
    ]));
    assert!(
        machine
            .iter()
            .any(|r| r[0] == "llama.cpp build of inferno (system_info)"
                && r[1] == "CPU : SSE3 = 1 / AVX2 = 1 / OPENMP = 1"),
        "{machine:?}"
    );
    assert!(
        md.contains("| auth | FAILED (exit 1 after 3 s; see auth.log) |"),
        "{md}"
    );
    assert!(md.contains("| inference | ok (90 s) |"), "{md}");

    let inference = table(&md, "Inference");
    assert_eq!(
        inference[0],
        [
            "case",
            "measure",
            "inferno-inproc",
            "inferno-http",
            "llama.cpp",
            "inferno-inproc / llama.cpp",
            "inferno-http / llama.cpp"
        ]
    );
    assert_eq!(
        inference[1],
        [
            "single request",
            "tokens/s",
            "86.2",
            "87.1",
            "82.0",
            "1.05",
            "1.06"
        ]
    );
    // A subject without a figure for the row leaves its cell and its ratio empty.
    assert_eq!(
        inference[2],
        ["8 concurrent", "tokens/s", "", "214.9", "188.6", "", "1.14"]
    );
    assert_eq!(
        inference[3],
        [
            "single request",
            "TTFT ms (server)",
            "",
            "57.5",
            "57.7",
            "",
            "1.00"
        ]
    );
    assert!(md.contains("`ops/bench-inference.sh`"), "names the command");

    // One subject: a row per case, a column per measure; no llama.cpp, no ratio.
    let auth = table(&md, "Authentication overhead");
    assert_eq!(auth[0], ["case", "req/s", "req/s vs /health"]);
    assert_eq!(
        auth[1],
        ["GET /health (no auth)", "34,000 (median of 3)", ""]
    );
    assert_eq!(auth[2], ["GET /auth/me X-API-Key", "", "0.94"]);
    // An unknown bench still gets its table, after the known ones.
    let custom = table(&md, "newbench");
    assert_eq!(custom, [["case", "ops/s"], ["a case", "12.5"]]);
    assert!(md.find("## Authentication overhead").unwrap() < md.find("## newbench").unwrap());
    assert!(!md.contains("## Event log"), "no section without figures");
}

#[test]
fn a_malformed_results_line_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("auth.jsonl"), "{\"bench\": \"auth\"}\n").unwrap();
    let out = report(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jsonl:1"), "{err}");
}
