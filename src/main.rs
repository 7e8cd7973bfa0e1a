//! The `intercom` command: `serve` and `check-config`. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use intercom::settings::{ProcessEnv, Settings};
use intercom::startup::reload::SettingsSource;
use intercom::startup::Application;

/// mimalloc: fewer cycles per request than glibc's allocator under many small,
/// short-lived allocations across worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = Settings::load(&cli.config_dir, cli.config.as_deref(), &ProcessEnv)
        .and_then(|s| intercom::secrets::file::check_references(&s).map(|()| s));
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
        Command::Serve => serve(
            settings,
            SettingsSource {
                dir: cli.config_dir,
                file: cli.config,
            },
        ),
    }
}

fn serve(settings: Settings, source: SettingsSource) -> ExitCode {
    intercom::telemetry::init_tracing(&settings.telemetry, std::io::stdout);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.reload_from(source);
        app.run_until_stopped()
            .await
            .map_err(intercom::startup::StartError::from)
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
