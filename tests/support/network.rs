//! A UDP relay between agents and a server on loopback that a test can cut and mend: a real
//! network partition for QUIC, which neither side can tell from a broken link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Forwards datagrams between clients and `upstream` until dropped; drops them all while cut.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `upstream` from an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("relay binds"));
        let addr = front.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(forward(front, upstream, cut.clone()));
        Relay { addr, cut, task }
    }

    /// Where clients connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards datagrams again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(front: Arc<UdpSocket>, upstream: SocketAddr, cut: Arc<AtomicBool>) {
    // One upstream socket per client, so the server sees each client as its own peer.
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut returns = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let back = match backs.get(&client) {
            Some(back) => back.clone(),
            None => {
                let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if back.connect(upstream).await.is_err() {
                    continue;
                }
                let back = Arc::new(back);
                backs.insert(client, back.clone());
                returns.push(tokio::spawn(backward(
                    back.clone(),
                    front.clone(),
                    client,
                    cut.clone(),
                )));
                back
            }
        };
        let _ = back.send(&buf[..n]).await;
    }
}

async fn backward(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = back.recv(&mut buf).await {
        if !cut.load(Ordering::SeqCst) {
            let _ = front.send_to(&buf[..n], client).await;
        }
    }
}
