//! What `deploy/` puts on machines: the systemd units pass `systemd-analyze verify` and its
//! offline security review, and `deploy/install-agent.sh` installs an agent into a
//! throwaway root and enrolls it with a real hub (systemd itself does not run here, so the
//! units are checked, not booted).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use flotilla_testkit::{repo_root, workspace_binary};

fn systemd_analyze() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian package systemd; deploy/setup.sh installs it)"
        );
    }
    found
}

/// The unit, with its binary path pointed at this build (verify checks that it exists).
fn unit_for_this_build(dir: &Path, name: &str, binary: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(name)).unwrap();
    let installed = format!("/usr/local/bin/{binary}");
    assert!(text.contains(&installed), "{name} runs {installed}");
    let path = dir.join(name);
    std::fs::write(
        &path,
        text.replace(&installed, &workspace_binary(binary).display().to_string()),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, binary) in [
        ("flotilla-agent.service", "flotilla-agent"),
        ("flotilla-hub.service", "flotilla-hub"),
    ] {
        let unit = unit_for_this_build(dir.path(), name, binary);
        let verify = Command::new(&analyze)
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        // Unknown keys and bad values are only warnings to verify: any output fails here.
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
        let security = Command::new(&analyze)
            .args(["security", "--offline=yes"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&security.stdout);
        let exposure: f64 = report
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|level| level.split_whitespace().next())
            .and_then(|level| level.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure level in:\n{report}"));
        // systemd rates 0-10 (lower is safer); under 2 is its "OK" band's better half.
        assert!(exposure <= 2.0, "{name}: exposure {exposure}\n{report}");
        let text = std::fs::read_to_string(&unit).unwrap();
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=",
            "Restart=on-failure",
            "CapabilityBoundingSet=\n",
        ] {
            assert!(text.contains(line), "{name} lacks {line:?}");
        }
    }
    let agent =
        std::fs::read_to_string(repo_root().join("deploy/systemd/flotilla-agent.service")).unwrap();
    assert!(agent.contains("RuntimeDirectory=flotilla\n") && agent.contains("Group=flotilla\n"));
}

fn install_agent(root: &Path, hub: &str, token: &str, labels: &str) -> std::process::Output {
    let mut command = Command::new(repo_root().join("deploy/install-agent.sh"));
    command
        .args(["--hub", hub, "--token", token, "--root"])
        .arg(root)
        .arg("--binary")
        .arg(workspace_binary("flotilla-agent"));
    if !labels.is_empty() {
        command.args(["--labels", labels]);
    }
    command.output().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread")]
async fn install_agent_sh_installs_into_a_root_and_enrolls() {
    let hub = HubProcess::start();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();

    // A spent token fails the install with the hub's reason, before anything boots.
    let spent = enroll_token(&hub, "").await;
    let _first = enrolled_device_with_token(&hub, &spent).await;
    let refused = install_agent(root, &hub.url, &spent, "");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("enrollment refused (403)") && said.contains("already used"),
        "{said}"
    );

    let token = enroll_token(&hub, "site=lab").await;
    let installed = install_agent(root, &hub.url, &token, "rack=r7,power=poe");
    let said = String::from_utf8_lossy(&installed.stderr);
    assert!(installed.status.success(), "{said}");
    let stdout = String::from_utf8_lossy(&installed.stdout);
    let device_id = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("device="))
        .unwrap_or_else(|| panic!("no device= in {stdout}"))
        .to_owned();

    for (path, want) in [
        ("usr/local/bin/flotilla-agent", 0o755),
        ("usr/local/lib/flotilla/libonnxruntime.so.1.31.1", 0o644),
        ("etc/systemd/system/flotilla-agent.service", 0o644),
        ("etc/flotilla", 0o750),
        ("etc/flotilla/agent.toml", 0o640),
        ("var/lib/flotilla-agent", 0o700),
        ("var/lib/flotilla-agent/device.key", 0o600),
    ] {
        assert_eq!(mode(&root.join(path)), want, "{path}");
    }
    assert_eq!(
        std::fs::read(root.join("etc/systemd/system/flotilla-agent.service")).unwrap(),
        std::fs::read(repo_root().join("deploy/systemd/flotilla-agent.service")).unwrap()
    );
    // The config the agent will boot with is one it accepts, with the unit's paths.
    let config = std::fs::read_to_string(root.join("etc/flotilla/agent.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    assert_eq!(
        parsed["state_dir"].as_str(),
        Some("/var/lib/flotilla-agent")
    );
    assert_eq!(parsed["socket"].as_str(), Some("/run/flotilla/agent.sock"));
    assert_eq!(parsed["hardware"]["rack"].as_str(), Some("r7"));

    // The hub knows the device: the token's labels, the facts the script passed.
    let listed = device(&hub, &device_id).await;
    assert_eq!(listed["labels"]["site"], "lab", "{listed}");
    assert_eq!(listed["hardware"]["power"], "poe", "{listed}");

    // Again on the same root: the device stays enrolled (same id, nothing spent).
    let again = install_agent(root, &hub.url, &token, "rack=r7,power=poe");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!("device={device_id}")),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // Bad arguments are refused with what is wrong.
    let bad = Command::new(repo_root().join("deploy/install-agent.sh"))
        .args(["--hub", "hub.example", "--token", "t", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--hub must be an http(s) URL"));
}

#[test]
fn flotilla_agent_config_default_prints_a_file_for_each_command() {
    for (args, has, lacks) in [
        (
            &["config", "default"][..],
            "\n[telemetry]\n",
            "\nwatch_interval_ms =",
        ),
        (
            &["config", "default", "--for", "serve"][..],
            "\nwatch_interval_ms = 2000\n",
            "\n[telemetry]\n",
        ),
    ] {
        let output = Command::new(workspace_binary("flotilla-agent"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.starts_with("# `flotilla-agent serve` and `flotilla-agent run` settings"),
            "{text}"
        );
        assert!(
            text.contains(has) && !text.contains(lacks),
            "{args:?}\n{text}"
        );
    }
}
