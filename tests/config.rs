//! Configuration precedence (defaults < file < environment) and unknown-key errors.

use inferno::config::Config;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_then_file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(
        &file,
        r#"
[server]
bind = "127.0.0.1:9000"
max_body_bytes = 2048
[limits]
requests_per_minute = 10
"#,
    )
    .unwrap();

    let defaults = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(defaults.server.bind, "127.0.0.1:8080");
    assert_eq!(defaults.limits.requests_per_minute, 60);
    assert_eq!(defaults.server.max_body_bytes, 10 * 1024 * 1024);

    let from_file = Config::load_from(Some(&file), env(&[])).unwrap();
    assert_eq!(from_file.server.bind, "127.0.0.1:9000");
    assert_eq!(from_file.server.max_body_bytes, 2048);
    assert_eq!(
        from_file.limits.max_prompt_chars, 10_000,
        "untouched keys keep defaults"
    );

    let from_env = Config::load_from(
        Some(&file),
        env(&[
            ("INFERNO_SERVER__BIND", "0.0.0.0:7000"),
            ("INFERNO_LIMITS__REQUESTS_PER_MINUTE", "5"),
            (
                "INFERNO_AUTH__JWT_SECRET",
                "from-the-environment-0123456789",
            ),
            // Not configuration: no `__`, so ignored rather than an unknown key.
            ("INFERNO_ADMIN_PASSWORD", "whatever"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(from_env.server.bind, "0.0.0.0:7000");
    assert_eq!(from_env.limits.requests_per_minute, 5);
    assert_eq!(from_env.server.max_body_bytes, 2048, "file value survives");
    assert_eq!(
        from_env.auth.jwt_secret.as_ref().unwrap().expose(),
        "from-the-environment-0123456789"
    );
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(&file, "[server]\nbnd = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bnd"), "{err}");

    let err = Config::load_from(None, env(&[("INFERNO_SERVR__BIND", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("servr"), "{err}");

    let err = Config::load_from(None, env(&[("INFERNO_LOGGING__FORMAT", "xml")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("logging.format"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_or_dumps() {
    let cfg = Config::load_from(
        None,
        env(&[("INFERNO_AUTH__JWT_SECRET", "super-secret-value-123456789")]),
    )
    .unwrap();
    assert!(!format!("{cfg:?}").contains("super-secret-value"));
    assert!(!cfg.redacted_toml().contains("super-secret-value"));
}

#[test]
fn example_config_documents_every_key_and_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/inferno.example.toml");
    let cfg = Config::load_from(Some(&path), env(&[])).expect("example config loads");
    let text = std::fs::read_to_string(&path).unwrap();
    // Every key of the default config appears in the example.
    let defaults: toml::Value = toml::Value::try_from(Config::default()).unwrap();
    for (section, table) in defaults.as_table().unwrap() {
        for key in table.as_table().unwrap().keys() {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("# {key} =")),
                "ops/inferno.example.toml does not document {section}.{key}"
            );
        }
    }
    assert_eq!(
        cfg.server.max_body_bytes,
        Config::default().server.max_body_bytes
    );
}

#[test]
fn nats_keys_load_and_their_secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(
        &file,
        r#"
[nats]
url = "nats://inferno:url-password-123@127.0.0.1:4222"
token = "nats-token-456"
"#,
    )
    .unwrap();
    assert!(Config::load_from(None, env(&[])).unwrap().nats.is_none());
    let cfg = Config::load_from(Some(&file), env(&[("INFERNO_NATS__EVENTS", "true")])).unwrap();
    let nats = cfg.nats.as_ref().unwrap();
    assert!(nats.events, "from the environment");
    assert!(nats.credentials.is_none());
    assert_eq!(nats.token.as_ref().unwrap().expose(), "nats-token-456");
    for shown in [format!("{cfg:?}"), cfg.redacted_toml()] {
        assert!(!shown.contains("url-password-123"), "{shown}");
        assert!(!shown.contains("nats-token-456"), "{shown}");
    }
    // `events` defaults to false.
    std::fs::write(&file, "[nats]\nurl = \"nats://127.0.0.1:4222\"\n").unwrap();
    let cfg = Config::load_from(Some(&file), env(&[])).unwrap();
    assert!(!cfg.nats.unwrap().events);
}

#[test]
fn nats_errors_name_the_key_but_not_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(&file, "[nats]\nurl = \"nats://u:secret-pw@[::1\"\n").unwrap();
    let err = Config::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nats.url"), "{err}");
    assert!(!err.contains("secret-pw"), "{err}");
    std::fs::write(
        &file,
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\ncredentials = \"/x.creds\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let err = Config::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nats.credentials") && err.contains("nats.token"),
        "{err}"
    );
    std::fs::write(
        &file,
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nevent = true\n",
    )
    .unwrap();
    let err = Config::load_from(Some(&file), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("event"), "{err}");
}

#[test]
fn cluster_keys_load_and_the_url_never_shows() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/cluster/cluster.toml");
    let url = "postgres://inferno:pg-secret-password-42@db.internal:5432/inferno";
    let cfg = Config::load_from(Some(&path), env(&[("INFERNO_STORAGE__URL", url)]))
        .expect("ops/cluster/cluster.toml loads");
    assert_eq!(cfg.storage.backend, "postgres");
    assert_eq!(cfg.storage.url.as_ref().unwrap().expose(), url);
    assert_eq!(cfg.node_id(), "node-1");
    assert!(!format!("{cfg:?}").contains("pg-secret-password"));
    assert!(!cfg.redacted_toml().contains("pg-secret-password"));
    // The backend without its URL, an unknown backend, a bad node id: errors naming the key.
    for (pairs, key) in [
        (vec![], "storage.url"),
        (
            vec![
                ("INFERNO_STORAGE__URL", url),
                ("INFERNO_STORAGE__BACKEND", "sqlite"),
            ],
            "storage.backend",
        ),
        (
            vec![
                ("INFERNO_STORAGE__URL", url),
                ("INFERNO_CLUSTER__NODE_ID", "node 1"),
            ],
            "cluster.node_id",
        ),
    ] {
        let err = Config::load_from(Some(&path), env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("pg-secret-password"), "{err}");
    }
    // Unset, the node id is the hostname and a hash of the data dir: stable, and different
    // for two data dirs on one host.
    let mut a = Config::default();
    a.storage.data_dir = "/var/lib/inferno-a".into();
    let mut b = a.clone();
    b.storage.data_dir = "/var/lib/inferno-b".into();
    assert_eq!(a.node_id(), a.clone().node_id());
    assert_ne!(a.node_id(), b.node_id());
}
