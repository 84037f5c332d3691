//! `NetLab`: network namespaces and veth pairs a test makes for itself (root needed), so a
//! hub and its devices talk across real links with `tc netem` delay and loss instead of
//! loopback. Traffic stays inside what the lab made: the hub's namespace, a device
//! namespace, and the test's own namespace (the operator, and the rogue clients), each
//! joined to the hub's by a veth pair. Dropping the lab deletes the namespaces (their veth
//! pairs and routes go with them).
//!
//! ```text
//!   test (root ns) 10.77.0.2 ── veth ── 10.77.0.1 ┐
//!                                                  hub ns, hub at 10.77.9.1 (lo)
//!   device ns      10.77.1.2 ── veth ── 10.77.1.1 ┘   (netem on this link)
//! ```

use std::process::Command;

/// Where the hub listens, inside its namespace, reachable from both links.
pub const HUB_ADDRESS: &str = "10.77.9.1";

#[derive(Debug)]
pub struct NetLab {
    pub hub_ns: String,
    pub device_ns: String,
    suffix: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl NetLab {
    /// Makes the namespaces and links, or says why it cannot (not root, no `ip`): the
    /// caller skips with that reason.
    pub fn create() -> Result<NetLab, String> {
        // Namespaces a killed test left behind would hold the same addresses.
        if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if let Some(name) = line
                    .split_whitespace()
                    .next()
                    .filter(|n| n.starts_with("flo-"))
                {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
        let suffix = format!("{}", std::process::id() % 100_000);
        let lab = NetLab {
            hub_ns: format!("flo-hub-{suffix}"),
            device_ns: format!("flo-dev-{suffix}"),
            suffix,
        };
        // On failure the lab is dropped here, which deletes what was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        let (h, d, s) = (self.hub_ns.as_str(), self.device_ns.as_str(), &self.suffix);
        let (root_end, hub_end_0) = (format!("flr{s}"), format!("flh{s}"));
        let (device_end, hub_end_1) = (format!("fld{s}"), format!("fle{s}"));
        let hub = format!("{HUB_ADDRESS}/32");
        for step in [
            vec!["netns", "add", h],
            vec!["netns", "add", d],
            vec!["-n", h, "link", "set", "lo", "up"],
            vec!["-n", d, "link", "set", "lo", "up"],
            vec!["-n", h, "addr", "add", &hub, "dev", "lo"],
            // The test's namespace to the hub's.
            vec![
                "link", "add", &root_end, "type", "veth", "peer", "name", &hub_end_0,
            ],
            vec!["link", "set", &hub_end_0, "netns", h],
            vec!["addr", "add", "10.77.0.2/24", "dev", &root_end],
            vec!["link", "set", &root_end, "up"],
            vec!["-n", h, "addr", "add", "10.77.0.1/24", "dev", &hub_end_0],
            vec!["-n", h, "link", "set", &hub_end_0, "up"],
            vec!["route", "add", &hub, "via", "10.77.0.1"],
            // The device's namespace to the hub's.
            vec![
                "link",
                "add",
                &device_end,
                "type",
                "veth",
                "peer",
                "name",
                &hub_end_1,
            ],
            vec!["link", "set", &device_end, "netns", d],
            vec!["link", "set", &hub_end_1, "netns", h],
            vec!["-n", d, "addr", "add", "10.77.1.2/24", "dev", &device_end],
            vec!["-n", d, "link", "set", &device_end, "up"],
            vec!["-n", h, "addr", "add", "10.77.1.1/24", "dev", &hub_end_1],
            vec!["-n", h, "link", "set", &hub_end_1, "up"],
            vec!["-n", d, "route", "add", &hub, "via", "10.77.1.1"],
        ] {
            ip(&step)?;
        }
        Ok(())
    }

    /// Delay (with jitter) and loss on the device's link, both directions, with `tc
    /// netem`. A kernel without netem (some VMs) gets a slow link instead, `tbf` at
    /// `fallback_rate` (e.g. "20mbit"): what was applied is returned, for the test to say.
    pub fn impair_device_link(
        &self,
        delay_ms: u32,
        loss_percent: f32,
        fallback_rate: &str,
    ) -> Result<String, String> {
        let s = &self.suffix;
        let links = [
            (self.device_ns.clone(), format!("fld{s}")),
            (self.hub_ns.clone(), format!("fle{s}")),
        ];
        let netem: Vec<String> = [
            "netem".to_owned(),
            "delay".to_owned(),
            format!("{delay_ms}ms"),
            format!("{}ms", delay_ms / 4),
            "loss".to_owned(),
            format!("{loss_percent}%"),
        ]
        .to_vec();
        let tbf: Vec<String> = [
            "tbf",
            "rate",
            fallback_rate,
            "burst",
            "32kbit",
            "latency",
            "400ms",
        ]
        .map(str::to_owned)
        .to_vec();
        let apply = |qdisc: &[String]| -> Result<(), String> {
            for (ns, dev) in &links {
                let output = Command::new("ip")
                    .args([
                        "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                    ])
                    .args(qdisc)
                    .output()
                    .map_err(|e| e.to_string())?;
                if !output.status.success() {
                    return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
                }
            }
            Ok(())
        };
        match apply(&netem) {
            Ok(()) => Ok(netem.join(" ")),
            Err(netem_error) => {
                apply(&tbf).map_err(|e| format!("tc netem: {netem_error}; tc tbf: {e}"))?;
                Ok(format!(
                    "{} (this kernel has no netem: {netem_error})",
                    tbf.join(" ")
                ))
            }
        }
    }
}

/// `program`, run in network namespace `netns` when given.
pub(crate) fn command_in(netns: Option<&str>, program: std::path::PathBuf) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn lab_cleanup(lab: &NetLab) -> Result<(), String> {
    let hub = ip(&["netns", "del", &lab.hub_ns]);
    let device = ip(&["netns", "del", &lab.device_ns]);
    hub.and(device)
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let _ = lab_cleanup(self);
    }
}
