//! Authentication cost in-process, without HTTP: how long resolving an API key and a JWT to
//! a principal takes, and the rate-limit check after it. Prints ns per operation.
//!
//! usage: cargo run --example auth_bench [iterations]   (default 200000)

use std::time::Instant;

use inferno::auth::{AuthService, Credential, NewApiKey};
use inferno::config::AuthConfig;
use inferno::events::{default_projections, EventContext, EventStore, StoreOptions};
use inferno::ratelimit::RateLimits;

fn per_op(label: &str, n: u32, f: impl FnMut()) {
    let mut f = f;
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{label:<40} {ns:>9.0} ns/op");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir()?;
    let store = EventStore::open(dir.path(), default_projections(), StoreOptions::default())?;
    let auth = AuthService::new(store.clone(), &AuthConfig::default(), 60, dir.path())?;
    let password = "bench-admin-password".to_string();
    auth.bootstrap_admin("admin", Some(password.clone()))
        .await?;
    let ctx = EventContext::system();
    let (token, _) = auth.login(&ctx, "admin", &password).await?;
    let principal = auth
        .authenticate(Credential::Jwt(token.clone()), &ctx)
        .await?;
    let (_, key) = auth
        .create_key(
            &principal,
            &ctx,
            NewApiKey {
                name: "bench".into(),
                permissions: vec!["read_models".into()],
                expires_in_days: None,
                rate_limit_per_minute: None,
            },
        )
        .await?;
    let limits = RateLimits::new(u32::MAX, 10, 10);
    let rt = tokio::runtime::Handle::current();
    let run = |cred: &dyn Fn() -> Credential| {
        let _ = rt.block_on(auth.authenticate(cred(), &ctx));
    };
    tokio::task::block_in_place(|| {
        per_op("authenticate API key", n, || {
            run(&|| Credential::ApiKey(key.clone()))
        });
        per_op("authenticate JWT", n, || {
            run(&|| Credential::Jwt(token.clone()))
        });
        per_op("rate limit check", n, || {
            let _ = limits.check(principal.rate_key(), None);
        });
        per_op("me (user view)", n, || {
            let _ = auth.me(&principal);
        });
    });
    store.shutdown().await;
    Ok(())
}
