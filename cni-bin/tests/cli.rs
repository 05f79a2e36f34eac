//! Unprivileged: how the binary answers bad input, VERSION and `--help`.
//! Every error must be CNI error JSON on stdout with the right code and a
//! non-zero exit, never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Call, WEFT};
use serde_json::{Value, json};

fn conf(extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "subnets": ["10.244.1.0/24"], "dataDir": "/nonexistent/weft-test"});
    if let (Some(obj), Some(more)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

#[test]
#[allow(clippy::type_complexity)]
fn bad_inputs_get_the_right_error_codes() {
    let netns = Path::new("/proc/self/ns/net");
    let not_a_netns = Path::new("/etc/hostname");
    let missing_netns = Path::new("/run/netns/weft-test-does-not-exist");
    // (what, command, container id, netns, ifname, config, expected code, text the message must contain)
    let rows: Vec<(&str, &str, &str, Option<&Path>, &str, Value, u64, &str)> = vec![
        ("unknown command", "FROB", "c1", Some(netns), "eth0", conf(json!({})), 4, "FROB"),
        ("missing container id", "ADD", "", Some(netns), "eth0", conf(json!({})), 4, "CNI_CONTAINERID"),
        ("bad container id", "ADD", "-bad/id", Some(netns), "eth0", conf(json!({})), 4, "CNI_CONTAINERID"),
        ("missing ifname", "ADD", "c1", Some(netns), "", conf(json!({})), 4, "CNI_IFNAME"),
        ("ifname too long", "ADD", "c1", Some(netns), "eth0123456789abc", conf(json!({})), 4, "CNI_IFNAME"),
        ("missing netns", "ADD", "c1", None, "eth0", conf(json!({})), 4, "CNI_NETNS"),
        ("unsupported version", "ADD", "c1", Some(netns), "eth0", conf(json!({"cniVersion": "9.9.9"})), 1, "9.9.9"),
        (
            "GC before 1.1",
            "GC",
            "",
            None,
            "",
            conf(json!({"cniVersion": "1.0.0", "cni.dev/valid-attachments": []})),
            1,
            "GC",
        ),
        ("STATUS before 1.1", "STATUS", "", None, "", conf(json!({"cniVersion": "0.4.0"})), 1, "STATUS"),
        ("CHECK before 0.4", "CHECK", "c1", Some(netns), "eth0", conf(json!({"cniVersion": "0.3.1"})), 1, "CHECK"),
        ("CHECK on 0.3.0", "CHECK", "c1", Some(netns), "eth0", conf(json!({"cniVersion": "0.3.0"})), 1, "CHECK"),
        ("wrong type", "ADD", "c1", Some(netns), "eth0", conf(json!({"type": "ptp"})), 7, "type"),
        (
            "subnet with host bits",
            "ADD",
            "c1",
            Some(netns),
            "eth0",
            conf(json!({"subnets": ["10.244.1.9/24"]})),
            7,
            "subnets",
        ),
        ("subnet not a CIDR", "ADD", "c1", Some(netns), "eth0", conf(json!({"subnets": ["ten"]})), 7, "subnets"),
        ("MTU too small", "ADD", "c1", Some(netns), "eth0", conf(json!({"mtu": 500})), 7, "mtu"),
        ("bad log level", "ADD", "c1", Some(netns), "eth0", conf(json!({"logLevel": "loud"})), 7, "logLevel"),
        ("bad network name", "ADD", "c1", Some(netns), "eth0", conf(json!({"name": "a/b"})), 7, "name"),
        (
            "weft not first in chain",
            "ADD",
            "c1",
            Some(netns),
            "eth0",
            conf(json!({"prevResult": {"ips": []}})),
            7,
            "first plugin",
        ),
        ("CHECK without prevResult", "CHECK", "c1", Some(netns), "eth0", conf(json!({})), 7, "prevResult"),
        ("GC without valid attachments", "GC", "", None, "", conf(json!({})), 7, "valid-attachments"),
        ("mtu of wrong type", "ADD", "c1", Some(netns), "eth0", conf(json!({"mtu": "big"})), 6, "decode"),
        ("netns path missing", "ADD", "c1", Some(missing_netns), "eth0", conf(json!({})), 102, "network namespace"),
        ("netns path not a netns", "ADD", "c1", Some(not_a_netns), "eth0", conf(json!({})), 102, "network namespace"),
        (
            "node config missing",
            "ADD",
            "c1",
            Some(netns),
            "eth0",
            json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": "/nonexistent/node.json"}),
            11,
            "node.json",
        ),
        (
            "STATUS without subnets",
            "STATUS",
            "",
            None,
            "",
            json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": "/nonexistent/node.json"}),
            50,
            "subnets",
        ),
    ];
    for (what, command, id, netns, ifname, config, code, needle) in rows {
        let reply = Call { command, container_id: id, netns, ifname, config: &config }.run(None);
        assert!(!reply.ok, "{what}: expected failure, got {}", reply.json);
        assert_eq!(reply.code(), code, "{what}: {}", reply.json);
        let text = format!("{} {}", reply.json["msg"], reply.json["details"]);
        assert!(text.contains(needle), "{what}: {text:?} should mention {needle:?}");
        assert!(reply.json["cniVersion"].is_string(), "{what}: {}", reply.json);
        assert!(!reply.stderr.contains("panicked"), "{what}: {}", reply.stderr);
    }
}

#[test]
fn a_node_config_that_is_a_fifo_fails_add_at_once() {
    // Someone put a FIFO where node.json belongs: a plain read would block
    // ADD until the runtime's timeout; weft refuses it at once.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("node.json");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo").success());
    let config = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": fifo});
    let netns = Path::new("/proc/self/ns/net");
    let reply =
        Call { command: "ADD", container_id: "c1", netns: Some(netns), ifname: "eth0", config: &config }.run(None);
    assert!(!reply.ok, "{}", reply.json);
    assert_eq!(reply.code(), 5, "an I/O error: {}", reply.json);
    let text = format!("{} {}", reply.json["msg"], reply.json["details"]);
    assert!(text.contains("node.json") && text.contains("FIFO"), "{text}");
}

/// Runs the plugin for `command` with `stdin` as its network config.
fn run_with_stdin(command: &str, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(WEFT)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the plugin");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // The plugin stops reading at the cap: a broken pipe after it is fine.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().expect("wait for the plugin")
}

#[test]
fn stdin_that_is_no_config_is_code_6() {
    // Valid JSON, just too big: a 2 MiB string in an unknown key.
    let mut big = conf(json!({}));
    big["padding"] = json!("x".repeat(2 * 1024 * 1024));
    let mut under = conf(json!({"type": "ptp"}));
    under["padding"] = json!("x".repeat(1024 * 1024 - 400));
    let too_big = "larger than 1024 KiB";
    let cases: [(&str, &str, String, i64, &str); 7] = [
        ("empty", "ADD", String::new(), 6, ""),
        ("truncated", "ADD", "{".into(), 6, ""),
        ("an array", "ADD", "[]".into(), 6, ""),
        ("a number for cniVersion", "ADD", r#"{"cniVersion": 1}"#.into(), 6, ""),
        ("over the cap", "ADD", big.to_string(), 6, too_big),
        ("over the cap, VERSION", "VERSION", big.to_string(), 6, too_big),
        // Just under the cap is read and decoded as usual, then refused for its type.
        ("just under the cap", "ADD", under.to_string(), 7, ""),
    ];
    for (what, command, stdin, code, message) in cases {
        let out = run_with_stdin(command, stdin.as_bytes());
        assert!(!out.status.success(), "{what}");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["code"], code, "{what}: {json}");
        assert!(json.to_string().contains(message), "{what}: {json}");
    }
}

#[test]
fn no_command_is_code_4() {
    let out = Command::new(WEFT).env_clear().stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["code"], 4);
    assert!(json["msg"].as_str().unwrap().contains("CNI_COMMAND"));
}

#[test]
fn version_lists_supported_versions() {
    for stdin in [json!({"cniVersion": "1.1.0"}), json!({"cniVersion": "0.1.0"})] {
        let reply = Call { command: "VERSION", container_id: "", netns: None, ifname: "", config: &stdin }.run(None);
        assert!(reply.ok, "{}", reply.json);
        assert_eq!(reply.json["cniVersion"], "1.1.0");
        let versions: Vec<&str> =
            reply.json["supportedVersions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    }
}

#[test]
fn explains_itself_when_run_by_hand() {
    let help = Command::new(WEFT).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("CNI_COMMAND"));
    let version = Command::new(WEFT).arg("--version").output().unwrap();
    assert!(version.status.success());
    let v = String::from_utf8_lossy(&version.stdout);
    assert!(v.contains(env!("CARGO_PKG_VERSION")) && v.contains("1.1.0"), "{v}");
    let bad = Command::new(WEFT).arg("--frob").output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--help"));
}
