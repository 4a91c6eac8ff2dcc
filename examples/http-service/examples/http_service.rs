//! An HTTP/1.1 service (hyper 1.x on tokio) that restarts without refusing
//! a connection: its listening socket lives in an fd holder
//! (`s6-fdholderd`), so while one instance exits and the next starts,
//! clients queue in the socket's backlog instead of being refused.
//!
//! ```text
//! http_service HOLDER_SOCKET ADDR
//! ```
//!
//! - `HOLDER_SOCKET`: the holder's Unix socket. The listener is taken from
//!   it under the id `http-service/listen`, or, on a first start, bound on
//!   `ADDR` and a copy stored there ([`fdholder::restart::Holder`]: one
//!   short connection, closed before serving). A held listener is served
//!   whatever address it is on: to move, delete the id first
//!   (`s6-fdholder-delete HOLDER_SOCKET http-service/listen`). `-` means no
//!   holder: bind `ADDR` directly, as a service without one would (each
//!   restart then closes the socket, and connections are refused until the
//!   next instance binds it again).
//! - `ADDR`: where to listen on a first start, e.g. `127.0.0.1:8080`.
//!
//! `GET /` answers 200 with the process's pid and a newline as the body
//! (so a client can tell the instances apart); other paths 404, other
//! methods 405.
//!
//! Once it serves, it prints one line on stdout: `http_service: pid PID
//! serving on ADDR (held|created|bound)`.
//!
//! On SIGTERM it stops accepting (it closes its copy of the listener: the
//! holder's copy keeps the socket listening, and connections that arrive
//! meanwhile wait in its backlog for the next instance), lets hyper finish
//! the requests it has (hyper's graceful shutdown: idle keep-alive
//! connections are closed, busy ones answer their request with
//! `Connection: close`), and exits 0; 1 if they have not finished within
//! 10 s. Exit 100 on a usage error, 111 when it cannot start (the holder
//! refuses or is unreachable, bind fails).
//!
//! One thing is added to hyper's graceful shutdown, which closes at once a
//! connection on which nothing has been read yet: a client whose connection
//! this instance accepted just before SIGTERM, and whose request had not
//! arrived (or had, unread), would see it reset. Such a connection is given
//! up to 1 s for its first bytes; once any are read, hyper's graceful
//! shutdown serves that request and closes.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::TcpListener as StdTcpListener;
use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fdholder::restart::{Holder, Origin};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The id the listener is held under.
pub const ID: &[u8] = b"http-service/listen";
/// How long the exchange with the holder may take.
const HOLDER_DEADLINE: Duration = Duration::from_secs(5);
/// How long the requests in progress at SIGTERM may take to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a connection accepted before SIGTERM may take to send its
/// first bytes.
const FIRST_BYTES: Duration = Duration::from_secs(1);

/// Runs the service (see the module's documentation) and exits.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: http_service HOLDER_SOCKET|- ADDR");
        return ExitCode::from(100);
    }
    // Blocking, before the runtime exists: the holder's connection is
    // opened and closed within this call.
    let (listener, how) = match listen(&args[1], &args[2]) {
        Ok(got) => got,
        Err(e) => {
            eprintln!("http_service: fatal: cannot listen on {}: {e}", args[2]);
            return ExitCode::from(111);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http_service: fatal: cannot start the runtime: {e}");
            return ExitCode::from(111);
        }
    };
    match rt.block_on(serve(listener, how)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("http_service: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

/// The listener: from the holder at `holder` (or bound and stored there),
/// or bound directly when `holder` is `-`; and how it was had.
fn listen(holder: &str, addr: &str) -> io::Result<(StdTcpListener, &'static str)> {
    if holder == "-" {
        return Ok((StdTcpListener::bind(addr)?, "bound"));
    }
    let (listener, origin) = Holder::new(holder)
        .deadline(Instant::now() + HOLDER_DEADLINE)
        .tcp_listener(ID, addr)?;
    let how = match origin {
        Origin::Created => "created",
        _ => "held",
    };
    Ok((listener, how))
}

/// Serves on `listener` until SIGTERM, then drains. `Ok(false)` when the
/// drain did not finish in time.
async fn serve(listener: StdTcpListener, how: &str) -> io::Result<bool> {
    // Before announcing readiness: a SIGTERM from then on is ours to handle.
    let mut term = signal(SignalKind::terminate())?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    println!(
        "http_service: pid {} serving on {local} ({how})",
        std::process::id()
    );
    // SIGTERM is sent on `stop`; every connection's task holds a receiver,
    // so `stop.closed()` is when they have all finished.
    let (stop, _) = watch::channel(());
    loop {
        // Whichever comes first: SIGTERM, or a connection.
        let next = poll_fn(|cx| {
            if term.poll_recv(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        match next {
            None => break,
            Some(Ok((stream, _peer))) => {
                tokio::spawn(connection(stream, stop.subscribe()));
            }
            Some(Err(e)) => {
                // EMFILE and the like: back off a little, keep serving.
                eprintln!("http_service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Stop accepting: close our copy (the holder keeps the socket).
    drop(listener);
    let _ = stop.send(());
    Ok(tokio::time::timeout(DRAIN, stop.closed()).await.is_ok())
}

/// Serves one connection; once `stop` changes, shuts it down gracefully
/// (after its first bytes, or [`FIRST_BYTES`] without any).
async fn connection(stream: TcpStream, mut stop: watch::Receiver<()>) {
    let seen = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Seen {
        inner: stream,
        seen: seen.clone(),
    });
    let mut conn = pin!(http1::Builder::new().serve_connection(io, service_fn(answer)));
    let result = {
        let mut stopped = pin!(stop.changed());
        poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            stopped.as_mut().poll(cx).map(|_| None)
        })
        .await
    };
    let result = match result {
        Some(r) => r,
        None => {
            // SIGTERM: wait (bounded) for the first bytes, then let hyper
            // finish what it has and close.
            let mut grace = pin!(tokio::time::sleep(FIRST_BYTES));
            let early = poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if seen.load(Ordering::Relaxed) || grace.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match early {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        eprintln!("http_service: connection: {e}");
    }
    // `stop` is dropped here: one connection fewer to wait for.
}

/// A connection's stream that records whether anything was read from it.
struct Seen {
    inner: TcpStream,
    seen: Arc<AtomicBool>,
}

impl AsyncRead for Seen {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Seen {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `GET /`: 200 with this process's pid and a newline.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => (StatusCode::OK, format!("{}\n", std::process::id())),
        (_, "/") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
