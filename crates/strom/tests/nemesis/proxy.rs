//! Network partitions on loopback: a TCP proxy in front of every listener of every node.
//! The nodes advertise the proxies' ports and name them as voters, so every connection, a
//! node's to another node as well as a client's, passes through one. Cutting node X off
//! drops both what reaches X and what X opens towards the others, and refuses both until
//! healed: a connection is traced to the process that opened it (its socket's inode, from
//! `/proc/net/tcp`, among the node's open files). The trace is costly under load, so it is
//! made only while some node is cut off, never on the way of a healthy connection: the
//! quorum's RPCs time out quickly, and a proxy slow to accept kept a restarted node out
//! of the quorum for good.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// An open proxied connection: the node it goes to, the client's port and the proxy's
/// (which name its socket in `/proc/net/tcp`), and both sockets.
struct Conn {
    to: i32,
    client_port: u16,
    proxy_port: u16,
    sockets: (TcpStream, TcpStream),
}

#[derive(Default)]
struct Shared {
    /// Node id to the pid of its current process.
    pids: Mutex<HashMap<i32, u32>>,
    isolated: Mutex<HashSet<i32>>,
    /// Open proxied connections by number.
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
        let sockets = ports_to_inodes();
        let pid = self.shared.pids.lock().unwrap().get(&node).copied();
        let owned = pid.map(socket_inodes).unwrap_or_default();
        conns.retain(|_, c| {
            let opened = sockets
                .get(&(c.client_port, c.proxy_port))
                .is_some_and(|inode| owned.contains(inode));
            let cut = c.to == node || opened;
            if cut {
                let _ = c.sockets.0.shutdown(Shutdown::Both);
                let _ = c.sockets.1.shutdown(Shutdown::Both);
            }
            !cut
        });
    }

    pub fn heal(&self, node: i32) {
        self.shared.isolated.lock().unwrap().remove(&node);
    }
}

/// Whether a connection from `client_port` to node `to` is refused: only while a node is
/// cut off is it traced to the node that opened it.
fn refused(shared: &Shared, client_port: Option<u16>, to: i32, proxy_port: u16) -> bool {
    let isolated = shared.isolated.lock().unwrap().clone();
    if isolated.is_empty() {
        return false;
    }
    if isolated.contains(&to) {
        return true;
    }
    client_port
        .and_then(|p| opened_by(shared, p, proxy_port))
        .is_some_and(|from| isolated.contains(&from))
}

fn relay(shared: &Shared, client: TcpStream, to: i32, proxy_port: u16, target: u16) {
    let client_port = client.peer_addr().ok().map(|a| a.port());
    if refused(shared, client_port, to, proxy_port) {
        return;
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
        if refused(shared, client_port, to, proxy_port) {
            return;
        }
        conns.insert(
            id,
            Conn {
                to,
                client_port: client_port.unwrap_or(0),
                proxy_port,
                sockets: (c2, u2),
            },
        );
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

/// Every loopback TCP socket's inode by (local port, remote port), from `/proc/net/tcp`.
fn ports_to_inodes() -> HashMap<(u16, u16), u64> {
    let Ok(tcp) = std::fs::File::open("/proc/net/tcp") else {
        return HashMap::new();
    };
    let port = |addr: &str| {
        addr.strip_prefix("0100007F:")
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    BufReader::new(tcp)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() <= 9 {
                return None;
            }
            Some(((port(f[1])?, port(f[2])?), f[9].parse().ok()?))
        })
        .collect()
}

/// The inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The node whose process holds the socket 127.0.0.1:`port` -> 127.0.0.1:`proxy_port`.
fn opened_by(shared: &Shared, port: u16, proxy_port: u16) -> Option<i32> {
    let inode = *ports_to_inodes().get(&(port, proxy_port))?;
    let pids = shared.pids.lock().unwrap().clone();
    pids.into_iter()
        .find_map(|(node, pid)| socket_inodes(pid).contains(&inode).then_some(node))
}
