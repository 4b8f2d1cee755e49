//! The agent under test: started with the bench's policies on the "on"
//! cgroup, stopped with SIGTERM, its log read for readiness, reloads and
//! the final counters.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const READY: &str = "modelgate ready";
const FINAL_COUNTERS: &str = "final counters";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Paths<'a> {
    pub bin: &'a Path,
    pub policies: &'a Path,
    pub cgroup: &'a Path,
    pub events: &'a Path,
    pub state_dir: &'a Path,
    pub log: &'a Path,
    /// `--config FILE`, when the bench needs settings beyond the flags.
    pub config: Option<&'a Path>,
    /// `--upstream-ca FILE`: the CA of the bench's stand-in model server.
    pub upstream_ca: Option<&'a Path>,
    /// The one CPU the agent may run on.
    pub cpu: Option<usize>,
}

/// A running agent; dropping it stops it (SIGTERM, then SIGKILL).
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    /// How to remove its pins once stopped: the binary and its state dir.
    unpin: Option<(PathBuf, PathBuf)>,
}

impl Agent {
    /// Starts the agent and waits until it logs that it is ready.
    pub fn start(p: &Paths) -> Result<Agent> {
        let log = File::create(p.log).with_context(|| format!("creating {}", p.log.display()))?;
        let mut cmd = Command::new(p.bin);
        cmd.arg("run")
            .arg("--policies")
            .arg(p.policies)
            .arg("--cgroup")
            .arg(p.cgroup)
            .arg("--events")
            .arg(p.events)
            .arg("--state-dir")
            .arg(p.state_dir)
            .args(["--log-format", "json"])
            // Beside an installed agent, which has the default port.
            .args(["--metrics-addr", "127.0.0.1:0"]);
        if let Some(config) = p.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(ca) = p.upstream_ca {
            cmd.arg("--upstream-ca").arg(ca);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches only us, and we stop the
            // agent in order (SIGTERM, wait) so its final counters are logged.
            .process_group(0);
        super::client::place(&mut cmd, None, p.cpu)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the agent `{}`", crate::util::display(&cmd)))?;
        let mut agent = Agent {
            child: Some(child),
            log: p.log.to_path_buf(),
            unpin: Some((p.bin.to_path_buf(), p.state_dir.to_path_buf())),
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        self.wait_for(&format!("log `{READY}`"), READY_TIMEOUT, |log| {
            Ok(log.contains(READY).then_some(()))
        })
    }

    /// Polls the log until `found` returns something (or an error), the
    /// agent exits or `timeout` passes; `what` is what we wait for, for the
    /// error messages.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = found(&self.log_text())? {
                return Ok(value);
            }
            let child = self.child.as_mut().expect("the agent is running");
            if let Some(status) = child.try_wait().context("checking on the agent")? {
                self.child = None;
                bail!(
                    "the agent exited ({status}) while we waited for it to {what}; its log \
                     ({}):\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not {what} within {} s; its log ({}):\n{}",
                    timeout.as_secs(),
                    self.log.display(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the log ends now: pass it to [`Agent::wait_logged`] to look only
    /// at what the agent logs after this point.
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// Waits for a JSON log record whose message starts with `message`,
    /// logged after `mark`, and returns it. Fails as soon as a record
    /// starting with one of `failures` appears there instead.
    pub fn wait_logged(
        &mut self,
        mark: usize,
        message: &str,
        failures: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let log = self.log.clone();
        self.wait_for(&format!("log `{message}`"), timeout, |text| {
            let after = text.get(mark..).unwrap_or_default();
            for record in records(after) {
                let said = record.get("message").and_then(|m| m.as_str());
                let said = said.unwrap_or_default();
                if said.starts_with(message) {
                    return Ok(Some(record));
                }
                if failures.iter().any(|f| said.starts_with(f)) {
                    bail!(
                        "waiting for `{message}`, the agent logged {record} (log: {})",
                        log.display()
                    );
                }
            }
            Ok(None)
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent is running").id()
    }

    /// A string field of the agent's `modelgate ready` log record, e.g.
    /// `proxy` (`127.0.0.1:PORT`).
    pub fn ready_field(&self, key: &str) -> Option<String> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains(READY))?;
        let record: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(record.get(key)?.as_str()?.to_owned())
    }

    /// Stops the agent with SIGTERM and returns its exit status and log.
    pub fn stop(mut self) -> Result<(ExitStatus, String)> {
        let status = self.terminate()?;
        Ok((status, self.log_text()))
    }

    /// SIGTERM, wait, then remove the pins: the programs outlive an agent
    /// on purpose, but not a bench.
    fn terminate(&mut self) -> Result<ExitStatus> {
        let status = self.signal_and_wait();
        if let Some((bin, state_dir)) = self.unpin.take() {
            let out = Command::new(&bin)
                .args(["uninstall-bpf", "--force", "--state-dir"])
                .arg(&state_dir)
                .stdin(Stdio::null())
                .output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!(
                    "xtask: warning: could not remove the agent's pins; run `{} uninstall-bpf \
                     --state-dir {}`",
                    bin.display(),
                    state_dir.display()
                );
            }
        }
        status
    }

    fn signal_and_wait(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the agent was already stopped")?;
        let pid = libc::pid_t::try_from(child.id()).context("agent pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet, so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the agent")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent did not exit within {} s of SIGTERM; killed it",
                    STOP_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.terminate()
        {
            eprintln!("xtask: warning: stopping the agent: {err:#}");
        }
    }
}

/// The agent's `final counters` record: the counters text
/// (`endpoint_hits=0 allowed=0 ...`) plus the sink and decode figures.
pub fn final_counters(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains(FINAL_COUNTERS))?;
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else {
        return Some(line.to_owned());
    };
    let mut parts: Vec<String> = fields
        .get("counters")
        .and_then(|v| v.as_str())
        .map(|c| vec![c.to_owned()])
        .unwrap_or_default();
    for key in ["records_written", "records_failed", "decode_errors"] {
        if let Some(v) = fields.get(key) {
            parts.push(format!("{key}={v}"));
        }
    }
    Some(parts.join(" "))
}

/// The JSON records in `log`; other lines (and a cut-off first or last
/// line) are skipped.
fn records(log: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(serde_json::Value::is_object)
}

/// `name=N` from a counters text.
pub fn counter(counters: &str, name: &str) -> Option<u64> {
    counters
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_counters_line() {
        let log = r#"{"timestamp":"t","level":"INFO","message":"modelgate ready"}
{"timestamp":"t","level":"INFO","counters":"endpoint_hits=3 allowed=0 monitored=3","records_written":3,"records_failed":0,"decode_errors":0,"message":"final counters"}
"#;
        let text = final_counters(log).expect("a final counters line");
        assert_eq!(
            text,
            "endpoint_hits=3 allowed=0 monitored=3 records_written=3 records_failed=0 decode_errors=0"
        );
        assert_eq!(counter(&text, "endpoint_hits"), Some(3));
        assert_eq!(counter(&text, "allowed"), Some(0));
        assert_eq!(counter(&text, "endpoint"), None);
    }

    #[test]
    fn an_agent_that_exits_early_fails_with_its_log() {
        let log = std::env::temp_dir().join(format!("xtask-agent-{}.log", std::process::id()));
        let none = Path::new("/nonexistent");
        // `sh run ...` fails at once: there is no script called `run`.
        let err = Agent::start(&Paths {
            bin: Path::new("/bin/sh"),
            policies: none,
            cgroup: none,
            events: none,
            state_dir: none,
            log: &log,
            config: None,
            upstream_ca: None,
            cpu: None,
        })
        .err()
        .expect("the agent cannot start");
        let _ = fs::remove_file(&log);
        let msg = format!("{err:#}");
        assert!(msg.contains("exited") && msg.contains("run"), "{msg}");
    }

    #[test]
    fn waits_for_a_record_after_the_mark() {
        let log = std::env::temp_dir().join(format!("xtask-agent-wait-{}.log", std::process::id()));
        let old = "{\"level\":\"INFO\",\"rules\":0,\"message\":\"policy reloaded\"}\n";
        fs::write(&log, old).unwrap();
        // A live child to poll: `sleep` stands in for the agent.
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut agent = Agent {
            child: Some(child),
            log: log.clone(),
            unpin: None,
        };
        let mark = agent.log_mark();
        assert_eq!(mark, old.len());
        let short = Duration::from_millis(250);
        let err = agent
            .wait_logged(mark, "policy reloaded", &[], short)
            .expect_err("nothing new was logged");
        assert!(format!("{err:#}").contains("did not log `policy reloaded`"));

        let new = "not json\n{\"level\":\"INFO\",\"rules\":1,\"message\":\"policy reloaded\"}\n";
        fs::write(&log, format!("{old}{new}")).unwrap();
        let record = agent
            .wait_logged(mark, "policy reloaded", &["reload refused"], short)
            .unwrap();
        assert_eq!(record["rules"], 1);

        let refused =
            "{\"level\":\"ERROR\",\"message\":\"reload refused, the previous policy stays\"}\n";
        fs::write(&log, format!("{old}{refused}")).unwrap();
        let err = agent
            .wait_logged(mark, "policy reloaded", &["reload refused"], short)
            .expect_err("the reload was refused");
        assert!(format!("{err:#}").contains("reload refused"), "{err:#}");
        drop(agent);
        let _ = fs::remove_file(&log);
    }

    #[test]
    fn no_final_counters() {
        assert_eq!(final_counters("{\"message\":\"modelgate ready\"}\n"), None);
    }
}
