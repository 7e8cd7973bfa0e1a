//! The `intercom` command line: `serve`, `check-config` and `explain`. It lives in the library so a
//! team's own binary (with its filters, see [`crate::filter`]) offers the same commands:
//! its `main` is `intercom::cli::run(registry)`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::filter::FilterRegistry;
use crate::settings::{ProcessEnv, Settings};
use crate::startup::reload::SettingsSource;
use crate::startup::Application;

/// Exit code for a configuration that cannot be used (sysexits `EX_USAGE`).
const EX_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "intercom",
    version,
    about = "Token broker with a caching proxy"
)]
struct Cli {
    /// Directory with <INTERCOM_ENV>.toml.
    #[arg(
        long,
        global = true,
        default_value = "config",
        env = "INTERCOM_CONFIG_DIR"
    )]
    config_dir: PathBuf,
    /// A configuration file layered over the directory's files.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the configuration and exit (0 when valid, 64 when not).
    CheckConfig,
    /// Ask a running Intercom what it would do with a request, and why (its admin
    /// listener's `POST /admin/explain`). The admin credential comes from
    /// `INTERCOM_ADMIN_CREDENTIAL`, the caller's bearer token (if any) from
    /// `INTERCOM_EXPLAIN_TOKEN`: never from the command line, where `ps` shows it.
    /// Exit 0 when the request would be forwarded, 2 when refused, 1 on an error.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The request target: path and query.
    path: String,
    /// The admin listener's base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9901",
        env = "INTERCOM_ADMIN_URL"
    )]
    admin: String,
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The `Host` the client would name.
    #[arg(long)]
    host: Option<String>,
    /// A header of the request, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The address the request would come from.
    #[arg(long)]
    client_address: Option<std::net::IpAddr>,
}

/// Parses the command line and runs the command, with `filters` offered to the routes.
pub fn run(filters: FilterRegistry) -> ExitCode {
    let cli = Cli::parse();
    if let Command::Explain(args) = cli.command {
        return explain(args);
    }
    let loaded = Settings::load(&cli.config_dir, cli.config.as_deref(), &ProcessEnv)
        .and_then(|s| crate::secrets::file::check_references(&s).map(|()| s))
        .and_then(|s| filters.chains(&s.routes).map(|_| s));
    let settings = match loaded {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("intercom: invalid configuration: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("configuration is valid ({} routes)", settings.routes.len());
            ExitCode::SUCCESS
        }
        Command::Explain(_) => unreachable!("answered before the configuration is read"),
        Command::Serve => serve(
            settings,
            filters,
            SettingsSource {
                dir: cli.config_dir,
                file: cli.config,
            },
        ),
    }
}

fn serve(settings: Settings, filters: FilterRegistry, source: SettingsSource) -> ExitCode {
    crate::telemetry::init_tracing(&settings.telemetry, std::io::stdout);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build_with(settings, filters).await?;
        app.reload_from(source);
        app.run_until_stopped()
            .await
            .map_err(crate::startup::StartError::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is_configuration() => {
            eprintln!("intercom: invalid configuration: {err}");
            ExitCode::from(EX_CONFIG)
        }
        Err(err) => {
            eprintln!("intercom: cannot start: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `intercom explain`: prints the explanation as JSON.
fn explain(args: ExplainArgs) -> ExitCode {
    let Ok(credential) = std::env::var("INTERCOM_ADMIN_CREDENTIAL") else {
        eprintln!("intercom: set INTERCOM_ADMIN_CREDENTIAL to the admin credential (revocation.admin_credential)");
        return ExitCode::FAILURE;
    };
    let mut headers = serde_json::Map::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("intercom: a header is `Name: value`, not {header:?}");
            return ExitCode::FAILURE;
        };
        let values = headers
            .entry(name.trim().to_ascii_lowercase())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = values {
            list.push(value.trim().into());
        }
    }
    if let Ok(token) = std::env::var("INTERCOM_EXPLAIN_TOKEN") {
        headers.insert("authorization".into(), format!("Bearer {token}").into());
    }
    let body = serde_json::json!({
        "method": args.method,
        "path": args.path,
        "host": args.host,
        "headers": headers,
        "client_address": args.client_address,
    });
    let url = format!("{}/admin/explain", args.admin.trim_end_matches('/'));
    let answer = actix_web::rt::System::new().block_on(async move {
        let mut res = awc::Client::new()
            .post(&url)
            .bearer_auth(credential)
            .send_json(&body)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        let text = res
            .body()
            .limit(4 << 20)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok::<_, String>((status, text))
    });
    match answer {
        Ok((status, text)) if status.is_success() => {
            let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            match value["decision"].as_str() {
                Some("forward") => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            }
        }
        Ok((status, text)) => {
            eprintln!(
                "intercom: the admin listener answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("intercom: cannot reach the admin listener: {e}");
            ExitCode::FAILURE
        }
    }
}
