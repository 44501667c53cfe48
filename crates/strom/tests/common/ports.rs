//! Ports for test servers, taken below the kernel's ephemeral range (32768 and up here):
//! a port the kernel hands out may be taken by any client's outgoing connection between
//! the check and the server's bind, which made clusters fail to start now and then.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// Ports this test process handed out already: the bind check cannot see a port picked
/// for a server that has not started yet (a cluster's nodes once got one port twice, as a
/// broker listener and as a controller listener). With each, the file whose lock keeps
/// other test processes off it.
static GIVEN: Mutex<Option<(HashSet<u16>, Vec<std::fs::File>)>> = Mutex::new(None);

/// Whether no other test process holds `port`: a lock on a file named after it, held
/// until this process ends (nextest runs each test in a process of its own, and two
/// clusters starting at once once drew the same port).
fn reserve(port: u16) -> Option<std::fs::File> {
    let dir = std::env::temp_dir().join("strom-test-ports");
    std::fs::create_dir_all(&dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .ok()?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with the process.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap();
    let (given, locks) = given.get_or_insert_with(Default::default);
    loop {
        // A fresh RandomState is freshly keyed: a random number without a dependency.
        let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let port = 20_000 + (r % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        let Some(lock) = reserve(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            locks.push(lock);
            return port;
        }
    }
}
