//! `flotilla-hub backup` of a running hub and `restore` into an emptied data folder: the
//! same agents follow the restored hub (same CA, keys, registry and inventory). A deployment
//! made after the backup is lost with the rest of that time; rotating the signing key after
//! the restore makes the restored hub's desired states outrank it, as docs/hub.md says.

use std::process::Command;

use flotilla_testkit::workspace_binary;

use crate::fleet::{an_agent_serving_version_1_of_two, deploy};
use crate::support::*;

fn hub_command(args: &[&str], data_dir: &std::path::Path, path: &std::path::Path) -> String {
    let output = Command::new(workspace_binary("flotilla-hub"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_hub_is_followed_by_the_same_agents() {
    let (mut hub, agent) = an_agent_serving_version_1_of_two("site=a").await;

    // Backed up while it serves.
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("hub-backup");
    let said = hub_command(&["backup"], hub.data_dir(), &backup);
    assert!(said.starts_with("backed up "), "{said}");

    // Then deployments the backup does not hold (the device's desired sequence moves three
    // past the backup's), and the machine is lost.
    for version in [2, 1, 2] {
        deploy(&hub, &version.to_string(), "").await;
        agent.wait_serving("scaler", version);
    }
    hub.kill_9();
    for entry in std::fs::read_dir(hub.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }

    // Restored into the emptied folder and served on the same addresses.
    let said = hub_command(&["restore"], hub.data_dir(), &backup);
    assert!(said.starts_with("restored "), "{said}");
    hub.serve();
    let listed = device(&hub, &agent.device_id).await;
    assert_eq!(listed["labels"]["site"], "a", "{listed}");
    let models = hub
        .reader()
        .json(
            flotilla_api::http::Method::GET,
            "/api/v1/models/scaler",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        models["versions"].as_array().map(Vec::len),
        Some(2),
        "{models}"
    );
    // The device reconnects with the certificate the restored CA issued.
    wait_reported(&hub, &agent.device_id, |d| d["online"] == true).await;

    // The documented step: rotate, and the restored hub's desired state (version 1) outranks
    // what the lost hub signed after the backup.
    hub.operator()
        .json(
            flotilla_api::http::Method::POST,
            "/api/v1/keys/rotate",
            None,
        )
        .await
        .unwrap();
    agent.wait_serving("scaler", 1);
    deploy(&hub, "2", "").await;
    agent.wait_serving("scaler", 2);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 2).await;

    // Not over a hub, and not from something that is not a backup.
    let output = Command::new(workspace_binary("flotilla-hub"))
        .args(["restore", "--data-dir"])
        .arg(hub.data_dir())
        .arg(&backup)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("already holds a hub"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
