//! The largest request an over-declared array allows, under a memory limit.

use super::frames::*;
use super::*;

/// The maximal request of one over-declared array (named by `STROM_HOSTILE_CHILD`), with the
/// default socket.request.max.bytes (100 MiB): the count is as large as the decoder accepts
/// (one element per remaining byte) and the elements are undecodable (0xff), so the request
/// fails at its first element. Run by `maximal_requests_survive_a_memory_limit` in a child
/// process; does nothing otherwise.
#[tokio::test]
async fn maximal_request_child() {
    let Some(name) = std::env::var_os("STROM_HOSTILE_CHILD") else {
        return;
    };
    let c = array_cases()
        .into_iter()
        .find(|c| name == c.name)
        .expect("a case name");
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let size = broker.config.socket_request_max_bytes;
    let header = frame(c.api, c.version, c.flexible, &[]).len();
    let rest = size - header - c.prefix.len() - c.suffix.len() - 5;
    let count = if c.flexible {
        let mut v = Vec::new();
        let mut n = rest as u64 + 1;
        while n >= 0x80 {
            v.push((n as u8) | 0x80);
            n >>= 7;
        }
        v.push(n as u8);
        v
    } else {
        (rest as i32).to_be_bytes().to_vec()
    };
    let mut body = cat(&[&c.prefix, &count]);
    body.resize(size - header - c.suffix.len(), 0xff);
    body.extend_from_slice(&c.suffix);
    let f = frame(c.api, c.version, c.flexible, &body);
    assert_eq!(f.len(), size);
    reset_largest();
    let r = serve(&broker, f).await;
    assert!(matches!(r, Reply::Close), "{}: not closed", c.name);
    eprintln!("largest allocation: {} MiB", largest() >> 20);
}

/// A broker host with 4 GiB of address space (or of RAM + swap, under the kernel's default
/// overcommit heuristic) must survive any single request that the default
/// socket.request.max.bytes (100 MiB) lets in. Each case runs in a child process limited
/// with `ulimit -v`.
#[test]
#[ignore = "bug: krabka-protocol decoders call Vec::with_capacity(n) with n bounded by the \
            bytes left, not by the element size, so a 100 MiB request declaring ~100M array \
            elements reserves 24-104 bytes per element (6.7 GB for Produce topics, 10.9 GB \
            for CreateTopics) before failing on the first one; where that allocation fails \
            (4 GiB address space here) the process aborts"]
fn maximal_requests_survive_a_memory_limit() {
    let exe = std::env::current_exe().unwrap();
    let mut died = Vec::new();
    for c in array_cases() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 4194304 && exec \"$0\" --exact memory::maximal_request_child --nocapture")
            .arg(&exe)
            .env("STROM_HOSTILE_CHILD", c.name)
            .output()
            .unwrap();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| l.contains("memory allocation") || l.contains("panicked"))
                .unwrap_or("");
            died.push(format!("{}: {} {why}", c.name, out.status));
        }
    }
    assert!(
        died.is_empty(),
        "{} of {} died:\n{}",
        died.len(),
        array_cases().len(),
        died.join("\n")
    );
}
