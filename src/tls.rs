//! TLS for the HTTP server and its clients, with rustls and its `ring`
//! provider (cargo feature `tls`, on by default).
//!
//! - [`ServerTls`]: the node's certificate chain and key (`http.tls-cert`,
//!   `http.tls-key`), loaded and checked against each other when the config
//!   is read; the server then speaks only TLS on its port.
//! - [`ClientTls`]: the CA certificates (`http.tls-ca`) that a replica, and
//!   `litefs import`/`export`, verify an `https://` node against. There is
//!   no built-in root store: a cluster names its own CA, and a certificate
//!   that does not chain to it, or does not name the host of the URL, ends
//!   the connection.
//!
//! Authentication stays the bearer token (`http.token`): TLS keeps it and
//! the databases off the wire in clear and proves the primary to the
//! replicas; client certificates are not used. A replica whose primary's
//! certificate does not verify retries as for any failed connection and
//! never falls back to `http://`. Consul is spoken to over `http://` only
//! (a local agent).
//!
//! The feature is on by default: it adds about 1.8 MB to the x86-64
//! release binary, little next to what even a small host's storage holds,
//! and a TLS-capable node then needs no special build. A root store is
//! left out on purpose: it would cost size and trust every public CA for
//! a cluster's internal traffic. Built without the feature, both types are
//! empty (no value exists) and their `load` says so: the config refuses
//! the TLS keys and `https://` URLs with that error.

use std::fmt;
use std::path::{Path, PathBuf};

/// Whether this binary was built with TLS (cargo feature `tls`).
pub const BUILT: bool = cfg!(feature = "tls");

/// A certificate or key file that cannot be used: the file and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for Error {}

fn error(path: &Path, message: impl Into<String>) -> Error {
    Error {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What is said when TLS is asked of a binary built without it.
pub const NOT_BUILT: &str = "this litefs was built without TLS (cargo feature `tls`); \
                             rebuild it with `--features tls`, or remove the TLS settings";

#[cfg(feature = "tls")]
pub use imp::{certificate_problem, ClientTls, ServerTls, TlsStream};

/// Why a node's certificate was refused, when `err` is that: said for an
/// operator (the CA file, the host), or `None` for any other failure.
#[cfg(not(feature = "tls"))]
pub fn certificate_problem(_err: &ureq::Error, _tls: Option<&ClientTls>) -> Option<String> {
    None
}

#[cfg(not(feature = "tls"))]
pub use none::{ClientTls, ServerTls};

#[cfg(feature = "tls")]
mod imp {
    use std::io::{self, Read};
    use std::net::TcpStream;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Instant;

    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::{error, Error};

    /// The largest PEM file read: a chain of a few certificates is a few
    /// KiB; anything near this is the wrong file.
    const MAX_PEM_LEN: u64 = 1 << 20;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Reads a PEM file whole (bounded), naming it in errors.
    fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PEM_LEN + 1).read_to_end(&mut bytes))
            .map_err(|err| error(path, format!("cannot read it: {err}")))?;
        if bytes.len() as u64 > MAX_PEM_LEN {
            return Err(error(
                path,
                format!(
                    "it is larger than {} KiB, which no PEM certificate or key file is",
                    MAX_PEM_LEN / 1024
                ),
            ));
        }
        Ok(bytes)
    }

    fn pem_error(path: &Path, what: &str, err: pem::Error) -> Error {
        error(path, format!("it is not a valid PEM file ({what}): {err}"))
    }

    /// Every `CERTIFICATE` block of `path`; at least one.
    fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
        let bytes = read_pem(path)?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| pem_error(path, "reading its certificates", err))?;
        if certs.is_empty() {
            return Err(error(
                path,
                "it holds no certificate (no `-----BEGIN CERTIFICATE-----` block)",
            ));
        }
        Ok(certs)
    }

    /// The server's certificate chain and key, ready to accept connections.
    #[derive(Clone)]
    pub struct ServerTls {
        cert: PathBuf,
        key: PathBuf,
        config: Arc<rustls::ServerConfig>,
    }

    impl ServerTls {
        /// Loads the chain in `cert` (the node's certificate first, then
        /// any intermediates) and the private key in `key` (PKCS#8, PKCS#1
        /// or SEC1 PEM), and checks that the key is the certificate's.
        pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, Error> {
            let chain = certificates(cert)?;
            let key_bytes = read_pem(key)?;
            let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| match err {
                pem::Error::NoItemsFound => error(
                    key,
                    "it holds no private key (no `-----BEGIN PRIVATE KEY-----`, \
                     `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
                ),
                other => pem_error(key, "reading its private key", other),
            })?;
            let config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|err| error(cert, format!("TLS set-up failed: {err}")))?
                .with_no_client_auth()
                .with_single_cert(chain, private)
                .map_err(|err| match err {
                    rustls::Error::InconsistentKeys(_) => error(
                        key,
                        format!(
                            "this key does not belong to the certificate in {}; give the \
                             certificate's own key",
                            cert.display()
                        ),
                    ),
                    rustls::Error::InvalidCertificate(why) => error(
                        cert,
                        format!("its first certificate cannot be used: {why:?}"),
                    ),
                    other => error(key, format!("the key cannot be used: {other}")),
                })?;
            // One request per connection (streams are long, CLI calls one
            // shot): resumption tickets would be work for nothing.
            let mut config = config;
            config.send_tls13_tickets = 0;
            Ok(ServerTls {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                config: Arc::new(config),
            })
        }

        /// The certificate file.
        pub fn cert_path(&self) -> &Path {
            &self.cert
        }

        /// Starts the server side of a TLS connection on `tcp`; nothing is
        /// read or written until the returned stream is used, and reads
        /// fail with `TimedOut` after the stream's deadline
        /// ([`TlsStream::set_deadline`]).
        pub(crate) fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
            let conn = rustls::ServerConnection::new(self.config.clone())
                .map_err(|err| io::Error::other(format!("TLS set-up failed: {err}")))?;
            Ok(TlsStream(rustls::StreamOwned::new(
                conn,
                Socket {
                    tcp,
                    deadline: None,
                },
            )))
        }
    }

    impl std::fmt::Debug for ServerTls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ServerTls")
                .field("cert", &self.cert)
                .field("key", &self.key)
                .finish()
        }
    }

    impl PartialEq for ServerTls {
        fn eq(&self, other: &ServerTls) -> bool {
            self.cert == other.cert && self.key == other.key
        }
    }

    impl Eq for ServerTls {}

    /// The socket under a server-side TLS stream. rustls may read the
    /// socket many times within one read of the stream (a record, or the
    /// handshake, trickling in a byte at a time), so a per-read timeout
    /// alone would not bound how long a slow client holds a connection:
    /// every read here fails once the deadline has passed.
    #[derive(Debug)]
    pub(crate) struct Socket {
        tcp: TcpStream,
        deadline: Option<Instant>,
    }

    impl Read for Socket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not send in time",
                ));
            }
            self.tcp.read(buf)
        }
    }

    impl io::Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tcp.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.tcp.flush()
        }
    }

    /// A server-side TLS connection.
    #[derive(Debug)]
    pub struct TlsStream(rustls::StreamOwned<rustls::ServerConnection, Socket>);

    impl TlsStream {
        /// The TCP connection underneath (for timeouts and shutdown).
        pub(crate) fn tcp(&self) -> &TcpStream {
            &self.0.sock.tcp
        }

        /// Reads fail with `TimedOut` from `deadline` on (`None`: never).
        pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
            self.0.sock.deadline = deadline;
        }

        /// Sends TLS's close_notify, so the client sees a clean end.
        pub(crate) fn close_notify(&mut self) {
            self.0.conn.send_close_notify();
            let _ = io::Write::flush(&mut self.0);
        }
    }

    impl Read for TlsStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl io::Write for TlsStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    /// Why a node's certificate was refused, when `err` is that: said for
    /// an operator (the CA file, the host), or `None` for any other
    /// failure.
    pub fn certificate_problem(err: &ureq::Error, tls: Option<&ClientTls>) -> Option<String> {
        let rustls_error = match err {
            ureq::Error::Rustls(e) => Some(e),
            ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
            _ => None,
        }?;
        let rustls::Error::InvalidCertificate(why) = rustls_error else {
            return None;
        };
        let ca = tls.map_or_else(
            || "http.tls-ca".to_string(),
            |t| format!("http.tls-ca {}", t.ca.display()),
        );
        use rustls::CertificateError as E;
        let reason = match why {
            E::UnknownIssuer => format!("it is not signed by a CA in {ca} (UnknownIssuer)"),
            E::NotValidForName | E::NotValidForNameContext { .. } => format!(
                "it does not name the URL's host, which it must hold as a DNS name or IP \
                 address ({why:?})"
            ),
            E::Expired | E::ExpiredContext { .. } => format!("it has expired ({why:?})"),
            E::NotValidYet | E::NotValidYetContext { .. } => {
                format!("it is not valid yet; check the clocks ({why:?})")
            }
            other => format!("{other:?}, checked against {ca}"),
        };
        Some(format!(
            "TLS: the node's certificate does not verify: {reason}"
        ))
    }

    /// The CA certificates a client verifies `https://` nodes against.
    #[derive(Clone)]
    pub struct ClientTls {
        ca: PathBuf,
        config: ureq::tls::TlsConfig,
    }

    impl ClientTls {
        /// Loads every certificate in the PEM file `ca`; each must be a
        /// certificate rustls can use as a trust anchor.
        pub fn load(ca: &Path) -> Result<ClientTls, Error> {
            let certs = certificates(ca)?;
            let mut store = rustls::RootCertStore::empty();
            for (i, cert) in certs.iter().enumerate() {
                store.add(cert.clone()).map_err(|err| {
                    error(
                        ca,
                        format!("certificate {} cannot be used as a CA: {err}", i + 1),
                    )
                })?;
            }
            let roots: Vec<ureq::tls::Certificate<'static>> = certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            let config = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(provider())
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build();
            Ok(ClientTls {
                ca: ca.to_path_buf(),
                config,
            })
        }

        /// The CA file.
        pub fn ca_path(&self) -> &Path {
            &self.ca
        }

        /// ureq's TLS settings: these CAs only, TLS 1.2 and 1.3, ring.
        pub(crate) fn ureq_config(&self) -> ureq::tls::TlsConfig {
            self.config.clone()
        }
    }

    impl std::fmt::Debug for ClientTls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClientTls").field("ca", &self.ca).finish()
        }
    }

    impl PartialEq for ClientTls {
        fn eq(&self, other: &ClientTls) -> bool {
            self.ca == other.ca
        }
    }

    impl Eq for ClientTls {}
}

#[cfg(not(feature = "tls"))]
mod none {
    use std::path::Path;

    use super::{error, Error, NOT_BUILT};

    /// No TLS in this build: no value of this type exists.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ServerTls {}

    impl ServerTls {
        /// Always refuses: this build has no TLS.
        pub fn load(cert: &Path, _key: &Path) -> Result<ServerTls, Error> {
            Err(error(cert, NOT_BUILT))
        }

        pub fn cert_path(&self) -> &Path {
            match *self {}
        }
    }

    /// No TLS in this build: no value of this type exists.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientTls {}

    impl ClientTls {
        /// Always refuses: this build has no TLS.
        pub fn load(ca: &Path) -> Result<ClientTls, Error> {
            Err(error(ca, NOT_BUILT))
        }

        pub fn ca_path(&self) -> &Path {
            match *self {}
        }
    }
}
