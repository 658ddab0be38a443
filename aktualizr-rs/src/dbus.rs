//! The daemon's D-Bus API (zbus), on the system bus (`$DBUS_SYSTEM_BUS_ADDRESS` when set).
//!
//! Bus name [`BUS_NAME`], object [`OBJECT_PATH`], interface `org.aktualizr_rs.Client1`:
//! - properties (read): `State` (s: idle, checking, downloading, installing, waiting, paused,
//!   reboot-pending, error), `CurrentTarget` (s), `PendingTarget` (s), `NeedReboot` (b),
//!   `LastError` (s), `Waiting` (s: what the client waits for), `Progress` (u: overall %);
//! - methods: `CheckNow()`, `Download()`, `Install()`, `Pause()`, `Resume()`, `Abort()`,
//!   `Approve(s operation)` (download, install or reboot);
//! - signals: `StateChanged(s state)`, `Progress(u overall, s phase, u phase_percent)`.
//!
//! Methods only queue a command for the daemon's main loop ([`Command`]); the loop owns the
//! update cycle and the persisted state. `systemd/org.aktualizr_rs.Client.conf` is the bus
//! policy: root (and the group `aktualizr`) may call methods, everyone may read properties.

use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.aktualizr_rs.Client";
/// The object path.
pub const OBJECT_PATH: &str = "/org/aktualizr_rs/Client";

/// What a D-Bus method asks the main loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a check-only cycle now.
    CheckNow,
    /// Run a cycle up to the download now.
    Download,
    /// Run a full cycle now.
    Install,
    /// Stop starting cycles (a running one is aborted).
    Pause,
    /// Start cycles again.
    Resume,
    /// Abort the running cycle.
    Abort,
    /// Approve a gated operation.
    Approve(crate::consent::Operation),
}

/// What the properties show; the main loop updates it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The state word.
    pub state: String,
    /// The current target (name or commit).
    pub current_target: String,
    /// The pending target, if any.
    pub pending_target: String,
    /// Whether the reboot sentinel exists.
    pub need_reboot: bool,
    /// The last error.
    pub last_error: String,
    /// What the client waits for.
    pub waiting: String,
    /// Overall progress, percent.
    pub progress: u32,
}

/// The D-Bus object.
#[derive(Debug)]
pub struct Client {
    snapshot: Arc<Mutex<Snapshot>>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
}

impl Client {
    /// An object showing `snapshot` and sending commands to `commands`.
    pub fn new(
        snapshot: Arc<Mutex<Snapshot>>,
        commands: tokio::sync::mpsc::UnboundedSender<Command>,
    ) -> Client {
        Client { snapshot, commands }
    }

    fn send(&self, c: Command) -> zbus::fdo::Result<()> {
        self.commands
            .send(c)
            .map_err(|_| zbus::fdo::Error::Failed("the daemon is stopping".into()))
    }

    fn get<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        let s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        f(&s)
    }
}

#[zbus::interface(name = "org.aktualizr_rs.Client1")]
impl Client {
    /// Check for updates now (verification only).
    async fn check_now(&self) -> zbus::fdo::Result<()> {
        self.send(Command::CheckNow)
    }

    /// Check and download now.
    async fn download(&self) -> zbus::fdo::Result<()> {
        self.send(Command::Download)
    }

    /// Check, download and install now.
    async fn install(&self) -> zbus::fdo::Result<()> {
        self.send(Command::Install)
    }

    /// Pause: no cycles until Resume (a running one is aborted).
    async fn pause(&self) -> zbus::fdo::Result<()> {
        self.send(Command::Pause)
    }

    /// Resume after Pause.
    async fn resume(&self) -> zbus::fdo::Result<()> {
        self.send(Command::Resume)
    }

    /// Abort the running cycle (a download in progress is stopped).
    async fn abort(&self) -> zbus::fdo::Result<()> {
        self.send(Command::Abort)
    }

    /// Approve a gated operation: download, install or reboot.
    async fn approve(&self, operation: &str) -> zbus::fdo::Result<()> {
        let op = operation
            .parse()
            .map_err(|e: String| zbus::fdo::Error::InvalidArgs(e))?;
        self.send(Command::Approve(op))
    }

    /// The state word.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.get(|s| s.state.clone())
    }

    /// The current target.
    #[zbus(property)]
    async fn current_target(&self) -> String {
        self.get(|s| s.current_target.clone())
    }

    /// The pending target ("" when none).
    #[zbus(property)]
    async fn pending_target(&self) -> String {
        self.get(|s| s.pending_target.clone())
    }

    /// Whether a reboot is needed to finish an update.
    #[zbus(property)]
    async fn need_reboot(&self) -> bool {
        self.get(|s| s.need_reboot)
    }

    /// The last error ("" when none).
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.get(|s| s.last_error.clone())
    }

    /// What the client waits for ("" when nothing).
    #[zbus(property)]
    async fn waiting(&self) -> String {
        self.get(|s| s.waiting.clone())
    }

    /// Overall progress of the running cycle, percent.
    #[zbus(property)]
    async fn progress(&self) -> u32 {
        self.get(|s| s.progress)
    }

    /// The state changed (D-Bus name StateChanged; `state_changed` is zbus's own
    /// PropertiesChanged helper for the State property).
    #[zbus(signal, name = "StateChanged")]
    pub async fn state_changed_signal(emitter: &SignalEmitter<'_>, state: &str)
        -> zbus::Result<()>;

    /// Progress: overall percent, the phase and its own percent.
    #[zbus(signal, name = "Progress")]
    pub async fn progress_update(
        emitter: &SignalEmitter<'_>,
        overall: u32,
        phase: &str,
        phase_percent: u32,
    ) -> zbus::Result<()>;
}

/// Connects to the system bus, serves the object and takes the name.
pub async fn serve(client: Client) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()?
        .name(BUS_NAME)?
        .serve_at(OBJECT_PATH, client)?
        .build()
        .await
}

/// Emits StateChanged (errors logged: a bus hiccup must not stop updates).
pub async fn emit_state(conn: &zbus::Connection, state: &str) {
    let sent = async {
        let emitter = SignalEmitter::new(conn, OBJECT_PATH)?;
        Client::state_changed_signal(&emitter, state).await
    };
    if let Err(e) = sent.await {
        tracing::debug!("D-Bus StateChanged: {e}");
    }
}

/// Emits the Progress signal.
pub async fn emit_progress(conn: &zbus::Connection, overall: u32, phase: &str, percent: u32) {
    let sent = async {
        let emitter = SignalEmitter::new(conn, OBJECT_PATH)?;
        Client::progress_update(&emitter, overall, phase, percent).await
    };
    if let Err(e) = sent.await {
        tracing::debug!("D-Bus Progress: {e}");
    }
}

/// The `State` property of a running daemon, if one answers on the system bus.
pub async fn daemon_state() -> Option<String> {
    let conn = zbus::Connection::system().await.ok()?;
    let proxy = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(BUS_NAME)
        .ok()?
        .path(OBJECT_PATH)
        .ok()?
        .build()
        .await
        .ok()?;
    let iface = zbus::names::InterfaceName::try_from("org.aktualizr_rs.Client1").ok()?;
    let v = proxy.get(iface, "State").await.ok()?;
    String::try_from(v).ok()
}
