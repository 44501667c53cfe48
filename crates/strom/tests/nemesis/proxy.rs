//! Network partitions on loopback: a TCP proxy in front of every listener of every node.
//! The nodes advertise the proxies' ports and name them as voters, so every connection, a
//! node's to another node as well as a client's, passes through one. Each accepted
//! connection is traced to the process that opened it (its socket's inode, from
//! `/proc/net/tcp`, among the nodes' open files), so that cutting node X off drops both
//! what reaches X and what X opens towards the others, and refuses both from then on.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Conn = (Option<i32>, i32, TcpStream, TcpStream);

#[derive(Default)]
struct Shared {
    /// Node id to the pid of its current process.
    pids: Mutex<HashMap<i32, u32>>,
    isolated: Mutex<HashSet<i32>>,
    /// Open proxied connections by number: (from node, if a node opened it; to node; both
    /// sockets).
    conns: Mutex<HashMap<u64, Conn>>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Default)]
pub struct Proxies {
    shared: Arc<Shared>,
}

impl Proxies {
    /// A proxy for node `node`'s listener on `target`; returns the proxy's port.
    pub fn front(&self, node: i32, target: u16) -> u16 {
        let listener = loop {
            let port = crate::cluster_nodes::free_port();
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                break l;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || relay(&shared, conn, node, port, target));
            }
        });
        port
    }

    /// Node `node` now runs as process `pid`.
    pub fn set_pid(&self, node: i32, pid: u32) {
        self.shared.pids.lock().unwrap().insert(node, pid);
    }

    /// Cuts `node` off: its connections through the proxies are closed, in both
    /// directions, and new ones refused until [`Proxies::heal`].
    pub fn isolate(&self, node: i32) {
        self.shared.isolated.lock().unwrap().insert(node);
        let mut conns = self.shared.conns.lock().unwrap();
        conns.retain(|_, (from, to, a, b)| {
            let cut = *to == node || *from == Some(node);
            if cut {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            !cut
        });
    }

    pub fn heal(&self, node: i32) {
        self.shared.isolated.lock().unwrap().remove(&node);
    }
}

fn relay(shared: &Shared, client: TcpStream, to: i32, proxy_port: u16, target: u16) {
    let from = client
        .peer_addr()
        .ok()
        .and_then(|peer| opened_by(shared, peer.port(), proxy_port));
    {
        let isolated = shared.isolated.lock().unwrap();
        if isolated.contains(&to) || from.is_some_and(|f| isolated.contains(&f)) {
            return;
        }
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let id = shared
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        // Checked again under the list's lock: an isolation in between closes it.
        let mut conns = shared.conns.lock().unwrap();
        let isolated = shared.isolated.lock().unwrap();
        if isolated.contains(&to) || from.is_some_and(|f| isolated.contains(&f)) {
            return;
        }
        conns.insert(id, (from, to, c2, u2));
    }
    let (Ok(mut c_read), Ok(mut u_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Both);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = u_read.shutdown(Shutdown::Both);
    let _ = forward.join();
    shared.conns.lock().unwrap().remove(&id);
}

/// The node whose process holds the socket 127.0.0.1:`port` -> 127.0.0.1:`proxy_port`.
fn opened_by(shared: &Shared, port: u16, proxy_port: u16) -> Option<i32> {
    let local = format!("0100007F:{port:04X}");
    let remote = format!("0100007F:{proxy_port:04X}");
    let tcp = std::fs::File::open("/proc/net/tcp").ok()?;
    let inode = BufReader::new(tcp)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[2] == remote).then(|| f[9].to_string())
        })?;
    let wanted = format!("socket:[{inode}]");
    let pids = shared.pids.lock().unwrap().clone();
    pids.into_iter().find_map(|(node, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.filter_map(Result::ok)
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t.to_str() == Some(wanted.as_str()))
            })
            .then_some(node)
    })
}
