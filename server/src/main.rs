//! `support-server`: a thin CLI over the `support_server` library.

use anyhow::Context;
use clap::Parser;
use support_server::auth::Role;
use support_server::config::{
    AdminCommand, Cli, Command, Config, RetentionCommand, TokenCommand, UploadsCommand,
};

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("support-server: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("support-server: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let cfg = Config::resolve(&cli.common, &args)?;
            init_logging(&cfg.log_format);
            let state = support_server::AppState::new(cfg).await?;
            support_server::server::run(state).await
        }
        Command::Migrate => {
            let cfg = Config::resolve_common(&cli.common)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
            let db =
                support_server::db::connect(cfg.database_url.as_deref(), &cfg.data_dir).await?;
            eprintln!("support-server: {} database is up to date", db.backend());
            Ok(())
        }
        Command::Admin(args) => {
            let cfg = Config::resolve(&cli.common, &args.serve)?;
            let state = support_server::AppState::new(cfg).await?;
            admin(&state, args.command).await
        }
        Command::Token(cmd) => {
            let cfg = Config::resolve_common(&cli.common)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
            let db =
                support_server::db::connect(cfg.database_url.as_deref(), &cfg.data_dir).await?;
            match cmd {
                TokenCommand::Create {
                    role,
                    ticket,
                    name,
                    expires,
                } => {
                    let role = Role::parse(&role).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--role must be admin, maintainer, ticket-system or uploader"
                        )
                    })?;
                    let ttl = match expires {
                        None => None,
                        Some(e) => {
                            Some(support_server::auth::parse_duration(&e).ok_or_else(|| {
                                anyhow::anyhow!("--expires {e:?}: write e.g. 12h, 30d, 2w")
                            })?)
                        }
                    };
                    let (id, secret, _) = support_server::tokens::create_token(
                        db.as_ref(),
                        role,
                        ticket.as_deref(),
                        &name,
                        ttl,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                    eprintln!(
                        "support-server: created {} token {id} (the secret below is shown only once)",
                        role.as_str()
                    );
                    println!("{secret}");
                    Ok(())
                }
                TokenCommand::List => {
                    println!(
                        "{:>5}  {:<13}  {:<20}  {:<25}  {:<25}  name",
                        "id", "role", "ticket", "expires", "revoked"
                    );
                    for t in db.list_tokens().await? {
                        println!(
                            "{:>5}  {:<13}  {:<20}  {:<25}  {:<25}  {}",
                            t.id,
                            t.role,
                            t.ticket.as_deref().unwrap_or("-"),
                            t.expires_at
                                .map(support_server::rfc3339)
                                .unwrap_or_else(|| "never".into()),
                            t.revoked_at
                                .map(support_server::rfc3339)
                                .unwrap_or_else(|| "-".into()),
                            t.name
                        );
                    }
                    Ok(())
                }
                TokenCommand::Revoke { id } => {
                    if db.revoke_token(id, support_server::now()).await? {
                        eprintln!("support-server: token {id} revoked");
                        Ok(())
                    } else {
                        anyhow::bail!("no live token with id {id}; see `support-server token list`")
                    }
                }
            }
        }
    }
}

/// `support-server admin ...` on the configured database and storage.
async fn admin(state: &support_server::AppState, cmd: AdminCommand) -> anyhow::Result<()> {
    use support_server::{now, rfc3339};
    let now = now();
    match cmd {
        AdminCommand::Uploads(UploadsCommand::List { expired }) => {
            let rows = state.db.list_uploads(expired.then_some(now)).await?;
            println!(
                "{:<32}  {:<20}  {:>13}  {:>13}  {:<25}  expired",
                "id", "ticket", "received", "size", "expires"
            );
            for r in &rows {
                let view = support_server::admin::AdminUpload::from_row(r, now);
                println!(
                    "{:<32}  {:<20}  {:>13}  {:>13}  {:<25}  {}",
                    r.id,
                    r.ticket,
                    r.received,
                    r.size,
                    r.upload_expires_at
                        .map(rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    if view.expired { "yes" } else { "no" }
                );
            }
            eprintln!("support-server: {} upload(s)", rows.len());
            Ok(())
        }
        AdminCommand::Uploads(UploadsCommand::Reap { dry_run }) => {
            let rows = support_server::retention::reap_expired_uploads(state, now, dry_run).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for r in &rows {
                println!("{verb} {} {} {} bytes", r.id, r.ticket, r.received);
            }
            eprintln!("support-server: {verb} {} expired upload(s)", rows.len());
            Ok(())
        }
        AdminCommand::Retention(RetentionCommand::Run { dry_run }) => {
            let rows = support_server::retention::run_retention(state, now, dry_run).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for r in &rows {
                println!(
                    "{verb} {} {} {} bytes created {}",
                    r.id,
                    r.ticket,
                    r.size,
                    rfc3339(r.created_at)
                );
            }
            eprintln!(
                "support-server: {verb} {} image(s) of closed tickets",
                rows.len()
            );
            Ok(())
        }
    }
}
