//! Ports for test servers, taken below the kernel's ephemeral range (32768 and up here):
//! a port the kernel hands out may be taken by any client's outgoing connection between
//! the check and the server's bind, which made clusters fail to start now and then.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Ports this test process handed out already: the bind check cannot see a port picked
/// for a server that has not started yet (a cluster's nodes once got one port twice, as a
/// broker listener and as a controller listener).
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        // A fresh RandomState is freshly keyed: a random number without a dependency.
        let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let port = 20_000 + (r % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}
