//! Ports for test servers, taken below the kernel's ephemeral range (32768 and up here):
//! a port the kernel hands out may be taken by any client's outgoing connection between
//! the check and the server's bind, which made clusters fail to start now and then.

use std::hash::BuildHasher;

pub fn free_port() -> u16 {
    loop {
        // A fresh RandomState is freshly keyed: a random number without a dependency.
        let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let port = 20_000 + (r % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
