//! Test support: real `strom server` processes on 127.0.0.1 ports, killed and restarted at
//! will, and helpers that wait for conditions with a deadline instead of sleeping.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    overrides: Vec<String>,
    /// The open files limit (soft and hard) the server runs under, when set.
    open_files: Option<u64>,
    _tmp: Option<tempfile::TempDir>,
}

/// Why a server did not come up.
enum Failed {
    /// Its port was taken.
    AddrInUse(String),
    Other(String),
}

pub mod ports;
use ports::free_port;

impl Server {
    /// A fresh single-node server with its own data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// A fresh server with extra `key=value` settings.
    pub fn start_with(overrides: &[&str]) -> Server {
        Self::start_limited(None, overrides)
    }

    /// [`Server::start_with`], under an open files limit of `open_files` (soft and hard).
    pub fn start_limited(open_files: Option<u64>, overrides: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server {
            child: None,
            port: free_port(),
            dir: tmp.path().join("data"),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            open_files,
            _tmp: Some(tmp),
        };
        s.launch(true);
        s
    }

    /// Starts the server and waits until it listens. The free port may be taken between
    /// [`free_port`] and the server's bind: a fresh server (`new_port`) then tries another
    /// port, a restarted one (whose clients know its port) tries the same port again.
    fn launch(&mut self, new_port: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 1;
        loop {
            match self.try_launch(deadline) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(Failed::AddrInUse(why)) if attempt < 5 && Instant::now() < deadline => {
                    eprintln!(
                        "strom server: port {} taken (attempt {attempt}): {why}",
                        self.port
                    );
                    if new_port {
                        self.port = free_port();
                    } else {
                        // Whoever holds the port (a client's reconnect, often) lets go soon.
                        let port = self.port;
                        wait_for(
                            &format!("port {port} to be free"),
                            Duration::from_secs(10),
                            || {
                                std::net::TcpListener::bind(("127.0.0.1", port))
                                    .ok()
                                    .map(drop)
                            },
                        );
                    }
                    attempt += 1;
                }
                Err(Failed::AddrInUse(why)) | Err(Failed::Other(why)) => {
                    panic!("strom server on port {}: {why}", self.port)
                }
            }
        }
    }

    fn try_launch(&self, deadline: Instant) -> Result<Child, Failed> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strom"));
        cmd.arg("server")
            .arg("--override")
            .arg(format!("listeners=PLAINTEXT://127.0.0.1:{}", self.port))
            .arg("--override")
            .arg(format!("log.dirs={}", self.dir.display()));
        for o in &self.overrides {
            // `{port}` stands for the server's own port, which changes with each attempt.
            cmd.arg("--override")
                .arg(o.replace("{port}", &self.port.to_string()));
        }
        if let Some(n) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .env(
                "STROM_LOG",
                std::env::var("STROM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start strom server");
        // Ready once it says where it listens (after recovery). Both pipes are read to the
        // end so that the server never blocks on them; stderr is passed on and its last
        // lines kept for the report when the server does not come up.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_reader = {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 40 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        let tail_text = |tail: &Mutex<VecDeque<String>>| {
            let lines: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
            lines.join("\n")
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(child),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Its stdout closed: it is exiting; poll for that.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Exited: its stderr ends with it.
                let _ = stderr_reader.join();
                let text = tail_text(&tail);
                let why = format!("exited with {status} before listening; stderr:\n{text}");
                return Err(if text.contains("Address already in use") {
                    Failed::AddrInUse(why)
                } else {
                    Failed::Other(why)
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failed::Other(format!(
                    "did not start within 60 s; stderr:\n{}",
                    tail_text(&tail)
                )));
            }
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no flush, no clean shutdown marker.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("strom server did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.launch(false);
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
/// [`wait_for`], where a miss says why (`Err`): the last one is in the panic message.
pub fn wait_until<T, W: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, W>,
) -> T {
    let deadline = Instant::now() + timeout;
    // Checks here may start processes (a CLI describe): the interval grows to 200 ms so
    // that polling does not starve the servers it waits for.
    let mut interval = Duration::from_millis(10);
    loop {
        let why = match f() {
            Ok(v) => return v,
            Err(why) => why,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {why:?}");
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `strom ARGS --bootstrap-server <server>` with `stdin`.
pub fn run(server: &Server, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .args(["--bootstrap-server", &server.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// [`run`] that must succeed; its standard output.
pub fn ok_with(server: &Server, args: &[&str], stdin: &str) -> String {
    let out = run(server, args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn ok(server: &Server, args: &[&str]) -> String {
    ok_with(server, args, "")
}

/// [`run`] that must fail; its standard error.
pub fn fails(server: &Server, args: &[&str]) -> String {
    let out = run(server, args, "");
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Runs `f` on a two-worker tokio runtime (our client's background tasks beside the test's
/// own) with a client of `server` connected as `client_id`.
pub fn with_client<F, Fut>(server: &Server, client_id: &str, f: F) -> Fut::Output
where
    F: FnOnce(Arc<strom_client::Client>) -> Fut,
    Fut: std::future::Future,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client =
            strom_client::Client::connect(&server.bootstrap(), client_id, Duration::from_secs(30))
                .await
                .unwrap();
        f(Arc::new(client)).await
    })
}
