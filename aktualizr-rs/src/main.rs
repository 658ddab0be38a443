//! The `aktualizr-rs` binary: parses flags, sets up logging and the runtime, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use aktualizr_rs::primary::Phase;
use aktualizr_rs::tuf_client;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aktualizr-rs",
    version,
    about = "Uptane update client for OSTree-based embedded Linux"
)]
struct Cli {
    /// Log level as aktualizr: 0 trace, 1 debug, 2 info, 3 warning, 4 error, 5 fatal;
    /// default: `[logger] loglevel` of the configuration, else 2.
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(0..=5))]
    loglevel: Option<u8>,
    /// A configuration file or directory (repeatable; default: /usr/lib/sota/conf.d then
    /// /etc/sota/conf.d). Files merge as aktualizr merges them.
    #[arg(short = 'c', long = "config", global = true)]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A generic TUF client (the TUF conformance suite's client-under-test protocol).
    Tuf(TufArgs),
    /// Show the OSTree deployments, their Uptane targets and whether a reboot is pending.
    Status(StatusArgs),
    /// One update cycle: finalize a pending install after a reboot, register, report, check
    /// the Director and Image repository, and download and install what is assigned.
    Once,
    /// Verify the metadata and print what is assigned and not installed (nothing is
    /// downloaded).
    Check,
    /// Verify and download what is assigned, without installing it.
    Download,
    /// Verify, download (only what is missing) and install what is assigned: the same as
    /// `once`.
    Install,
    /// Only the finalization after a reboot: report whether the pending update booted.
    Finalize,
    /// Approve a step the configuration gates (`[consent] <operation>_approval`): download,
    /// install or reboot. Approves what waits for it now, else the next one.
    Approve {
        /// download, install or reboot.
        operation: aktualizr_rs::consent::Operation,
    },
    /// For ostree-pending-reboot.service: reboot (with `[bootloader] reboot_command`) only if
    /// the sentinel exists, the recorded update is a pending deployment, and neither the lock
    /// file `<sentinel dir>/reboot.lock` nor a systemd inhibitor lock holds it off.
    RebootIfPending,
    /// Run as the device daemon: a cycle every `[uptane] polling_sec` seconds until SIGTERM or
    /// SIGINT (which also end a download cleanly).
    Daemon,
    /// What the client knows: device ID, ECU serial and hardware ID, registration, current
    /// and pending image, trusted metadata versions, the last error.
    Info {
        /// One JSON object (schema 1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration: every key, its value and the file that set it.
    Config {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn primary(paths: &[PathBuf]) -> anyhow::Result<aktualizr_rs::primary::Primary> {
    use anyhow::Context as _;
    let mut config = aktualizr_rs::config::Config::load(paths)?;
    aktualizr_rs::provision::apply_server_url(&mut config)?;
    if !config.str("provision.provision_path").is_empty() {
        let id = aktualizr_rs::primary::provisioning_device_id(&config)?;
        let storage = PathBuf::from(config.str("storage.path"));
        runtime()?.block_on(aktualizr_rs::provision::ensure_device_credentials(
            &config, &storage, &id,
        ))?;
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let exe = std::env::current_exe().context("locating this executable (the pull worker)")?;
    let worker = aktualizr_rs_store::Worker::new(exe, &[PULL_WORKER_ARG]);
    aktualizr_rs::primary::Primary::new(config, worker)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn describe(outcome: &aktualizr_rs::primary::Outcome) -> String {
    use aktualizr_rs::primary::Outcome;
    match outcome {
        Outcome::UpToDate => "up to date".to_owned(),
        Outcome::RebootPending(t) => format!("{t} is installed and waits for a reboot"),
        Outcome::Installed(t) => format!("{t} installed; reboot to apply it"),
        Outcome::Available(t) => format!("{t} is available"),
        Outcome::Downloaded(t) => format!("{t} is downloaded"),
        Outcome::Stored(t) => format!("{t} installed (stored; no reboot needed)"),
        Outcome::Waiting(r) => format!("waiting for {r}"),
    }
}

fn run_cycle(paths: &[PathBuf], phase: Phase) -> anyhow::Result<()> {
    let primary = primary(paths)?;
    let outcome = runtime()?.block_on(primary.cycle(phase))?;
    println!("{}", describe(&outcome));
    Ok(())
}

fn state_word(outcome: &anyhow::Result<aktualizr_rs::primary::Outcome>) -> &'static str {
    use aktualizr_rs::primary::Outcome;
    match outcome {
        Ok(Outcome::UpToDate | Outcome::Stored(_)) => "idle",
        Ok(Outcome::RebootPending(_) | Outcome::Installed(_)) => "reboot-pending",
        Ok(Outcome::Available(_)) => "update-available",
        Ok(Outcome::Downloaded(_)) => "downloaded",
        Ok(Outcome::Waiting(_)) => "waiting",
        Err(_) => "error",
    }
}

/// The daemon's properties, refreshed from what the client knows.
fn refresh_snapshot(
    primary: &aktualizr_rs::primary::Primary,
    snap: &std::sync::Mutex<aktualizr_rs::dbus::Snapshot>,
    state: &str,
) {
    let info = primary.info().unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut s = snap.lock().unwrap_or_else(|e| e.into_inner());
    s.state = state.to_owned();
    s.current_target = info["current"]["target"]
        .as_str()
        .or_else(|| info["current"]["commit"].as_str())
        .unwrap_or_default()
        .to_owned();
    s.pending_target = text(&info["pending"]["target"]);
    s.need_reboot = info["reboot_sentinel"] == true;
    s.last_error = text(&info["last_error"]);
    s.waiting = text(&info["waiting"]);
}

fn run_daemon(paths: &[PathBuf]) -> anyhow::Result<()> {
    use aktualizr_rs::dbus::{self as bus, Command as BusCommand, Snapshot};
    use aktualizr_rs::service::{notify, watchdog_interval};
    use std::sync::{Arc, Mutex};
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let primary = primary(paths)?.with_progress(progress_tx);
    let (device, serial, _) = primary.identity();
    tracing::info!(device, serial, every = ?primary.polling(), "daemon started");
    // The watchdog is pinged from this loop, between and during cycles: a loop that stops
    // being polled (a blocked thread) stops the pings and systemd restarts the service.
    let ping_every = watchdog_interval().unwrap_or(std::time::Duration::from_secs(3600));
    let result = runtime()?.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut ping = tokio::time::interval(ping_every);
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        refresh_snapshot(&primary, &snapshot, "idle");
        let conn = match bus::serve(bus::Client::new(snapshot.clone(), cmd_tx)).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("D-Bus API not available: {e}");
                None
            }
        };
        let set_state = |state: &'static str| {
            refresh_snapshot(&primary, &snapshot, state);
            let conn = conn.clone();
            async move {
                if let Some(c) = &conn {
                    bus::emit_state(c, state).await;
                }
            }
        };
        notify("READY=1\nSTATUS=started");
        let mut next = Some(Phase::Install);
        let mut paused = false;
        // Commands that change what runs next; the others are handled in place.
        let handle = |cmd: BusCommand, next: &mut Option<Phase>, paused: &mut bool| match cmd {
            BusCommand::CheckNow => *next = Some(Phase::Check),
            BusCommand::Download => *next = Some(Phase::Download),
            BusCommand::Install => *next = Some(Phase::Install),
            BusCommand::Pause => *paused = true,
            BusCommand::Resume => {
                *paused = false;
                *next = Some(Phase::Install);
            }
            BusCommand::Abort => {}
            BusCommand::Approve(op) => {
                match aktualizr_rs::primary::approve(primary.storage(), op) {
                    Ok(what) => tracing::info!("approved over D-Bus: {what}"),
                    Err(e) => tracing::warn!("approving {}: {e:#}", op.name()),
                }
            }
        };
        'outer: loop {
            if let Some(phase) = next.take().filter(|_| !paused) {
                set_state(match phase {
                    Phase::Check => "checking",
                    Phase::Download => "downloading",
                    Phase::Install => "updating",
                })
                .await;
                notify("STATUS=checking for updates");
                let mut deferred = Vec::new();
                let outcome = {
                    let cycle = primary.cycle(phase);
                    tokio::pin!(cycle);
                    // A signal or Abort mid-cycle drops the cycle: a pull's worker process
                    // is killed, state written so far is complete (every write is atomic).
                    loop {
                        tokio::select! {
                            r = &mut cycle => break Some(r),
                            _ = ping.tick() => notify("WATCHDOG=1"),
                            Some((phase, pct)) = progress_rx.recv() => {
                                let overall = match phase {
                                    "check" => 10,
                                    "download" => 10 + pct * 8 / 10,
                                    _ => 100,
                                };
                                snapshot.lock().unwrap_or_else(|e| e.into_inner()).progress = overall;
                                if let Some(c) = &conn {
                                    bus::emit_progress(c, overall, phase, pct).await;
                                }
                            }
                            Some(cmd) = cmd_rx.recv() => match cmd {
                                BusCommand::Abort => break None,
                                BusCommand::Pause => { paused = true; break None }
                                other => deferred.push(other),
                            },
                            _ = tokio::signal::ctrl_c() => break 'outer,
                            _ = term.recv() => break 'outer,
                        }
                    }
                };
                let word = match &outcome {
                    Some(r) => {
                        let status = match r {
                            Ok(o) => describe(o),
                            Err(e) => format!("update cycle failed: {e:#}"),
                        };
                        tracing::info!("{status}");
                        notify(&format!("STATUS={status}"));
                        state_word(r)
                    }
                    None => {
                        tracing::info!("update cycle aborted");
                        "idle"
                    }
                };
                for cmd in deferred {
                    handle(cmd, &mut next, &mut paused);
                }
                set_state(if paused { "paused" } else { word }).await;
                if next.is_some() && !paused {
                    continue;
                }
            }
            let sleep = tokio::time::sleep(primary.polling());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => { next = Some(Phase::Install); break }
                    _ = ping.tick() => notify("WATCHDOG=1"),
                    Some(cmd) = cmd_rx.recv() => {
                        let was_paused = paused;
                        handle(cmd, &mut next, &mut paused);
                        if paused != was_paused {
                            set_state(if paused { "paused" } else { "idle" }).await;
                        } else {
                            // (The lock must be released before refresh_snapshot takes it.)
                            let state = snapshot.lock().unwrap_or_else(|e| e.into_inner()).state.clone();
                            refresh_snapshot(&primary, &snapshot, &state);
                        }
                        if next.is_some() && !paused { break }
                    }
                    _ = tokio::signal::ctrl_c() => break 'outer,
                    _ = term.recv() => break 'outer,
                }
            }
        }
        Ok(())
    });
    notify("STOPPING=1");
    tracing::info!("daemon stopped");
    result
}

fn state_target(state: &aktualizr_rs::primary::State) -> (String, String) {
    let p = &state.json["pending"];
    (
        p["target"].as_str().unwrap_or_default().to_owned(),
        p["sha256"].as_str().unwrap_or_default().to_owned(),
    )
}

fn run_approve(paths: &[PathBuf], op: aktualizr_rs::consent::Operation) -> anyhow::Result<()> {
    let config = aktualizr_rs::config::Config::load(paths)?;
    let what =
        aktualizr_rs::primary::approve(std::path::Path::new(config.str("storage.path")), op)?;
    println!("approved: {what}");
    Ok(())
}

fn run_reboot_if_pending(paths: &[PathBuf]) -> anyhow::Result<()> {
    use aktualizr_rs::service::{blocking_inhibitors, reboot_decision, RebootDecision};
    use anyhow::Context as _;
    let config = aktualizr_rs::config::Config::load(paths)?;
    let state =
        aktualizr_rs::primary::State::load(std::path::Path::new(config.str("storage.path")))?;
    let sysroot = config.sysroot();
    let deployments = aktualizr_rs_store::Store::open(&sysroot, config.os())
        .and_then(|s| s.deployments())
        .with_context(|| format!("reading the deployments of {}", sysroot.display()))?;
    let decision = reboot_decision(
        &config.reboot_sentinel(),
        state.json["pending"]["sha256"].as_str(),
        &deployments,
        &blocking_inhibitors(),
    );
    let decision = match decision {
        RebootDecision::Reboot => {
            // The reboot gate: approval and window.
            let storage = PathBuf::from(config.str("storage.path"));
            let mut state = state;
            let target = state_target(&state);
            match aktualizr_rs::primary::gate(
                &config,
                &mut state,
                aktualizr_rs::consent::Operation::Reboot,
                target,
            )? {
                Some(reason) => {
                    state.save(&storage)?;
                    RebootDecision::Skip(format!("waiting for {reason}"))
                }
                None => {
                    state.save(&storage)?;
                    RebootDecision::Reboot
                }
            }
        }
        skip => skip,
    };
    match decision {
        RebootDecision::Skip(why) => println!("not rebooting: {why}"),
        RebootDecision::Reboot => {
            let command = config.str("bootloader.reboot_command");
            println!("rebooting into the pending update: {command}");
            aktualizr_rs::service::run_reboot_command(command)?;
        }
    }
    Ok(())
}

fn run_info(paths: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let info = primary(paths)?.info()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("Device ID: {}", s(&info["device_id"]));
    println!("Primary ECU serial: {}", s(&info["primary_ecu_serial"]));
    println!(
        "Primary ECU hardware ID: {}",
        s(&info["primary_ecu_hardware_id"])
    );
    println!(
        "Registered: {}",
        if info["registered"] == true {
            "yes"
        } else {
            "no"
        }
    );
    let cur = &info["current"];
    println!(
        "Current image: {} ({})",
        s(&cur["target"]),
        s(&cur["commit"])
    );
    println!(
        "Pending image: {}",
        match &info["pending"] {
            serial_json @ serde_json::Value::Object(_) => format!(
                "{} ({})",
                s(&serial_json["target"]),
                s(&serial_json["sha256"])
            ),
            _ => "none".to_owned(),
        }
    );
    for repo in ["director", "image"] {
        let m = &info["metadata"][repo];
        println!(
            "{repo} metadata versions: root {} timestamp {} snapshot {} targets {}",
            s(&m["root"]),
            s(&m["timestamp"]),
            s(&m["snapshot"]),
            s(&m["targets"])
        );
    }
    println!("Last error: {}", s(&info["last_error"]));
    Ok(())
}

fn run_config(paths: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let config = aktualizr_rs::config::Config::load(paths)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let effective = config.effective();
    if json {
        let mut out = serde_json::Map::new();
        for (key, s) in effective {
            out.insert(
                key,
                serde_json::json!({
                    "value": s.value,
                    "source": s.source.map(|p| p.display().to_string()),
                }),
            );
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (key, s) in effective {
            let source = s
                .source
                .map_or_else(|| "default".to_owned(), |p| p.display().to_string());
            println!("{key} = {:?}    # {source}", s.value);
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The OSTree sysroot; default: `[pacman] sysroot` of the configuration, else `/`.
    #[arg(long)]
    sysroot: Option<PathBuf>,
    /// The OS name; default: `[pacman] os`, else the booted deployment's.
    #[arg(long)]
    os: Option<String>,
    /// The reboot sentinel; default: `[bootloader] reboot_sentinel_dir`/`reboot_sentinel_name`.
    #[arg(long)]
    reboot_sentinel: Option<PathBuf>,
    /// Print JSON (schema version 1, documented in the README) instead of text.
    #[arg(long)]
    json: bool,
}

fn run_status(args: StatusArgs, config_paths: &[PathBuf]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = aktualizr_rs::config::Config::load(config_paths)?;
    let sysroot = args.sysroot.unwrap_or_else(|| config.sysroot());
    let os = args.os.or_else(|| config.os().map(str::to_owned));
    let sentinel = args
        .reboot_sentinel
        .unwrap_or_else(|| config.reboot_sentinel());
    let store = aktualizr_rs_store::Store::open(&sysroot, os.as_deref())
        .with_context(|| format!("opening the OSTree sysroot {}", sysroot.display()))?;
    let status = aktualizr_rs::status::Status {
        os: store.os().to_owned(),
        deployments: store.deployments().context("listing deployments")?,
        reboot_pending: sentinel.exists(),
        waiting: aktualizr_rs::primary::State::load(std::path::Path::new(
            config.str("storage.path"),
        ))
        .ok()
        .and_then(|s| s.waiting()),
        daemon: runtime().ok().and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    aktualizr_rs::dbus::daemon_state(),
                )
                .await
                .ok()
                .flatten()
            })
        }),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status.to_json()).context("encoding JSON")?
        );
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

#[derive(Debug, Args)]
struct TufArgs {
    /// Directory of the trusted metadata.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// A target to download (repeatable, downloaded in order).
    #[arg(long)]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Directory to store downloaded targets in.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: TufAction,
}

#[derive(Debug, Subcommand)]
enum TufAction {
    /// Trust the given root metadata file (no network).
    Init {
        /// The root metadata to trust.
        trusted_root: PathBuf,
    },
    /// Refresh the top-level metadata.
    Refresh,
    /// Refresh, then download and verify each --target-name.
    Download,
}

/// Logs to journald (structured: every event field, such as `target`, becomes a journal
/// field) when systemd connected stderr to the journal (`$JOURNAL_STREAM`), else to stderr.
fn init_logging(level: u8) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::new(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("aktualizr-rs".to_owned()))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

fn run_tuf(args: TufArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let need = |v: Option<String>, flag: &str| {
        v.with_context(|| format!("{flag} is required for this action"))
    };
    match args.action {
        TufAction::Init { trusted_root } => tuf_client::init(&args.metadata_dir, &trusted_root),
        TufAction::Refresh => {
            let url = need(args.metadata_url, "--metadata-url")?;
            rt.block_on(tuf_client::refresh(&args.metadata_dir, &url))
        }
        TufAction::Download => {
            let url = need(args.metadata_url, "--metadata-url")?;
            let base = need(args.target_base_url, "--target-base-url")?;
            let dir = args
                .target_dir
                .context("--target-dir is required for download")?;
            rt.block_on(tuf_client::download(
                &args.metadata_dir,
                &url,
                &args.target_name,
                &base,
                &dir,
            ))
        }
    }
}

/// The hidden first argument that runs this binary as the image store's pull worker (the
/// daemon pulls in a child process it can kill when the treehub stalls).
pub const PULL_WORKER_ARG: &str = "__pull-worker";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == PULL_WORKER_ARG) {
        return aktualizr_rs_store::worker_main(args.collect());
    }
    let cli = Cli::parse();
    let level = cli.loglevel.unwrap_or_else(|| {
        aktualizr_rs::config::Config::load(&cli.config)
            .ok()
            .and_then(|c| u8::try_from(c.int("logger.loglevel")).ok())
            .unwrap_or(2)
            .min(5)
    });
    init_logging(level);
    let result = match cli.command {
        Command::Tuf(args) => run_tuf(args),
        Command::Status(args) => run_status(args, &cli.config),
        Command::Config { json } => run_config(&cli.config, json),
        Command::Once | Command::Install => run_cycle(&cli.config, Phase::Install),
        Command::Check => run_cycle(&cli.config, Phase::Check),
        Command::Download => run_cycle(&cli.config, Phase::Download),
        Command::Finalize => primary(&cli.config).and_then(|p| {
            let o = runtime()?.block_on(p.finalize_only())?;
            println!("{}", describe(&o));
            Ok(())
        }),
        Command::Daemon => run_daemon(&cli.config),
        Command::RebootIfPending => run_reboot_if_pending(&cli.config),
        Command::Approve { operation } => run_approve(&cli.config, operation),
        Command::Info { json } => run_info(&cli.config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aktualizr-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
