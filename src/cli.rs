//! The `intercom` command line: `serve` and `check-config`. It lives in the library so a
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
}

/// Parses the command line and runs the command, with `filters` offered to the routes.
pub fn run(filters: FilterRegistry) -> ExitCode {
    let cli = Cli::parse();
    let loaded = Settings::load(&cli.config_dir, cli.config.as_deref(), &ProcessEnv)
        .and_then(|s| crate::secrets::file::check_references(&s).map(|()| s))
        .and_then(|s| check_filters(&s, &filters).map(|()| s));
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
            filters,
            SettingsSource {
                dir: cli.config_dir,
                file: cli.config,
            },
        ),
    }
}

/// Every route's filters are registered in this binary and take their `config`.
fn check_filters(
    settings: &Settings,
    filters: &FilterRegistry,
) -> Result<(), crate::settings::SettingsError> {
    for (i, route) in settings.routes.iter().enumerate() {
        filters
            .chain(&route.name, &route.filters)
            .map_err(|(n, why)| {
                crate::settings::SettingsError::new(format!("routes[{i}].filters[{n}]"), why)
            })?;
    }
    Ok(())
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
