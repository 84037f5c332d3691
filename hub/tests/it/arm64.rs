//! The arm64 agent (`deploy/build-agent.sh --target aarch64-unknown-linux-gnu`), run under
//! `qemu-aarch64`, enrolls with this (x86-64) hub, installs the deployed models and answers
//! Open Inference Protocol requests with the outputs the x86-64 agent gives.
//!
//! qemu-user 7.2 (Debian 12) shows the guest the host's /proc/cpuinfo, in which ONNX
//! Runtime's CPU detection finds no Arm core and crashes; the emulated agent therefore runs
//! in a mount namespace where /proc/cpuinfo describes two Cortex-A72 cores, as a real
//! device's does. Skipped, saying why, when the build or qemu is not here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_api::http::Method;
use flotilla_testkit::repo_root;
use serde_json::json;

use crate::support::*;

const TARGET: &str = "aarch64-unknown-linux-gnu";

/// An Arm /proc/cpuinfo, as a Raspberry Pi 4's kernel writes it.
const ARM_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\nprocessor\t: 1\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n";

/// The arm64 build and its library, or why the test cannot run.
fn arm64_build() -> Result<(PathBuf, PathBuf), String> {
    let dist = std::env::var_os("FLOTILLA_ARM64_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/dist").join(TARGET));
    let agent = dist.join("flotilla-agent");
    let library = dist.join("libonnxruntime.so.1.31.1");
    if !agent.exists() || !library.exists() {
        return Err(format!(
            "no arm64 build in {} (deploy/build-agent.sh --target {TARGET} makes it; deploy/test.sh runs that where gcc-aarch64-linux-gnu and rustup's target can be had)",
            dist.display()
        ));
    }
    for tool in ["qemu-aarch64", "unshare"] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "{tool} is not installed (Debian: qemu-user, util-linux)"
            ));
        }
    }
    if !Path::new("/usr/aarch64-linux-gnu/lib").exists() {
        return Err("no arm64 C library for qemu -L (Debian: libc6-dev-arm64-cross)".into());
    }
    Ok((agent, library))
}

/// A script that runs the arm64 agent under qemu with an Arm /proc/cpuinfo.
fn emulated_agent(dir: &Path, agent: &Path) -> PathBuf {
    let cpuinfo = dir.join("cpuinfo");
    std::fs::write(&cpuinfo, ARM_CPUINFO).unwrap();
    let script = dir.join("flotilla-agent-arm64");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# exec all the way down: SIGTERM reaches qemu, which hands it to the agent.\nexec unshare --mount sh -c 'mount --bind {} /proc/cpuinfo && exec qemu-aarch64 -L /usr/aarch64-linux-gnu {} \"$@\"' sh \"$@\"\n",
            cpuinfo.display(),
            agent.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn iris_rows() -> Vec<Vec<f32>> {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    serde_json::from_value(expected["iris_classifier"]["inputs"].clone()).unwrap()
}

/// The outputs of `model` for `body`, by output name, once it serves `version`.
fn outputs(agent: &AgentRun, model: &str, body: &serde_json::Value) -> serde_json::Value {
    for _ in 0..1200 {
        if let Ok((200, answer)) = agent.socket_request(
            "POST",
            &format!("/v2/models/{model}/infer"),
            &body.to_string(),
        ) {
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            let mut by_name = serde_json::Map::new();
            for output in answer["outputs"].as_array().unwrap() {
                by_name.insert(
                    output["name"].as_str().unwrap().to_owned(),
                    output["data"].clone(),
                );
            }
            return by_name.into();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{model} is not served:\n{}", agent.log());
}

fn assert_same(x86: &serde_json::Value, arm: &serde_json::Value, what: &str) {
    let (x86, arm) = (x86.as_object().unwrap(), arm.as_object().unwrap());
    assert_eq!(
        x86.keys().collect::<Vec<_>>(),
        arm.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, x86_data) in x86 {
        let pairs = x86_data
            .as_array()
            .unwrap()
            .iter()
            .zip(arm[name].as_array().unwrap());
        assert_eq!(
            x86_data.as_array().unwrap().len(),
            arm[name].as_array().unwrap().len()
        );
        for (a, b) in pairs {
            match (a.as_f64(), b.as_f64()) {
                // Float kernels differ by architecture (NEON vs AVX): the last bits may.
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{what} {name}: {a} on x86-64, {b} on arm64"
                ),
                _ => assert_eq!(a, b, "{what} {name}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_arm64_agent_under_qemu_enrolls_installs_and_answers_as_on_x86_64() {
    let (agent_binary, library) = match arm64_build() {
        Ok(build) => build,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
    let hub = HubProcess::start();
    let operator = hub.operator();
    for (model, file) in [
        ("scaler", "scaler_v1.onnx"),
        ("iris", "iris_classifier.onnx"),
    ] {
        operator
            .upload(
                &format!("/api/v1/models/{model}/versions"),
                std::fs::read(fixture(file)).unwrap().into(),
            )
            .await
            .unwrap();
    }
    let x86 = AgentRun::start(&hub, &enroll_token(&hub, "arch=x86_64").await).unwrap();
    let mut arm = AgentRun::prepare(
        &hub.url,
        &enroll_token(&hub, "arch=aarch64").await,
        &format!("ort_lib = \"{}\"\n", library.display()),
    )
    .unwrap();
    arm.binary = emulated_agent(arm.dir.path(), &agent_binary);
    arm.restart()
        .unwrap_or_else(|log| panic!("the arm64 agent did not start:\n{log}"));
    let listed = device(&hub, &arm.device_id).await;
    assert_eq!(listed["hardware"]["arch"], "aarch64", "{listed}");

    for model in ["scaler", "iris"] {
        operator
            .json(
                Method::POST,
                "/api/v1/deployments",
                Some(json!({"model": model, "version": "1", "selector": ""})),
            )
            .await
            .unwrap();
    }
    let scaler = json!({"inputs": [{"name": "x", "shape": [5], "datatype": "FP32", "data": [-3.5, 0.0, 1.0, 2.25, 1e6]}]});
    let rows = iris_rows();
    let iris = json!({"inputs": [{"name": "float_input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows.concat()}]});
    for (model, body) in [("scaler", &scaler), ("iris", &iris)] {
        let on_x86 = outputs(&x86, model, body);
        let on_arm = outputs(&arm, model, body);
        assert_same(&on_x86, &on_arm, model);
    }
    wait_reported(&hub, &arm.device_id, |d| {
        d["serving"]["scaler"] == 1 && d["serving"]["iris"] == 1
    })
    .await;
    let (status, _) = arm.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", arm.log());
}
