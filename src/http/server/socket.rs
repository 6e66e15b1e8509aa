//! A server connection, plain TCP or TLS: the rest of the server reads
//! and writes it the same way, and sets timeouts on the TCP connection
//! underneath.
//!
//! With TLS the handshake happens in the first read, that of the request
//! head, so it counts against the same deadline (`Limits::head_timeout`):
//! a client that handshakes slowly, or not at all, holds its slot no
//! longer than one that sends its head slowly. A node with a certificate
//! speaks only TLS: a plain HTTP request fails the handshake and gets no
//! answer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

#[cfg(feature = "tls")]
use crate::tls::TlsStream;

/// One accepted connection.
#[derive(Debug)]
pub(in crate::http) enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

impl Conn {
    /// Wraps `tcp`, in TLS when `tls` is given (nothing is sent yet).
    pub(super) fn new(tcp: TcpStream, tls: Option<&crate::tls::ServerTls>) -> io::Result<Conn> {
        match tls {
            None => Ok(Conn::Plain(tcp)),
            #[cfg(feature = "tls")]
            Some(tls) => Ok(Conn::Tls(Box::new(tls.accept(tcp)?))),
            #[cfg(not(feature = "tls"))]
            Some(tls) => match *tls {},
        }
    }

    /// The TCP connection underneath.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.tcp(),
        }
    }

    /// Whether this connection speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }

    /// From `deadline` on, reads fail with `TimedOut`, however the bytes
    /// trickle in. A plain connection needs none: each of its reads is
    /// one read of the socket, whose timeout the caller sets.
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            Conn::Plain(_) => {}
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.set_deadline(deadline),
        }
        let _ = deadline;
    }

    /// Ends the connection after an answer: TLS's close_notify, then FIN,
    /// so the client sees the end of the answer even if it sent bytes
    /// that were never read.
    pub(super) fn close(&mut self) {
        #[cfg(feature = "tls")]
        if let Conn::Tls(tls) = self {
            tls.close_notify();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.read(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.write(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.flush(),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

impl From<TcpStream> for Conn {
    fn from(tcp: TcpStream) -> Conn {
        Conn::Plain(tcp)
    }
}

/// Sets the TCP socket option `opt` of `fd` to `value` (std offers only a
/// few of them).
pub(in crate::http) fn set_tcp_option(
    fd: std::os::fd::RawFd,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `fd` is a socket the caller owns; a pointer to a c_int of the
    // given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
