//! fsync honesty: `kill -9` keeps the page cache, so the crash tests would pass even if the
//! server never synced. Here the real server runs under `strace -f`, recording every sync
//! system call with its start and end; mutations are sent one at a time, and each one's 2xx
//! must come after a sync of a file in the data dir that started after the request was sent
//! and returned before the answer arrived. With the sync removed (or made lazy), no such call
//! falls inside the request windows and the test fails.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

/// A sync call on a data-dir file: (start, end) in Unix seconds.
type Sync = (f64, f64);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const SYNC_CALLS: [&str; 4] = ["fsync", "fdatasync", "sync_file_range", "msync"];

/// The sync calls on files under `data` in an `strace -f -ttt -y` log. A call another
/// thread interrupts is split into `<unfinished ...>` and `<... resumed>` lines.
fn syncs(trace: &str, data: &str) -> Vec<Sync> {
    let mut open: HashMap<String, (f64, bool)> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        // `<tid> <seconds.micros> <call>`; strace pads the tid with spaces.
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let call = rest.split('(').next().unwrap_or_default();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split(' ').next().unwrap_or_default();
            if let Some((start, ours)) = open.remove(tid) {
                if ours && SYNC_CALLS.contains(&name) && resumed.contains(") = 0") {
                    out.push((start, ts));
                }
            }
            continue;
        }
        if !SYNC_CALLS.contains(&call) {
            continue;
        }
        let ours = rest.contains(data);
        if rest.ends_with("<unfinished ...>") {
            open.insert(tid.to_string(), (ts, ours));
        } else if ours && rest.contains(") = 0") {
            out.push((ts, ts));
        }
    }
    out
}

#[test]
fn the_trace_parser_pairs_split_calls() {
    let trace = "\
101  1700000000.100000 fdatasync(7</d/data/log/journals/0>) = 0
102 1700000000.200000 fsync(8</d/data/log/journals/0> <unfinished ...>
101 1700000000.250000 fsync(9</tmp/other>) = 0
102 1700000000.300000 <... fsync resumed>) = 0
103 1700000000.400000 write(3, \"x\", 1) = 1";
    assert_eq!(
        syncs(trace, "/d/data"),
        vec![(1700000000.1, 1700000000.1), (1700000000.2, 1700000000.3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_mutation_waits_for_a_sync_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.canonicalize().unwrap();
    let trace = dir.path().join("strace.log");
    let trace_arg = trace.to_str().unwrap().to_string();
    let wrapper = [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-ttt",
        "-y",
        "-e",
        "trace=fsync,fdatasync,sync_file_range,msync",
        "-o",
        &trace_arg,
        "--",
    ];
    let env = [("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "1000000")];
    let server = common::spawn_server_under(&wrapper, &data, &env).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let token = server.admin_token(&client).await;

    // One at a time, so that each answer's window holds only its own request's work.
    let mut windows = Vec::new();
    for i in 0..40 {
        let sent = now();
        let status = match i % 4 {
            0 | 1 => {
                let r = client
                    .post(server.at("/api/v1/auth/api-keys"))
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("k{i}"), "permissions": []}))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }
            2 => {
                let r = client
                    .post(server.at("/api/v1/users"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"username": format!("user{i}"), "password": "fsync-password-1234"}),
                    )
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }
            _ => {
                let r = client
                    .patch(server.at("/api/v1/config"))
                    .bearer_auth(&token)
                    .json(&json!({"limits": {"max_prompt_chars": 10_000 + i}}))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }
        };
        let acked = now();
        assert!((200..300).contains(&status), "mutation {i}: {status}");
        windows.push((i, sent, acked));
    }

    // Stop the server (strace exits with it and flushes its log).
    let pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.child.id()))
        .unwrap_or_default();
    let server_pid = pid.split_whitespace().next().expect("the traced server");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", server_pid])
        .status();
    let mut server = server;
    server.child.wait().unwrap();

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls = syncs(&text, data.to_str().unwrap());
    assert!(
        !calls.is_empty(),
        "no sync calls on the data dir were traced"
    );
    let unsynced: Vec<usize> = windows
        .iter()
        .filter(|(_, sent, acked)| {
            !calls
                .iter()
                .any(|(start, end)| start >= sent && end <= acked)
        })
        .map(|(i, _, _)| *i)
        .collect();
    println!(
        "fsync: {} acknowledged mutations, {} sync calls on the data dir traced",
        windows.len(),
        calls.len()
    );
    assert!(
        unsynced.is_empty(),
        "mutations answered without a sync of the data dir in between: {unsynced:?}"
    );
}
