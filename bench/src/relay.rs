//! Starting and stopping the relays under test, each fresh on a fresh queue directory:
//! exorelay (the release binary, production defaults) and a private Postfix instance (its own
//! configuration, queue and data directories; defaults but for what a private loopback
//! instance needs). Also the process-tree RSS sampler and free-port helper.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a relay may take to start or stop.
const START_STOP: Duration = Duration::from_secs(60);

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Connects to `127.0.0.1:port` and reads a `220` greeting within `limit`.
pub fn greeting(port: u16, limit: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(limit));
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Ok(n) if n >= 3 && &buf[..3] == b"220")
}

/// Extra settings for special runs (idle connections, big message, STARTTLS to the sink).
#[derive(Debug, Default, Clone)]
pub struct ExoExtra {
    /// Lines added to `[server]`.
    pub server: String,
    /// Whether to deliver to the sink (false: upstream is a closed port).
    pub upstream_closed: bool,
    /// STARTTLS to the sink (`tls = "required"`) trusting this CA file; plaintext when `None`.
    pub upstream_ca: Option<PathBuf>,
}

/// A running exorelay.
pub struct Exorelay {
    child: Option<Child>,
    /// Its SMTP port.
    pub port: u16,
    /// Its working directory (config, spool, log).
    pub dir: PathBuf,
    /// Time from spawn to the `listening on` log line.
    pub to_listening: Duration,
    /// Time from spawn to the first `220` greeting.
    pub to_greeting: Duration,
    /// When the process was spawned.
    pub started: Instant,
}

impl Exorelay {
    /// Writes the configuration into `dir` (spool `dir/spool`) and starts the binary.
    pub fn start(
        bin: &Path,
        dir: &Path,
        sink_port: u16,
        extra: &ExoExtra,
    ) -> anyhow::Result<Exorelay> {
        let port = free_port()?;
        let upstream_port = if extra.upstream_closed {
            free_port()?
        } else {
            sink_port
        };
        // With TLS the certificate is checked against a DNS name, as for EXO's MX host (the
        // sink's certificate carries both `localhost` and `127.0.0.1`).
        let upstream_tls = match &extra.upstream_ca {
            Some(ca) => format!(
                "tls = \"required\"\nserver_name = \"localhost\"\nca_file = \"{}\"\n",
                ca.display()
            ),
            None => "tls = \"none\"\n".into(),
        };
        let config = format!(
            "# Written by relay-bench: production defaults except the loopback addresses.\n\
             [server]\n\
             listen = [\"127.0.0.1:{port}\"]\n\
             hostname = \"relay.bench\"\n\
             {server}\n\
             [[client]]\n\
             name = \"bench\"\n\
             networks = [\"127.0.0.0/8\"]\n\
             \n\
             [[upstream]]\n\
             name = \"sink\"\n\
             host = \"127.0.0.1\"\n\
             port = {upstream_port}\n\
             {upstream_tls}\
             \n\
             [queue]\n\
             dir = \"spool\"\n",
            server = extra.server,
        );
        let config_path = dir.join("relay.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("exorelay.log"))?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut relay = Exorelay {
            child: Some(child),
            port,
            dir: dir.to_owned(),
            to_listening: Duration::ZERO,
            to_greeting: Duration::ZERO,
            started,
        };
        let deadline = started + START_STOP;
        let log_path = dir.join("exorelay.log");
        let mut listening = None;
        loop {
            if listening.is_none()
                && std::fs::read_to_string(&log_path)
                    .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")))
            {
                listening = Some(started.elapsed());
            }
            if greeting(port, Duration::from_millis(500)) {
                relay.to_greeting = started.elapsed();
                break;
            }
            if let Some(child) = relay.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "exorelay exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "exorelay did not greet within {START_STOP:?}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        relay.to_listening = listening.unwrap_or(relay.to_greeting);
        Ok(relay)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then SIGKILL if it has not exited within the deadline.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + START_STOP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits (at most `limit`) for a log line containing `needle`; the time since spawn.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("exorelay.log")).unwrap_or_default()
    }
}

impl Drop for Exorelay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The service table of the private instance (shared with the interop tests): an smtpd on
/// `{SMTPD}` plus what a relaying Postfix uses, nothing chrooted.
const MASTER_CF: &str = include_str!("../postfix-master.cf");
/// The basics of the instance's `main.cf`, shared with the interop tests; `{ROOT}` is its
/// directory.
const MAIN_CF: &str = include_str!("../postfix-main.cf");

/// A running private Postfix instance.
pub struct Postfix {
    config_dir: PathBuf,
    queue_dir: PathBuf,
    /// Its smtpd port.
    pub port: u16,
    running: bool,
}

impl Postfix {
    /// Configures an instance in `dir` relaying everything to the sink and starts it; with
    /// `tls_ca`, its smtp client must use STARTTLS to the sink (`smtp_tls_security_level =
    /// encrypt`, this CA file).
    pub fn start(
        postfix: &Path,
        dir: &Path,
        sink_port: u16,
        tls_ca: Option<&Path>,
    ) -> anyhow::Result<Postfix> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let config_dir = dir.join("etc");
        let queue_dir = dir.join("queue");
        let data_dir = dir.join("data");
        for d in [&config_dir, &queue_dir, &data_dir] {
            std::fs::create_dir_all(d)?;
        }
        let status = Command::new("chown")
            .arg("postfix")
            .arg(&data_dir)
            .status()?;
        if !status.success() {
            bail!("chown postfix {} failed", data_dir.display());
        }
        let port = free_port()?;
        let mut main_cf = MAIN_CF.replace("{ROOT}", &dir.display().to_string());
        main_cf.push_str(&format!(
            "# relay-bench: everything goes to the sink.\n\
             myhostname = postfix.bench\n\
             mydestination =\n\
             relayhost = [127.0.0.1]:{sink_port}\n"
        ));
        if let Some(ca) = tls_ca {
            // `encrypt`: mandatory TLS; the chain is checked against the CA file but a failure
            // would not stop delivery, and no name is matched (`verify` would match the
            // nexthop, here an IP literal). Loglevel 0 as by default: 1 adds a maillog line per
            // connection ("Trusted TLS connection established …").
            main_cf.push_str(&format!(
                "smtp_tls_security_level = encrypt\n\
                 smtp_tls_CAfile = {}\n\
                 smtp_tls_loglevel = 0\n",
                ca.display()
            ));
        }
        std::fs::write(config_dir.join("main.cf"), main_cf)?;
        std::fs::write(
            config_dir.join("master.cf"),
            MASTER_CF.replace("{SMTPD}", &format!("127.0.0.1:{port}")),
        )?;
        let mut instance = Postfix {
            config_dir,
            queue_dir,
            port,
            running: false,
        };
        for arg in ["check", "start"] {
            let out = Command::new(postfix)
                .arg("-c")
                .arg(&instance.config_dir)
                .arg(arg)
                .output()?;
            if !out.status.success() {
                bail!(
                    "postfix {arg} failed: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
                );
            }
        }
        instance.running = true;
        let deadline = Instant::now() + START_STOP;
        while !greeting(port, Duration::from_millis(500)) {
            if Instant::now() > deadline {
                bail!("Postfix's smtpd did not greet on port {port}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(instance)
    }

    /// The master process's id (from `queue/pid/master.pid`).
    pub fn master_pid(&self) -> u32 {
        std::fs::read_to_string(self.queue_dir.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `postfix stop`, waiting for the master to go; `postfix abort` if it lingers.
    pub fn stop(&mut self, postfix: &Path) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = self.master_pid();
        let _ = Command::new(postfix)
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .output();
        let deadline = Instant::now() + START_STOP;
        while pid != 0 && Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                let _ = Command::new(postfix)
                    .arg("-c")
                    .arg(&self.config_dir)
                    .arg("abort")
                    .output();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children (smtp, smtpd…) exit on their own shortly after the master; give them a
        // bounded moment so they do not overlap the next run.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid != 0 && !descendants(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `pid`'s live descendants (not `pid` itself), from the parent ids in `/proc/*/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..." — comm may contain spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// Clock ticks per second of the CPU times in `/proc/PID/stat`: Linux's USER_HZ, which is 100
/// on every architecture it exports to user space (`getconf CLK_TCK`).
pub const USER_HZ: u64 = 100;

/// CPU time (user + system, including reaped children) of `pid` and, when `tree`, of its
/// live descendants, in clock ticks ([`USER_HZ`] per second).
pub fn cpu_ticks(pid: u32, tree: bool) -> u64 {
    let one = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit_once(')')?.1;
                // After the comm: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
                let f: Vec<u64> = rest
                    .split_ascii_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some(f.iter().sum())
            })
            .unwrap_or(0)
    };
    let mut total = one(pid);
    if tree {
        total += descendants(pid).into_iter().map(one).sum::<u64>();
    }
    total
}

/// VmRSS of one process in KiB (0 when gone), from `/proc/PID/status` (cheap to read).
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

/// Pss (proportional set size: shared pages divided among their users) of one process in KiB,
/// from `/proc/PID/smaps_rollup` (the kernel walks the page tables to answer: costly).
fn pss_kib(pid: u32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The KiB value of the line starting with `key` in `/proc/PID/FILE` (0 when gone or absent).
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_ascii_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Pss is read on every this many RSS samples (and whenever the RSS reaches a new peak).
pub const PSS_EVERY: u32 = 4;

/// Samples the RSS of a process (tree) periodically and keeps the peaks of RSS and Pss.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    peak_pss: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid` (and its descendants when `tree`): VmRSS every `every`, Pss every
    /// [`PSS_EVERY`]th sample and whenever the RSS sum sets a new peak (so the tick of the
    /// RSS peak also has its Pss).
    pub fn start(pid: u32, tree: bool, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let peak_pss = Arc::new(AtomicU64::new(0));
        let (s, p, q) = (stop.clone(), peak.clone(), peak_pss.clone());
        let thread = std::thread::spawn(move || {
            let mut tick = 0u32;
            while !s.load(Ordering::Relaxed) {
                let mut pids = vec![pid];
                if tree {
                    pids.extend(descendants(pid));
                }
                let rss: u64 = pids.iter().map(|&p| rss_kib(p)).sum();
                let new_peak = rss > p.fetch_max(rss, Ordering::Relaxed);
                if new_peak || tick.is_multiple_of(PSS_EVERY) {
                    let pss: u64 = pids.iter().map(|&p| pss_kib(p)).sum();
                    q.fetch_max(pss, Ordering::Relaxed);
                }
                tick = tick.wrapping_add(1);
                std::thread::sleep(every);
            }
        });
        RssSampler {
            stop,
            peak,
            peak_pss,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peak RSS in KiB.
    pub fn finish(self) -> u64 {
        self.finish_both().0
    }

    /// Stops sampling and returns the peaks of RSS and Pss in KiB.
    pub fn finish_both(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::Relaxed),
            self.peak_pss.load(Ordering::Relaxed),
        )
    }
}
