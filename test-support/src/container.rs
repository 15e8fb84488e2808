//! Real container runs for the image tests: podman with the settings this kind of machine needs
//! (`runc`, cgroupfs, no default ulimits: `../shared/TOOLING.md`), containers and volumes removed
//! when dropped, and a network namespace of the test's own that reaches only the ports it allows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why container runs cannot happen here (printed by a test that skips), or `None` when they can.
pub fn unavailable() -> Option<String> {
    let Ok(out) = Command::new("podman").arg("--version").output() else {
        return Some("podman is not installed (scripts/test.sh installs it on Debian)".into());
    };
    if !out.status.success() {
        return Some(format!(
            "podman does not run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // The effective user: /proc/self is owned by it.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Some(
            "not root: rootless podman and network namespaces (ip netns) need privileges this user lacks"
                .into(),
        );
    }
    None
}

/// The podman CLI as this machine runs it.
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    pub fn new() -> Podman {
        let conf =
            std::env::temp_dir().join(format!("qleet-containers-{}.conf", uuid::Uuid::new_v4()));
        // crun and podman's default rlimits fail in this sandbox; runc with no default ulimits runs.
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").expect("containers.conf");
        Podman { conf }
    }

    /// `podman ARGS…` with this machine's runtime settings.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf);
        if Path::new("/usr/sbin/runc").exists() {
            cmd.arg("--runtime=/usr/sbin/runc");
        }
        cmd.arg("--cgroup-manager=cgroupfs");
        cmd
    }

    /// Runs `podman ARGS…` to the end; answers its stdout, panicking with stderr on failure.
    pub fn output(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts a detached container named `name` (`podman run -d --name NAME ARGS…`); it is
    /// removed when the answer is dropped.
    pub fn run(&self, name: &str, args: &[&str]) -> Container<'_> {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        self.output(&all);
        Container {
            podman: self,
            name: name.to_owned(),
        }
    }

    /// A named volume, removed when dropped.
    pub fn volume(&self, name: &str) -> Volume<'_> {
        self.output(&["volume", "create", name]);
        Volume {
            podman: self,
            name: name.to_owned(),
        }
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// A running container, removed (`rm -f`) when dropped.
pub struct Container<'a> {
    podman: &'a Podman,
    pub name: String,
}

impl Container<'_> {
    /// `podman inspect --format FORMAT NAME`.
    pub fn inspect(&self, format: &str) -> String {
        self.podman
            .output(&["inspect", "--format", format, &self.name])
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|_| panic!("{} has no process ({pid}): {}", self.name, self.logs()))
    }

    /// Everything the container has printed so far.
    pub fn logs(&self) -> String {
        let out = self
            .podman
            .command()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["rm", "-f", "-t", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A named volume, removed when dropped.
pub struct Volume<'a> {
    podman: &'a Podman,
    pub name: String,
}

impl Volume<'_> {
    /// Where the volume's files are on the host.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.podman.output(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &self.name,
        ]))
    }
}

impl Drop for Volume<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["volume", "rm", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What the kernel says of a process: its user ids (real, effective, saved, filesystem) and
/// whether its root filesystem is mounted read-only.
#[derive(Debug)]
pub struct ProcessFacts {
    pub uids: Vec<u32>,
    pub read_only_root: bool,
}

pub fn process_facts(pid: u32) -> ProcessFacts {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(|u| u.parse().expect("uid"))
        .collect();
    // mountinfo: id parent major:minor root mount-point options …; the last mount on "/" wins.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_options = mountinfo
        .lines()
        .rev()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/")).then(|| f.get(5).copied().unwrap_or_default().to_owned())
        })
        .next()
        .expect("a mount on /");
    ProcessFacts {
        uids,
        read_only_root: root_options.split(',').any(|o| o == "ro"),
    }
}

/// The pids of `pid`'s children (every thread's).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A network namespace joined to the host by a veth pair (`10.213.N.1` on the host,
/// `10.213.N.2` inside) with no other route, whose firewall lets it open connections only to
/// the host address's `allowed` TCP ports. Deleted when dropped.
pub struct IsolatedNet {
    pub name: String,
    pub path: PathBuf,
    /// The host's address on the link: what the namespace may reach (on the allowed ports).
    pub host: String,
    host_link: String,
}

impl IsolatedNet {
    /// Creates the namespace; `allowed` ports are opened later with [`IsolatedNet::allow`].
    pub fn create() -> IsolatedNet {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("qleet-{tag}");
        // Distinct /30 per namespace, from the tag, so parallel tests do not collide.
        let n = u8::from_str_radix(&tag[..2], 16).expect("hex");
        let host = format!("10.213.{n}.1");
        let inside = format!("10.213.{n}.2");
        let host_link = format!("qh{}", &tag[..6]);
        let ns_link = format!("qn{}", &tag[..6]);
        sh(&["ip", "netns", "add", &name]);
        let net = IsolatedNet {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
            host: host.clone(),
            host_link: host_link.clone(),
        };
        sh(&[
            "ip", "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        sh(&["ip", "link", "set", &ns_link, "netns", &net.name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host}/30"),
            "dev",
            &host_link,
        ]);
        sh(&["ip", "link", "set", &host_link, "up"]);
        net.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &ns_link,
        ]);
        net.exec(&["ip", "link", "set", &ns_link, "up"]);
        net.exec(&["ip", "link", "set", "lo", "up"]);
        // Nothing leaves but what `allow` opens; answers to allowed connections come back.
        net.exec(&["iptables", "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"]);
        net.exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        net.exec(&["iptables", "-P", "OUTPUT", "DROP"]);
        net
    }

    /// Lets the namespace open TCP connections to the host address's `port`.
    pub fn allow(&self, port: u16) {
        self.exec(&[
            "iptables",
            "-I",
            "OUTPUT",
            "1",
            "-d",
            &self.host,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "ACCEPT",
        ]);
    }

    /// Runs a command inside the namespace (`ip netns exec`), panicking if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Whether a TCP connection from inside the namespace to `host:port` opens within 2 s.
    pub fn can_connect(&self, host: &str, port: u16) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "timeout", "2", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ip netns exec")
            .success()
    }
}

impl Drop for IsolatedNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
