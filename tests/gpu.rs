//! `[models] gpu_layers` and `main_gpu`: defaults by build, config errors that name the key,
//! and the real binary serving the test model with `gpu_layers = 0` set explicitly, its
//! start-up log naming the backend and the layers in effect.
//!
//! Only the CPU build is tested here (no GPU, no CUDA toolkit on the test machines).

mod common;

use inferno::config::{Config, GpuLayers, GPU_BACKEND};
use serde_json::{json, Value};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_toml(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(&file, text).unwrap();
    Config::load_from(Some(&file), env(&[])).map_err(|e| e.to_string())
}

#[test]
fn gpu_layers_default_to_none_on_the_cpu_build() {
    let cfg = Config::load_from(None, env(&[])).unwrap();
    if cfg!(any(feature = "cuda", feature = "vulkan", feature = "metal")) {
        assert!(GPU_BACKEND.is_some());
        assert_eq!(cfg.models.gpu_layers, GpuLayers::All);
    } else {
        assert_eq!(GPU_BACKEND, None);
        assert_eq!(cfg.models.gpu_layers, GpuLayers::Count(0));
    }
    assert_eq!(cfg.models.main_gpu, 0);
}

#[test]
fn gpu_layers_take_a_number_or_all_from_file_and_env() {
    let cfg = load_toml("[models]\ngpu_layers = 12\nmain_gpu = 1\n").unwrap();
    assert_eq!(cfg.models.gpu_layers, GpuLayers::Count(12));
    assert_eq!(cfg.models.main_gpu, 1);
    let cfg = load_toml("[models]\ngpu_layers = \"all\"\n").unwrap();
    assert_eq!(cfg.models.gpu_layers, GpuLayers::All);
    let cfg = Config::load_from(None, env(&[("INFERNO_MODELS__GPU_LAYERS", "all")])).unwrap();
    assert_eq!(cfg.models.gpu_layers, GpuLayers::All);
    let cfg = Config::load_from(None, env(&[("INFERNO_MODELS__GPU_LAYERS", "0")])).unwrap();
    assert_eq!(cfg.models.gpu_layers, GpuLayers::Count(0));
}

#[test]
fn bad_gpu_values_are_config_errors_naming_the_key() {
    for bad in ["\"most\"", "-1", "1.5", "true"] {
        let err = load_toml(&format!("[models]\ngpu_layers = {bad}\n")).unwrap_err();
        assert!(err.contains("models.gpu_layers"), "{bad}: {err}");
        assert!(err.contains("or \"all\""), "{bad}: {err}");
    }
    let err = Config::load_from(None, env(&[("INFERNO_MODELS__GPU_LAYERS", "-3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("models.gpu_layers"), "{err}");
    let err = load_toml("[models]\nmain_gpu = 16\n").unwrap_err();
    assert!(err.contains("models.main_gpu"), "{err}");
    let err = load_toml("[models]\nmain_gpu = -1\n").unwrap_err();
    assert!(err.contains("models.main_gpu"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_with_gpu_layers_zero_and_logs_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    common::link_test_model(&models);
    let config = dir.path().join("inferno.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\ndir = {:?}\ngpu_layers = 0\nmain_gpu = 0\nparallel = 1\nthreads = 2\n",
            models.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = common::spawn_server(
        &dir.path().join("data"),
        &[
            ("INFERNO_CONFIG", config.to_str().unwrap()),
            ("INFERNO_LOGGING__FORMAT", "json"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let token = server.admin_token(&c).await;
    let settings: Value = server.get_json(&c, &token, "/api/v1/config").await;
    let setting = settings["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "models.gpu_layers")
        .cloned()
        .unwrap_or_else(|| panic!("no models.gpu_layers in {settings}"));
    assert_eq!(setting["value"], 0);
    assert_eq!(setting["source"], "file");

    let r = c
        .post(server.at("/api/v1/inference"))
        .bearer_auth(&token)
        .json(
            &json!({"model": common::TEST_MODEL_ID, "prompt": "The capital of France is",
                      "max_tokens": 4}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );

    let log = std::fs::read_to_string(&server.stderr_log).unwrap();
    let ready: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "llama.cpp backend ready")
        .unwrap_or_else(|| panic!("no backend line in:\n{log}"));
    assert_eq!(ready["gpu_layers"], "0", "{ready}");
    assert_eq!(ready["main_gpu"], 0, "{ready}");
    assert!(
        ready["system_info"].as_str().unwrap().contains("CPU"),
        "{ready}"
    );
    // The CPU build: the only device is the CPU, and nothing is offloaded.
    assert_eq!(ready["gpu_offload"], false, "{ready}");
    assert!(
        ready["devices"].as_str().unwrap().starts_with("CPU"),
        "{ready}"
    );
    assert!(
        !log.contains("every layer stays on the CPU"),
        "no warning for 0"
    );
    assert!(server.terminate().success());
}
