//! One client connection: whole messages in, replies out, file descriptors alongside.
//!
//! Every message is consumed exactly as its header declares (or the connection is dropped), so
//! whatever the peer sends, the next header is read where the sender put it. A message larger
//! than any valid request is refused before its payload is buffered; a message that stops
//! arriving half-way is given up on after [`PARTIAL_MESSAGE_TIMEOUT`]; a reply the peer does not
//! read is given up on after [`SEND_TIMEOUT`]. So a client can make the server hold at most one
//! message of [`MAX_MESSAGE`] bytes and [`MAX_MSG_FDS`] descriptors, and never block it forever.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::proto::{Header, HEADER_SIZE, MAX_MESSAGE, MAX_MSG_FDS};

/// How long the rest of a message may take once its first byte has arrived.
pub const PARTIAL_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may wait for room in the socket.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A message as received.
#[derive(Debug)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// Everything after the header (`header.size` - header bytes).
    pub payload: Vec<u8>,
    /// File descriptors that came with it (SCM_RIGHTS).
    pub fds: Vec<OwnedFd>,
    /// More descriptors came than [`MAX_MSG_FDS`]; the kernel closed the rest.
    pub fds_truncated: bool,
}

/// Why the connection ends.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The client closed the socket between messages.
    #[error("client closed the connection")]
    Closed,
    /// The client closed the socket inside a message.
    #[error("client closed the connection in the middle of a message")]
    Truncated,
    /// A header declares a size no message can have (the header fields as received).
    #[error("message {id} (command {command}) declares {size} bytes: not a valid message size")]
    #[allow(missing_docs)]
    BadSize { id: u16, command: u16, size: u32 },
    /// Half a message, and the rest did not come in time.
    #[error("message stalled: its remaining bytes did not arrive within {0:?}")]
    Stalled(Duration),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// One client connection: reads whole messages (with their file descriptors) and writes
/// replies, with time limits on both so a stalled client cannot hold the server.
pub struct Conn {
    sock: UnixStream,
}

impl Conn {
    /// Wraps a connected socket.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self { sock })
    }

    /// Receives the next whole message. `Err(BadSize)` leaves the connection unusable: the
    /// caller answers the header and drops it.
    pub fn recv(&mut self) -> Result<Message, ConnError> {
        let mut fds = Vec::new();
        let mut truncated = false;
        let mut hdr = [0u8; HEADER_SIZE];
        // Between messages the client may be idle for as long as it likes.
        let n = self.recv_some(&mut hdr, &mut fds, &mut truncated, None)?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        let deadline = Instant::now() + PARTIAL_MESSAGE_TIMEOUT;
        self.recv_exact(&mut hdr[n..], &mut fds, &mut truncated, deadline)?;
        let header = Header::decode(&hdr);
        if (header.size as usize) < HEADER_SIZE || header.size > MAX_MESSAGE {
            return Err(ConnError::BadSize {
                id: header.id,
                command: header.command,
                size: header.size,
            });
        }
        let mut payload = vec![0u8; header.size as usize - HEADER_SIZE];
        self.recv_exact(&mut payload, &mut fds, &mut truncated, deadline)?;
        Ok(Message {
            header,
            payload,
            fds,
            fds_truncated: truncated,
        })
    }

    fn recv_exact(
        &self,
        mut buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        truncated: &mut bool,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        while !buf.is_empty() {
            let n = self.recv_some(buf, fds, truncated, Some(deadline))?;
            if n == 0 {
                return Err(ConnError::Truncated);
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// One recvmsg(2), collecting any descriptors that come with the bytes. With a deadline it
    /// never blocks past it.
    fn recv_some(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        truncated: &mut bool,
        deadline: Option<Instant>,
    ) -> Result<usize, ConnError> {
        const CMSG_SPACE: usize = 64 + MAX_MSG_FDS * 4;
        let mut cmsg = [0u64; CMSG_SPACE / 8];
        loop {
            if let Some(d) = deadline {
                self.wait_readable(d)?;
            }
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
            // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen bytes
            // into cmsg, both owned by this frame.
            let n = unsafe {
                libc::recvmsg(
                    self.sock.as_raw_fd(),
                    &mut msg,
                    libc::MSG_CMSG_CLOEXEC
                        | if deadline.is_some() {
                            libc::MSG_DONTWAIT
                        } else {
                            0
                        },
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    io::ErrorKind::ConnectionReset => return Ok(0),
                    _ => return Err(e.into()),
                }
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                *truncated = true;
            }
            // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled in, within
            // msg_controllen; SCM_RIGHTS payloads are arrays of descriptors now owned by us.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(c).cast::<i32>();
                        let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                        for i in 0..len / 4 {
                            let fd = data.add(i).read_unaligned();
                            let fd = OwnedFd::from_raw_fd(fd);
                            if fds.len() < MAX_MSG_FDS {
                                fds.push(fd);
                            } else {
                                *truncated = true;
                            }
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            return Ok(n as usize);
        }
    }

    fn wait_readable(&self, deadline: Instant) -> Result<(), ConnError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Stalled(PARTIAL_MESSAGE_TIMEOUT));
            }
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one pollfd on the stack.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r > 0 {
                return Ok(());
            }
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(io::Error::last_os_error().into());
            }
        }
    }

    /// Sends one message (header and payload in one write).
    pub fn send(&mut self, header: &Header, payload: &[u8]) -> Result<(), ConnError> {
        use std::io::Write;
        let mut buf = Vec::with_capacity(HEADER_SIZE + payload.len());
        buf.extend_from_slice(&header.encode());
        buf.extend_from_slice(payload);
        self.sock.write_all(&buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Stalled(SEND_TIMEOUT),
            _ => ConnError::Io(e),
        })
    }
}
