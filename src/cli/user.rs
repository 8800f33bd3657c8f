//! `inferno user add|passwd|disable|list`: user administration on a stopped server's data
//! dir. Passwords are read from `INFERNO_USER_PASSWORD` or the first line of stdin, never
//! from arguments (which other users can see in the process list).

use std::io::BufRead;

use clap::Subcommand;

use super::ConfigArgs;
use crate::auth::{perm, AuthService, NewUser, UserPatch};
use crate::events::{EventContext, EventStore, StoreOptions};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        #[command(flatten)]
        common: ConfigArgs,
        username: String,
        /// admin, user, auditor or operator.
        #[arg(long, default_value = "user")]
        role: String,
        /// Extra permissions beyond the role (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// Set a user's password.
    Passwd {
        #[command(flatten)]
        common: ConfigArgs,
        username: String,
    },
    /// Disable a user (their tokens and keys stop working).
    Disable {
        #[command(flatten)]
        common: ConfigArgs,
        username: String,
    },
    /// List users.
    List {
        #[command(flatten)]
        common: ConfigArgs,
    },
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("INFERNO_USER_PASSWORD") {
        return Ok(p);
    }
    eprintln!("password (first line of stdin):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    let common = match &cmd {
        UserCommand::Add { common, .. }
        | UserCommand::Passwd { common, .. }
        | UserCommand::Disable { common, .. }
        | UserCommand::List { common } => common.clone(),
    };
    let cfg = common.load()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = EventStore::open(
            &cfg.storage.data_dir,
            crate::events::projections::default_projections(),
            StoreOptions::default(),
        )?;
        let auth = AuthService::offline(store.clone(), &cfg.auth, &cfg.storage.data_dir)?;
        let result = user_command(&auth, cmd).await;
        store.shutdown().await;
        result
    })
}

async fn user_command(auth: &AuthService, cmd: UserCommand) -> anyhow::Result<()> {
    let cap = auth.operator::<perm::ManageUsers>()?;
    let ctx = EventContext::system();
    match cmd {
        UserCommand::Add {
            username,
            role,
            permissions,
            ..
        } => {
            let password = read_password()?;
            let user = auth
                .create_user(
                    &cap,
                    &ctx,
                    NewUser {
                        username,
                        password,
                        role,
                        extra_permissions: permissions,
                        email: None,
                    },
                )
                .await?;
            println!("created user {} ({})", user.username, user.id);
        }
        UserCommand::Passwd { username, .. } => {
            let id = auth.find_user_id(&username)?;
            let password = read_password()?;
            let patch = UserPatch {
                password: Some(password),
                ..UserPatch::default()
            };
            auth.update_user(&cap, &ctx, &id, patch).await?;
            println!("password changed for {username}");
        }
        UserCommand::Disable { username, .. } => {
            let id = auth.find_user_id(&username)?;
            let patch = UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            };
            auth.update_user(&cap, &ctx, &id, patch).await?;
            println!("disabled {username}");
        }
        UserCommand::List { .. } => {
            let mut cursor = None;
            loop {
                let page = auth.list_users(&cap, cursor.as_deref(), crate::paging::MAX_LIMIT)?;
                for u in page.items {
                    println!(
                        "{}\t{}\t{}\t{}",
                        u.id,
                        u.username,
                        u.role,
                        if u.disabled { "disabled" } else { "active" }
                    );
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    Ok(())
}
