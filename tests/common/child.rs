//! Child processes of the interop tests (`rvhost fwd`, DPDK testpmd): stdout and stderr read
//! line by line on threads (so a test can wait for a line), stdin kept open, and the process
//! killed (SIGKILL) and reaped when the handle is dropped, panics included.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
}

impl Lines {
    fn reader(self: &Arc<Self>, src: impl Read + Send + 'static) {
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(src).lines() {
                let Ok(line) = line else { break };
                me.lines.lock().unwrap().push(line);
                me.cv.notify_all();
            }
        });
    }

    fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        let mut from = 0;
        loop {
            if let Some(l) = lines[from..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            from = lines.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// A running child process. See the module docs.
pub struct Child {
    name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    out: Arc<Lines>,
    err: Arc<Lines>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Child {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let out = Arc::new(Lines::default());
        let err = Arc::new(Lines::default());
        out.reader(child.stdout.take().expect("piped stdout"));
        err.reader(child.stderr.take().expect("piped stderr"));
        Child {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            out,
            err,
            status: None,
        }
    }

    /// Lines printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.out.lines.lock().unwrap().clone()
    }

    /// Lines printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.lines.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a stdout line matching `pred`.
    pub fn wait_stdout(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.out.wait(timeout, pred)
    }

    /// Waits up to `timeout` for a stderr line matching `pred`.
    pub fn wait_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.err.wait(timeout, pred)
    }

    /// Writes to the child's stdin.
    pub fn send_stdin(&mut self, bytes: &[u8]) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(bytes);
            let _ = s.flush();
        }
    }

    /// Sends `sig` to the child (if it still runs).
    pub fn signal(&mut self, sig: Signal) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status
    }

    /// Waits up to `timeout` for a script that stops what it started on SIGTERM (the QEMU
    /// scripts); past it, sends SIGTERM, gives it 20 s and panics naming `what`, with the
    /// last `tail` lines of its output.
    pub fn wait_script(&mut self, timeout: Duration, what: &str, tail: usize) -> ExitStatus {
        if let Some(status) = self.wait_exit(timeout) {
            return status;
        }
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(20));
        panic!(
            "{what}: the script did not finish in {} s\n{}",
            timeout.as_secs(),
            self.tail(tail)
        );
    }

    /// The last `n` lines of stdout and stderr, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let part = |l: &Lines| {
            let lines = l.lines.lock().unwrap();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "---- {} stdout ----\n{}\n---- {} stderr ----\n{}",
            self.name,
            part(&self.out),
            self.name,
            part(&self.err)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `rvhost` binary of this build.
pub fn rvhost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rvhost"))
}

/// One `FINAL` line of `rvhost fwd`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Final {
    pub rx_pkts: u64,
    pub tx_pkts: u64,
    pub tx_drops: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The `key=value` fields of line `l` after `prefix`, if it starts so.
fn fields<'a>(l: &'a str, prefix: &str) -> Option<HashMap<&'a str, &'a str>> {
    let rest = l.strip_prefix(prefix)?;
    Some(
        rest.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .collect(),
    )
}

/// Field `k` of line `l` as a number (panics if absent or not one).
fn num(kv: &HashMap<&str, &str>, k: &str, l: &str) -> u64 {
    kv.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{k} missing in {l:?}"))
}

/// The counters of a `FINAL` or `FINAL-QUEUE` line.
fn counts(kv: &HashMap<&str, &str>, l: &str) -> Final {
    Final {
        rx_pkts: num(kv, "rx_pkts", l),
        tx_pkts: num(kv, "tx_pkts", l),
        tx_drops: num(kv, "tx_drops", l),
        rx_bytes: num(kv, "rx_bytes", l),
        tx_bytes: num(kv, "tx_bytes", l),
    }
}

/// Parses the `FINAL port=N ...` lines.
pub fn parse_final(lines: &[String]) -> HashMap<usize, Final> {
    let mut out = HashMap::new();
    for l in lines {
        let Some(kv) = fields(l, "FINAL ") else {
            continue;
        };
        for k in ["rx_mpps", "tx_mpps"] {
            let v = kv.get(k).unwrap_or_else(|| panic!("{k} missing in {l:?}"));
            assert!(
                v.parse::<f64>().is_ok() && v.split_once('.').is_some_and(|(_, d)| d.len() == 3)
            );
        }
        out.insert(num(&kv, "port", l) as usize, counts(&kv, l));
    }
    out
}

/// Stops `rvhost fwd` with SIGINT and returns its FINAL counters of port 0 (it must exit 0
/// within 10 s).
pub fn stop_rvhost(rv: &mut Child) -> Final {
    rv.signal(Signal::SIGINT);
    let st = rv.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "rvhost did not exit cleanly on SIGINT: {st:?}\n{}",
        rv.tail(40)
    );
    let finals = parse_final(&rv.stdout());
    *finals
        .get(&0)
        .unwrap_or_else(|| panic!("no FINAL line for port 0\n{}", rv.tail(40)))
}

/// The `FINAL-QUEUE port=P queue=Q ...` lines of `rvhost fwd --queues N` (N > 1), by
/// (port, queue).
pub fn parse_final_queues(lines: &[String]) -> HashMap<(usize, usize), Final> {
    let mut out = HashMap::new();
    for l in lines {
        let Some(kv) = fields(l, "FINAL-QUEUE ") else {
            continue;
        };
        let at = (num(&kv, "port", l) as usize, num(&kv, "queue", l) as usize);
        out.insert(at, counts(&kv, l));
    }
    out
}

/// Waits until a socket file exists at `path`.
pub fn wait_for_socket(path: &std::path::Path, timeout: Duration) -> bool {
    use std::os::unix::fs::FileTypeExt;
    super::eventually(timeout, || {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
    })
}
