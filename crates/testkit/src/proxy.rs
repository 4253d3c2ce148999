//! A TCP proxy between a process under test and a service it uses, to make the link
//! slow, hold it, or lose it the way a dead host does: [`Proxy::black_hole`] drops
//! every byte not yet delivered, in both directions, and keeps the connections open,
//! so neither end learns anything (no FIN, no RST), as when power goes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Passes them on, each `delay` after it was read (in each direction).
    Forward,
    /// Keeps them until the link is forwarding again.
    Hold,
    /// Drops them, and everything read before that is still on its way.
    BlackHole,
}

/// A running proxy; stops (dropping its connections) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and connects each client to `upstream`,
    /// delaying every byte by `delay` each way. Runs on the caller's runtime.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                links.spawn(pipe(client_read, server_write, delay, modes.subscribe()));
                links.spawn(pipe(server_read, client_write, delay, modes.subscribe()));
            }
        });
        Ok(Self { addr, mode, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, bytes in both directions (and those still delayed) are dropped:
    /// the far end of every connection hears nothing more, as from a dead host.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Holds bytes in both directions until [`Proxy::forward`].
    pub fn hold(&self) {
        self.mode.send_replace(Mode::Hold);
    }

    /// Forwards again (after [`Proxy::hold`]), held bytes first.
    pub fn forward(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, as `mode` says.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut mode: watch::Receiver<Mode>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut writer_mode = mode.clone();
    let writer = tokio::spawn(async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            let Ok(now) = writer_mode.wait_for(|m| *m != Mode::Hold).await.map(|m| *m) else {
                return;
            };
            if now == Mode::BlackHole {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if *mode.borrow_and_update() == Mode::BlackHole {
            continue;
        }
        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    // A black-holed link never closes: the far end must not learn the host is gone.
    if *mode.borrow() == Mode::BlackHole {
        std::future::pending::<()>().await;
    }
    let _ = writer.await;
}
