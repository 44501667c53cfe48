//! `strom consume --group` and `strom groups` against a real server.

mod common;

use std::process::{Command, Stdio};

use common::{Server, ok, run};

fn sorted(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn a_group_resumes_where_it_committed_and_groups_show_lag() {
    let server = Server::start_with(&["group.initial.rebalance.delay.ms=0"]);
    ok(
        &server,
        &["topics", "create", "--topic", "work", "--partitions", "2"],
    );
    let input: String = (0..10)
        .map(|i| format!("{}:{i}\n", if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    let out = run(
        &server,
        &["produce", "--topic", "work", "--key-separator", ":"],
        &input,
    );
    assert!(out.status.success());
    // First run: 4 records, then the group has committed exactly those.
    let first = ok(
        &server,
        &[
            "consume",
            "--topic",
            "work",
            "--group",
            "workers",
            "--from-beginning",
            "--max-messages",
            "4",
            "--format",
            "{key}={value}",
        ],
    );
    assert_eq!(first.lines().count(), 4);
    let describe = ok(
        &server,
        &["groups", "describe", "--group", "workers", "--json"],
    );
    let d: serde_json::Value = serde_json::from_str(&describe).unwrap();
    assert_eq!(d["state"], "Empty");
    assert_eq!(d["total_lag"], 6);
    // Second run: the other 6, none again.
    let second = ok(
        &server,
        &[
            "consume",
            "--topic",
            "work",
            "--group",
            "workers",
            "--timeout-ms",
            "1500",
            "--format",
            "{key}={value}",
        ],
    );
    let mut all = sorted(&first);
    all.extend(sorted(&second));
    all.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("{}={i}", if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    expected.sort();
    assert_eq!(all, expected, "every record exactly once over the two runs");

    let list = ok(&server, &["groups", "list"]);
    assert_eq!(
        list,
        "GROUP    STATE  PROTOCOL-TYPE\nworkers  Empty  consumer\n"
    );
    let text = ok(&server, &["groups", "describe", "--group", "workers"]);
    assert!(
        text.starts_with("Group workers: state Empty, 0 member(s)\n"),
        "{text}"
    );
    assert!(text.ends_with("Total lag: 0\n"), "{text}");

    // Reset: the plan first, then for real.
    let plan = ok(
        &server,
        &[
            "groups",
            "reset-offsets",
            "--group",
            "workers",
            "--topic",
            "work",
            "--to-earliest",
        ],
    );
    assert!(plan.contains("Dry run"), "{plan}");
    let d: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &["groups", "describe", "--group", "workers", "--json"],
    ))
    .unwrap();
    assert_eq!(d["total_lag"], 0, "a dry run changes nothing");
    ok(
        &server,
        &[
            "groups",
            "reset-offsets",
            "--group",
            "workers",
            "--topic",
            "work",
            "--shift-by",
            "-2",
            "--execute",
        ],
    );
    let d: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &["groups", "describe", "--group", "workers", "--json"],
    ))
    .unwrap();
    let lags: Vec<i64> = d["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["lag"].as_i64().unwrap())
        .collect();
    assert!(lags.iter().all(|l| *l == 2 || *l == 0), "{lags:?}");
    let again = ok(
        &server,
        &[
            "consume",
            "--topic",
            "work",
            "--group",
            "workers",
            "--timeout-ms",
            "1500",
        ],
    );
    assert_eq!(again.lines().count() as i64, lags.iter().sum::<i64>());
    ok(
        &server,
        &[
            "groups",
            "reset-offsets",
            "--group",
            "workers",
            "--topic",
            "work",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
            "--execute",
        ],
    );
    let d: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &["groups", "describe", "--group", "workers", "--json"],
    ))
    .unwrap();
    assert_eq!(d["total_lag"], 10);

    assert_eq!(
        ok(&server, &["groups", "delete", "--group", "workers"]),
        "Deleted group workers.\n"
    );
    let out = run(&server, &["groups", "delete", "--group", "workers"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_ID_NOT_FOUND"));
    assert_eq!(
        ok(&server, &["groups", "list"]),
        "GROUP  STATE  PROTOCOL-TYPE\n"
    );
}

#[test]
fn offsets_of_an_active_group_cannot_be_reset() {
    let server = Server::start_with(&["group.initial.rebalance.delay.ms=0"]);
    ok(&server, &["topics", "create", "--topic", "busy"]);
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args([
            "consume",
            "--topic",
            "busy",
            "--group",
            "live",
            "--bootstrap-server",
            &server.bootstrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for(
        "the consumer to join",
        std::time::Duration::from_secs(30),
        || {
            // Until the consumer's JoinGroup arrives the group does not exist.
            let out = run(
                &server,
                &["groups", "describe", "--group", "live", "--json"],
                "",
            );
            let d: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (d["state"] == "Stable").then_some(())
        },
    );
    let out = run(
        &server,
        &[
            "groups",
            "reset-offsets",
            "--group",
            "live",
            "--topic",
            "busy",
            "--to-latest",
            "--execute",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no active members"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&server, &["groups", "delete", "--group", "live"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NON_EMPTY_GROUP"));
    let d: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &["groups", "describe", "--group", "live", "--json"],
    ))
    .unwrap();
    assert_eq!(d["members"].as_array().unwrap().len(), 1);
    consumer.kill().unwrap();
    consumer.wait().unwrap();
}
