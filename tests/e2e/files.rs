//! What ferry leaves on disk is its owner's alone: the server's and the agent's data
//! directories, databases and logs hold command payloads and results, token hashes and the
//! audit log, so no other user of the host may read them.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use ferry_server::RunStatus;
use ferry_tests::Harness;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file directly in `dir` (each log segment), with its mode.
fn modes_in(dir: &Path) -> Vec<(String, u32)> {
    let found: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), mode(&path))
        })
        .collect();
    assert!(!found.is_empty(), "{} is empty", dir.display());
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_databases_and_logs_are_private() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("private").await;
    // A command puts something in every database and log: the server's command log, the
    // agent's journal.
    let view = harness.run("private", "echo", b"\"secret\"", None).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");

    let server = &harness.config.data_dir;
    let agent = &harness.agent_config("private").data_dir;
    for dir in [server, agent] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    for file in [server.join("state.redb"), agent.join("journal.redb")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    for log in [server.join("commands.wal"), agent.join("journal.wal")] {
        assert_eq!(mode(&log), 0o700, "{}", log.display());
        for (segment, mode) in modes_in(&log) {
            assert_eq!(mode, 0o600, "{segment}");
        }
    }
}
