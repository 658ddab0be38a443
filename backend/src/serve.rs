//! `uptane-repo serve`: HTTPS on 127.0.0.1 with client certificates required, serving the
//! Director (per device, chosen by the certificate's CN), the Image repository, the treehub
//! and the device API. Everything a device sends is appended to `devices/ID/log.jsonl`.

use std::convert::Infallible;
use std::future::Future as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::repo::Backend;

/// Fault switches for tests.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Wait this long before every response.
    pub delay: Option<Duration>,
    /// Cut file responses (treehub, Image targets) after this many bytes and drop the
    /// connection.
    pub drop_after_bytes: Option<usize>,
    /// Flip the last byte of every treehub content object (`.filez`) served.
    pub corrupt_treehub_objects: bool,
    /// Serve each device's previous Director targets version (a replay).
    pub old_director_targets: bool,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct Options {
    /// The port (0: any free port).
    pub port: u16,
    /// Serve only root and targets from the Director, as aktualizr's servers do.
    pub director_root_and_targets_only: bool,
    /// Fault switches.
    pub faults: Faults,
    /// Append one line per request here: `DEVICE METHOD PATH STATUS REQUEST_BYTES
    /// RESPONSE_BYTES` (bodies only; for measuring what a client costs).
    pub access_log: Option<PathBuf>,
}

struct State {
    dir: PathBuf,
    opts: Options,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn response(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    response(
        code,
        json!({"code": code.as_u16(), "description": message}).to_string(),
        "application/json",
    )
}

/// A body that sends `data`, waits a moment (so the bytes reach the client), then fails,
/// which makes hyper drop the connection.
struct Truncated {
    data: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Truncated {
    fn new(data: Bytes) -> Truncated {
        Truncated {
            data: Some(data),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        }
    }
}

impl hyper::body::Body for Truncated {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other(
                "fault switch: connection dropped",
            )))),
        }
    }
}

/// The TLS configuration: the server identity, and client certificates required from the
/// backend CA.
fn tls_config(dir: &Path) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = |rel: &str| dir.join(rel);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem("pki/ca.pem"))
        .with_context(|| format!("reading {}", pem("pki/ca.pem").display()))?
    {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain =
        CertificateDer::pem_file_iter(pem("pki/server.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pem("pki/server.key"))
        .with_context(|| format!("reading {}", pem("pki/server.key").display()))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}

/// Serves until SIGINT or SIGTERM. Writes the URL to `DIR/serve.url` once listening.
pub async fn serve(dir: &Path, opts: Options) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(dir)?));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{}", opts.port))?;
    let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    crate::repo::write_bytes(&dir.join("serve.url"), url.as_bytes())?;
    eprintln!("uptane-repo: serving {} on {url}", dir.display());
    let state = Arc::new(State {
        dir: dir.to_owned(),
        opts,
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            // No valid client certificate: the handshake fails and nothing is served.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let device = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::pki::common_name(c));
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let device = device.clone();
                async move {
                    let line = state.opts.access_log.as_ref().map(|_| {
                        let len = req
                            .headers()
                            .get(hyper::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0")
                            .to_owned();
                        format!(
                            "{} {} {} {len}",
                            device.as_deref().unwrap_or("-"),
                            req.method(),
                            req.uri().path()
                        )
                    });
                    let response = handle(&state, device.as_deref(), req).await;
                    if let (Some(path), Some(line)) = (&state.opts.access_log, line) {
                        let out = hyper::body::Body::size_hint(response.body())
                            .exact()
                            .unwrap_or(0);
                        let entry = format!("{line} {} {out}\n", response.status().as_u16());
                        if let Err(e) = aktualizr_rs_fsutil::append_synced(path, entry.as_bytes()) {
                            eprintln!("uptane-repo: access log {}: {e}", path.display());
                        }
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
    eprintln!("uptane-repo: stopped");
    Ok(())
}

/// The request path as decoded segments; None when a segment is `.`/`..` or not UTF-8.
fn segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for s in path.split('/').filter(|s| !s.is_empty()) {
        let s = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
        if s == "." || s == ".." || s.contains('/') && s.split('/').any(|p| p == "..") {
            return None;
        }
        out.push(s.into_owned());
    }
    Some(out)
}

async fn handle(state: &State, device: Option<&str>, req: Request<Incoming>) -> Response<Body> {
    if let Some(d) = state.opts.faults.delay {
        tokio::time::sleep(d).await;
    }
    let Some(device) = device else {
        return status(StatusCode::FORBIDDEN, "no client certificate");
    };
    let Some(segs) = segments(req.uri().path()) else {
        return status(StatusCode::BAD_REQUEST, "bad path");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return get(state, device, &segs, &req);
    }
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE, "more than 1 MiB"),
    };
    match device_api(state, device, &method, &segs, &path, &content_type, &body) {
        Ok(r) => r,
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

fn get(state: &State, device: &str, segs: &[&str], req: &Request<Incoming>) -> Response<Body> {
    let dir = &state.dir;
    let faults = &state.opts.faults;
    let file = match segs {
        ["director", name] if name.ends_with(".root.json") || *name == "root.json" => {
            dir.join("director").join(name)
        }
        ["director", "timestamp.json" | "snapshot.json"]
            if state.opts.director_root_and_targets_only =>
        {
            return status(
                StatusCode::NOT_FOUND,
                "this Director serves only root and targets",
            );
        }
        ["director", name @ ("timestamp.json" | "snapshot.json")] => {
            dir.join("director/devices").join(device).join(name)
        }
        ["director", "targets.json"] => {
            let d = dir.join("director/devices").join(device);
            if faults.old_director_targets {
                let v = Backend::version_of(&d.join("targets.json"));
                d.join(format!("{}.targets.json", v.saturating_sub(1).max(1)))
            } else {
                d.join("targets.json")
            }
        }
        ["repo", rest @ ..] if !rest.is_empty() => {
            rest.iter().fold(dir.join("repo"), |p, s| p.join(s))
        }
        ["treehub", rest @ ..] if !rest.is_empty() => {
            rest.iter().fold(dir.join("treehub"), |p, s| p.join(s))
        }
        _ => return status(StatusCode::NOT_FOUND, "no such resource"),
    };
    let Ok(mut bytes) = std::fs::read(&file) else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let is_file_payload =
        matches!(segs.first(), Some(&"treehub")) || segs.get(1) == Some(&"targets");
    if faults.corrupt_treehub_objects
        && segs[0] == "treehub"
        && file.extension().is_some_and(|e| e == "filez")
    {
        if let Some(last) = bytes.last_mut() {
            *last ^= 0xff;
        }
    }
    let content_type = if file.extension().is_some_and(|e| e == "json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    // Range: bytes=N- (resumed downloads).
    let range_start = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let total = bytes.len();
    let (code, body) = match range_start {
        Some(start) if start < total => (StatusCode::PARTIAL_CONTENT, bytes.split_off(start)),
        Some(_) if total > 0 => return status(StatusCode::RANGE_NOT_SATISFIABLE, "range"),
        _ => (StatusCode::OK, bytes),
    };
    let len = body.len();
    let mut r = match faults.drop_after_bytes {
        Some(n) if is_file_payload && n < len => {
            let cut = Bytes::from(body).slice(..n);
            Response::new(Truncated::new(cut).boxed())
        }
        _ => Response::new(full(body)),
    };
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_LENGTH, len.into());
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    if code == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {}-{}/{total}", total - len, total - 1).parse() {
            h.insert(hyper::header::CONTENT_RANGE, v);
        }
    }
    r
}

/// Appends one received request to the device's log.
fn log(dir: &Path, device: &str, method: &Method, path: &str, body: &Value) -> Result<()> {
    let entry = json!({
        "time": aktualizr_rs_metadata::Timestamp::now().to_string(),
        "method": method.as_str(),
        "path": path,
        "body": body,
    });
    let mut line = serde_json::to_vec(&entry)?;
    line.push(b'\n');
    let d = dir.join("devices").join(device);
    std::fs::create_dir_all(&d)?;
    aktualizr_rs_fsutil::append_synced(&d.join("log.jsonl"), &line)?;
    Ok(())
}

fn device_api(
    state: &State,
    device: &str,
    method: &Method,
    segs: &[&str],
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>> {
    let known = matches!(
        (method.as_str(), segs),
        ("PUT", ["director", "manifest"])
            | ("POST", ["director", "ecus"])
            | ("POST", ["devices"])
            | ("POST", ["events"])
            | ("PUT", ["system_info"])
            | ("PUT", ["system_info", "network"])
            | ("PUT", ["core", "installed"])
            | ("POST", ["system_info", "config"])
    );
    if !known {
        return Ok(status(StatusCode::NOT_FOUND, "no such endpoint"));
    }
    let json_body: Option<Value> = serde_json::from_slice(body).ok();
    // Everything is JSON but the configuration report (application/toml).
    let must_be_json =
        content_type.starts_with("application/json") || segs != ["system_info", "config"];
    if must_be_json && json_body.is_none() {
        return Ok(status(StatusCode::BAD_REQUEST, "the body is not JSON"));
    }
    let logged = json_body
        .clone()
        .unwrap_or_else(|| json!({"text": String::from_utf8_lossy(body)}));
    log(&state.dir, device, method, path, &logged)?;
    let dir = &state.dir;
    match segs {
        ["director", "manifest"] => {
            crate::repo::write_json(
                &dir.join("devices").join(device).join("manifest.json"),
                &logged,
            )?;
        }
        ["director", "ecus"] => {
            let backend = Backend::open(dir)?;
            let mut record = backend
                .device(device)
                .unwrap_or_else(|_| json!({"device_id": device}));
            record["primary_ecu_serial"] = logged["primary_ecu_serial"].clone();
            record["ecus"] = logged["ecus"].clone();
            backend.save_device(device, &record)?;
            if !backend
                .director_device_dir(device)
                .join("targets.json")
                .exists()
            {
                backend.assign(device, None)?;
            }
        }
        ["devices"] => return register_device(dir, &logged),
        _ => {}
    }
    Ok(response(StatusCode::OK, "{}", "application/json"))
}

/// `POST /devices` (shared-credential provisioning): issues the device's own certificate and
/// returns it, its key and the CA as PKCS#12 (no password), as aktualizr expects.
fn register_device(dir: &Path, body: &Value) -> Result<Response<Body>> {
    let Some(id) = body["deviceId"].as_str() else {
        return Ok(status(StatusCode::BAD_REQUEST, "deviceId missing"));
    };
    if crate::check_device_id(id).is_err() {
        return Ok(status(StatusCode::BAD_REQUEST, "bad deviceId"));
    }
    let backend = Backend::open(dir)?;
    if backend.device(id).is_ok() {
        return Ok(response(
            StatusCode::CONFLICT,
            json!({"code": "device_already_registered"}).to_string(),
            "application/json",
        ));
    }
    let p12 = crate::provision_p12(&backend, id)?;
    Ok(response(StatusCode::OK, p12, "application/x-pkcs12"))
}

/// The records of a device's log, oldest first (a cut-short last line is skipped).
pub fn device_log(dir: &Path, device: &str) -> Result<Vec<Value>> {
    let path = dir.join("devices").join(device).join("log.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
