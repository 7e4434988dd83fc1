//! The vfio-user message layer, rule by rule, against a real `dmalab-device` process over its
//! real socket. Each test quotes the sentence of QEMU's `docs/interop/vfio-user.rst` (or the
//! limit of `docs/reliability.md`) it checks. A raw client: nothing here trusts a library to
//! build the messages, so malformed ones can be sent on purpose.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dmalab_abi as abi;

const VERSION: u16 = 1;
const DMA_MAP: u16 = 2;
const DMA_UNMAP: u16 = 3;
const GET_INFO: u16 = 4;
const GET_REGION_INFO: u16 = 5;
const SET_IRQS: u16 = 8;
const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const DMA_READ: u16 = 11;
const DEVICE_FEATURE: u16 = 16;
const NO_REPLY: u32 = 1 << 4;
const ERROR: u32 = 1 << 5;
const BAR0: u32 = 0;
/// The PCI configuration space region.
const CONFIG: u32 = 7;
const MSIX: u32 = 2;

struct Server {
    child: Child,
    dir: PathBuf,
}

impl Server {
    fn start(name: &str) -> (Self, Client) {
        let dir = std::env::temp_dir().join(format!("dmalab-proto-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("dev.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_dmalab-device"))
            .arg("--socket")
            .arg(&sock)
            .args(["--queues", "1", "--mem-size", "1M", "--log-level", "warn"])
            .arg("--event-log")
            .arg(dir.join("events.jsonl"))
            .stderr(File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            assert!(Instant::now() < deadline, "no socket after 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (Self { child, dir }, Client { s, next_id: 1 })
    }

    /// The server's exit status once the client has gone: it must leave cleanly (never a panic,
    /// exit status 101), whatever the client sent.
    fn finish(mut self, client: Client) {
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
                assert!(st.success(), "server exited with {st:?}; stderr:\n{log}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after the client left"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Reply {
    id: u16,
    command: u16,
    flags: u32,
    error: u32,
}

impl Reply {
    fn errno(&self) -> Option<i32> {
        (self.flags & ERROR != 0).then_some(self.error as i32)
    }
}

struct Client {
    s: UnixStream,
    next_id: u16,
}

fn header(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn le32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Client {
    /// Sends raw bytes with descriptors attached (SCM_RIGHTS).
    fn send_raw(&mut self, bytes: &[u8], fds: &[i32]) {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; the pointers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is pure arithmetic.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
            // SAFETY: the control buffer is large enough for one header and the fds.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
            }
        }
        // SAFETY: sendmsg reads the buffers described above.
        let n = unsafe { libc::sendmsg(self.s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        assert_eq!(n, bytes.len() as isize, "sendmsg");
    }

    /// Sends a command; returns its id.
    fn send(&mut self, command: u16, flags: u32, payload: &[u8], fds: &[i32]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut m = header(id, command, 16 + payload.len() as u32, flags);
        m.extend_from_slice(payload);
        self.send_raw(&m, fds);
        id
    }

    fn recv(&mut self) -> (Reply, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).expect("a reply");
        let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        assert!((16..=(2 << 20)).contains(&size), "reply size {size}");
        let mut p = vec![0u8; size - 16];
        self.s.read_exact(&mut p).unwrap();
        let r = Reply {
            id: u16::from_le_bytes(h[0..2].try_into().unwrap()),
            command: u16::from_le_bytes(h[2..4].try_into().unwrap()),
            flags: u32::from_le_bytes(h[8..12].try_into().unwrap()),
            error: u32::from_le_bytes(h[12..16].try_into().unwrap()),
        };
        assert_eq!(r.flags & 0xf, 1, "a reply: {r:?}");
        (r, p)
    }

    /// Sends a command and returns its reply, checking that the reply is to this command.
    fn call(&mut self, command: u16, payload: &[u8], fds: &[i32]) -> (Reply, Vec<u8>) {
        let id = self.send(command, 0, payload, fds);
        let (r, p) = self.recv();
        assert_eq!((r.id, r.command), (id, command), "reply out of step: {r:?}");
        if r.errno().is_some() {
            assert!(
                p.is_empty(),
                "\"If an error occurs, the reply message must only include the reply header.\""
            );
        }
        (r, p)
    }

    fn negotiate(&mut self) -> serde_json::Value {
        let caps = br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096,"max_bitmap_size":268435456},"write_multiple":true}}"#;
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(caps);
        p.push(0);
        let (r, reply) = self.call(VERSION, &p, &[]);
        assert_eq!(r.errno(), None);
        version_json(&reply)
    }

    /// The connection is in step: a fresh query gets its own reply.
    fn assert_in_step(&mut self) {
        let (r, p) = self.call(GET_INFO, &le32s(&[16, 0, 0, 0]), &[]);
        assert_eq!(r.errno(), None);
        assert_eq!(p.len(), 16);
    }

    /// The server closed the connection.
    fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        assert_eq!(self.s.read(&mut b).unwrap_or(0), 0, "connection still open");
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Reply {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&le32s(&[region, data.len() as u32]));
        p.extend_from_slice(data);
        self.call(REGION_WRITE, &p, &[]).0
    }

    fn reg_read(&mut self, off: usize) -> u32 {
        let mut p = (off as u64).to_le_bytes().to_vec();
        p.extend_from_slice(&le32s(&[BAR0, 4]));
        let (r, data) = self.call(REGION_READ, &p, &[]);
        assert_eq!(r.errno(), None);
        u32::from_le_bytes(data[16..20].try_into().unwrap())
    }

    fn reg_write(&mut self, off: usize, v: u32) {
        let r = self.region_write(BAR0, off as u64, &v.to_le_bytes());
        assert_eq!(r.errno(), None);
    }

    /// Writes the PCI command register: memory decoding, plus bus mastering if `master`.
    fn command(&mut self, master: bool) {
        let v: u16 = if master { 0x6 } else { 0x2 };
        let r = self.region_write(CONFIG, 0x04, &v.to_le_bytes());
        assert_eq!(r.errno(), None);
    }

    fn dma_map(
        &mut self,
        flags: u32,
        offset: u64,
        addr: u64,
        size: u64,
        fd: Option<&File>,
    ) -> Reply {
        let mut p = le32s(&[32, flags]);
        for v in [offset, addr, size] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.call(DMA_MAP, &p, &fds).0
    }

    fn dma_unmap(&mut self, flags: u32, addr: u64, size: u64) -> Reply {
        let mut p = le32s(&[24, flags]);
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        self.call(DMA_UNMAP, &p, &[]).0
    }
}

fn version_json(reply: &[u8]) -> serde_json::Value {
    assert!(reply.len() > 4);
    assert_eq!(u16::from_le_bytes([reply[0], reply[1]]), 0, "major");
    assert_eq!(
        *reply.last().unwrap(),
        0,
        "version data must end with its NUL"
    );
    serde_json::from_slice(&reply[4..reply.len() - 1]).unwrap()
}

fn memfd(size: u64, seal: bool) -> File {
    // SAFETY: memfd_create with a static name; the File owns the descriptor.
    let fd = unsafe { libc::memfd_create(c"dmalab-proto".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    if seal {
        // SAFETY: sealing our own memfd.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) },
            0
        );
    }
    f
}

fn eventfd() -> File {
    // SAFETY: eventfd(2); the File owns the descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor.
    unsafe { File::from_raw_fd(fd) }
}

// ---- VERSION ----

#[test]
fn version_data_is_optional() {
    // "version data | 4 | variable (including terminating NUL). Optional."
    let (srv, mut c) = Server::start("v-nodata");
    let (r, p) = c.call(VERSION, &[0, 0, 0, 0], &[]);
    assert_eq!(r.errno(), None);
    let v = version_json(&p);
    // "The capability list must be a subset of those proposed": none were.
    assert_eq!(v["capabilities"], serde_json::json!({}));
    c.assert_in_step();
    srv.finish(c);
}

#[test]
fn version_reply_capabilities_are_a_subset_of_the_proposal() {
    // "The capability list must be a subset of those proposed."
    let (srv, mut c) = Server::start("v-subset");
    let v = c.negotiate();
    let caps = v["capabilities"].as_object().unwrap();
    assert!(!caps.contains_key("migration"), "{v}");
    assert!(!caps.contains_key("write_multiple"), "{v}");
    assert_eq!(caps["max_data_xfer_size"], 1 << 20);
    assert!(
        caps["max_msg_fds"].as_u64().unwrap() <= 16,
        "QEMU refuses more than 16"
    );
    srv.finish(c);
}

#[test]
fn version_data_without_nul_or_not_json_is_refused_without_a_crash() {
    for (name, data) in [
        ("v-nonul", &br#"{"capabilities":{}}"#[..]),
        ("v-notjson", &b"{capabilities\0"[..]),
        ("v-array", &b"[1,2]\0"[..]),
    ] {
        let (srv, mut c) = Server::start(name);
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(data);
        let (r, _) = c.call(VERSION, &p, &[]);
        assert_eq!(r.errno(), Some(libc::EINVAL), "{name}");
        c.assert_closed();
        srv.finish(c);
    }
}

#[test]
fn version_shorter_than_its_fixed_part_is_refused_without_a_crash() {
    let (srv, mut c) = Server::start("v-short");
    let (r, _) = c.call(VERSION, &[0, 0], &[]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    c.assert_closed();
    srv.finish(c);
}

#[test]
fn a_header_arriving_in_two_writes_is_one_message() {
    let (srv, mut c) = Server::start("v-split");
    let mut m = header(7, VERSION, 20, 0);
    m.extend_from_slice(&[0, 0, 0, 0]);
    c.send_raw(&m[..5], &[]);
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&m[5..], &[]);
    let (r, _) = c.recv();
    assert_eq!((r.id, r.errno()), (7, None));
    srv.finish(c);
}

#[test]
fn an_unknown_major_version_is_refused_and_the_connection_closed() {
    // "The server replies with a compatible version ... or closes the connection if it cannot
    // support the advertised version."
    let (srv, mut c) = Server::start("v-major");
    let (r, _) = c.call(VERSION, &[1, 0, 0, 0], &[]);
    assert!(r.errno().is_some());
    c.assert_closed();
    srv.finish(c);
}

#[test]
fn commands_before_version_are_refused() {
    // "the initial client message is VFIO_USER_VERSION"
    let (srv, mut c) = Server::start("v-first");
    let (r, _) = c.call(GET_INFO, &le32s(&[16, 0, 0, 0]), &[]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    c.negotiate();
    c.assert_in_step();
    srv.finish(c);
}

// ---- framing: the declared size is always consumed ----

#[test]
fn refused_commands_consume_their_payload() {
    let (srv, mut c) = Server::start("f-consume");
    c.negotiate();
    // An unsupported command whose payload looks like headers.
    let evil = header(0x4141, DMA_MAP, 48, 0).repeat(4);
    let (r, _) = c.call(DEVICE_FEATURE, &evil, &[]);
    assert_eq!(r.errno(), Some(libc::ENOTSUP));
    c.assert_in_step();
    // A server-to-client command sent the wrong way.
    let (r, _) = c.call(DMA_READ, &[0u8; 16], &[]);
    assert!(r.errno().is_some());
    c.assert_in_step();
    // REGION_WRITE to a region that does not exist, or is empty (8: VGA).
    for region in [99, 8] {
        let r = c.region_write(region, 0, &evil);
        assert_eq!(r.errno(), Some(libc::EINVAL));
        c.assert_in_step();
    }
    // SET_IRQS with boolean data.
    // (one queue: MSI-X has 2 vectors)
    let mut p = le32s(&[22, (1 << 1) | (1 << 5), MSIX, 0, 2]);
    p.extend_from_slice(&[1, 0]);
    let (r, _) = c.call(SET_IRQS, &p, &[]);
    assert_eq!(r.errno(), None);
    c.assert_in_step();
    // A command number nobody defined.
    let (r, _) = c.call(999, &evil, &[]);
    assert!(r.errno().is_some());
    c.assert_in_step();
    srv.finish(c);
}

#[test]
fn no_reply_means_no_reply_even_for_queries_and_errors() {
    // "No_reply in a command message indicates that no reply is needed for this command."
    let (srv, mut c) = Server::start("f-noreply");
    c.negotiate();
    c.send(GET_INFO, NO_REPLY, &le32s(&[16, 0, 0, 0]), &[]);
    c.send(DEVICE_FEATURE, NO_REPLY, &[0u8; 8], &[]);
    let mut p = 0u64.to_le_bytes().to_vec();
    p.extend_from_slice(&le32s(&[BAR0, 4]));
    p.extend_from_slice(&1u32.to_le_bytes());
    c.send(REGION_WRITE, NO_REPLY, &p, &[]);
    // The next reply must be to this command.
    c.assert_in_step();
    srv.finish(c);
}

#[test]
fn region_write_count_must_match_the_message_size() {
    let (srv, mut c) = Server::start("f-count");
    c.negotiate();
    for (count, data) in [(4096u32, 4usize), (4, 8), (0, 0)] {
        let mut p = (abi::REG_IRQ_COALESCE as u64).to_le_bytes().to_vec();
        p.extend_from_slice(&le32s(&[BAR0, count]));
        p.extend_from_slice(&vec![0x55; data]);
        let (r, _) = c.call(REGION_WRITE, &p, &[]);
        assert_eq!(r.errno(), Some(libc::EINVAL), "count {count}, {data} bytes");
        c.assert_in_step();
    }
    srv.finish(c);
}

#[test]
fn region_accesses_are_bounded_by_the_region_and_the_transfer_maximum() {
    // "The count field must not exceed the value of max_data_xfer_size of the peer"
    let (srv, mut c) = Server::start("f-bounds");
    c.negotiate();
    for (offset, count) in [
        (0u64, u32::MAX),
        (0, (1 << 20) + 1),
        (abi::BAR0_SIZE as u64 - 4, 8),
        (u64::MAX - 3, 4),
    ] {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&le32s(&[BAR0, count]));
        let (r, _) = c.call(REGION_READ, &p, &[]);
        assert_eq!(r.errno(), Some(libc::EINVAL), "{offset:#x}+{count:#x}");
    }
    let mut p = (abi::REG_ID as u64).to_le_bytes().to_vec();
    p.extend_from_slice(&le32s(&[BAR0, 4]));
    let (r, data) = c.call(REGION_READ, &p, &[]);
    assert_eq!(r.errno(), None);
    assert_eq!(&data[16..], &abi::DEVICE_MAGIC.to_le_bytes());
    srv.finish(c);
}

#[test]
fn argsz_smaller_than_the_reply_is_refused() {
    // "argsz is the maximum size of the reply payload"
    let (srv, mut c) = Server::start("f-argsz");
    c.negotiate();
    let (r, _) = c.call(GET_INFO, &le32s(&[8, 0, 0, 0]), &[]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    let (r, p) = c.call(GET_REGION_INFO, &le32s(&[32, 0, BAR0, 0, 0, 0, 0, 0]), &[]);
    assert_eq!(r.errno(), None);
    assert_eq!(
        u64::from_le_bytes(p[16..24].try_into().unwrap()),
        abi::BAR0_SIZE as u64
    );
    let (r, _) = c.call(GET_REGION_INFO, &le32s(&[32, 0, 99, 0, 0, 0, 0, 0]), &[]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    srv.finish(c);
}

#[test]
fn an_oversized_message_is_refused_and_the_connection_closed() {
    let (srv, mut c) = Server::start("f-huge");
    c.negotiate();
    c.send_raw(&header(9, REGION_WRITE, 0x7fff_ffff, 0), &[]);
    let (r, _) = c.recv();
    assert_eq!((r.id, r.errno()), (9, Some(libc::E2BIG)));
    c.assert_closed();
    srv.finish(c);
}

#[test]
fn a_message_that_stops_half_way_does_not_block_the_server_forever() {
    let (srv, mut c) = Server::start("f-stall");
    c.negotiate();
    // Declares 64 bytes, sends 20.
    let mut m = header(3, REGION_WRITE, 64, 0);
    m.extend_from_slice(&[0; 4]);
    c.send_raw(&m, &[]);
    let t = Instant::now();
    c.assert_closed();
    assert!(t.elapsed() < Duration::from_secs(25));
    srv.finish(c);
}

// ---- DMA_MAP / DMA_UNMAP ----

#[test]
fn an_overlapping_map_fails_with_eexist() {
    // "A command to map over an existing region must be failed by the server with EEXIST"
    let (srv, mut c) = Server::start("m-overlap");
    c.negotiate();
    let f = memfd(0x10000, true);
    assert_eq!(c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(), None);
    assert_eq!(
        c.dma_map(3, 0, 0x10_8000, 0x10000, Some(&f)).errno(),
        Some(libc::EEXIST)
    );
    srv.finish(c);
}

#[test]
fn unmap_all_uses_the_linux_flag_value_and_removes_everything() {
    // VFIO_DMA_UNMAP_FLAG_ALL is 1 << 1 in <linux/vfio.h>, libvfio-user and QEMU.
    let (srv, mut c) = Server::start("m-all");
    c.negotiate();
    let f = memfd(0x20000, true);
    assert_eq!(c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(), None);
    assert_eq!(
        c.dma_map(3, 0x10000, 0x40_0000, 0x10000, Some(&f)).errno(),
        None
    );
    // An undefined flag bit removes nothing.
    assert_eq!(c.dma_unmap(1 << 2, 0, 0).errno(), Some(libc::EINVAL));
    assert_eq!(
        c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(),
        Some(libc::EEXIST)
    );
    // The dirty bitmap (migration) is not offered.
    assert_eq!(
        c.dma_unmap(1 << 0, 0x10_0000, 0x10000).errno(),
        Some(libc::ENOTSUP)
    );
    assert_eq!(c.dma_unmap(1 << 1, 0, 0).errno(), None);
    assert_eq!(c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(), None);
    assert_eq!(
        c.dma_map(3, 0x10000, 0x40_0000, 0x10000, Some(&f)).errno(),
        None
    );
    srv.finish(c);
}

#[test]
fn a_partial_unmap_is_refused() {
    // "The address and size of the DMA region being unmapped must match exactly a previous
    // mapping." (Ranges covering whole mappings are accepted as in the Linux ioctl, for QEMU's
    // vIOMMU invalidations; splitting one never is.)
    let (srv, mut c) = Server::start("m-partial");
    c.negotiate();
    let f = memfd(0x10000, true);
    assert_eq!(c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(), None);
    assert_eq!(
        c.dma_unmap(0, 0x10_4000, 0x1000).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&f)).errno(),
        Some(libc::EEXIST)
    );
    assert_eq!(c.dma_unmap(0, 0x10_0000, 0x10000).errno(), None);
    srv.finish(c);
}

#[test]
fn a_file_that_cannot_back_the_map_is_refused() {
    let (srv, mut c) = Server::start("m-backing");
    c.negotiate();
    let small = memfd(0x1000, true);
    assert_eq!(
        c.dma_map(3, 0, 0x10_0000, 0x10000, Some(&small)).errno(),
        Some(libc::EINVAL)
    );
    // a file that can shrink is served (tests/unsealed.rs), at an address nothing else uses
    let unsealed = memfd(0x10000, false);
    assert_eq!(
        c.dma_map(3, 0, 0x80_0000, 0x10000, Some(&unsealed)).errno(),
        None
    );
    // Misaligned or wrapping requests.
    let f = memfd(0x10000, true);
    assert_eq!(
        c.dma_map(3, 0, 0x10_0010, 0x1000, Some(&f)).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.dma_map(3, 0, u64::MAX - 0xfff, 0x2000, Some(&f)).errno(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.dma_map(1 << 7 | 3, 0, 0x10_0000, 0x1000, Some(&f))
            .errno(),
        Some(libc::EINVAL)
    );
    srv.finish(c);
}

/// Programs queue 0 with its rings at `ring` (inside the mapped memfd) and posts one FILL of
/// `len` bytes at `dst`, as a driver does: with bus mastering on.
fn post_fill(c: &mut Client, mem: &File, ring: u64, iova: u64, dst: u64, len: u32) {
    c.command(true);
    post_fill_as_is(c, mem, ring, iova, dst, len);
}

/// [`post_fill`] leaving the command register alone.
fn post_fill_as_is(c: &mut Client, mem: &File, ring: u64, iova: u64, dst: u64, len: u32) {
    use std::os::unix::fs::FileExt;
    let d = dmalab_device::testing::desc(abi::OP_FILL, 1, len, 0, dst);
    let mut d = d;
    d.pattern = 0x5a5a_5a5a;
    mem.write_all_at(&dmalab_device::wire::encode_descriptor(&d), ring - iova)
        .unwrap();
    let q = |r| abi::queue_reg(0, r);
    c.reg_write(q(abi::Q_SQ_BASE_LO), ring as u32);
    c.reg_write(q(abi::Q_SQ_BASE_HI), (ring >> 32) as u32);
    let cq = ring + 0x1000;
    c.reg_write(q(abi::Q_CQ_BASE_LO), cq as u32);
    c.reg_write(q(abi::Q_CQ_BASE_HI), (cq >> 32) as u32);
    c.reg_write(q(abi::Q_SIZE), 4);
    c.reg_write(q(abi::Q_CTRL), abi::QCTRL_ENABLE);
    c.reg_write(q(abi::Q_SQ_TAIL), 1);
}

/// PCI: a device may read or write memory only while Bus Master Enable is set. Without it
/// the doorbell fetches nothing and the FILL waits; the driver enabling bus mastering lets it
/// run.
#[test]
fn no_dma_without_bus_mastering() {
    use std::os::unix::fs::FileExt;
    let (srv, mut c) = Server::start("m-master");
    c.negotiate();
    let (size, iova) = (1u64 << 20, 0x1_0000_0000u64);
    let mem = memfd(size, true);
    assert_eq!(c.dma_map(3, 0, iova, size, Some(&mem)).errno(), None);
    let dst = iova + 0x8_0000;
    c.command(false);
    post_fill_as_is(&mut c, &mem, iova, iova, dst, 4096);
    // the reply to the doorbell's REGION_WRITE comes after the worker was kicked; give it time
    // to do what it must not
    std::thread::sleep(Duration::from_millis(500));
    let mut b = vec![0u8; 4096];
    mem.read_exact_at(&mut b, dst - iova).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "the device wrote guest memory without bus mastering"
    );
    let cq = abi::queue_reg(0, abi::Q_CQ_TAIL);
    assert_eq!(
        c.reg_read(cq),
        0,
        "a completion was written without bus mastering"
    );
    c.command(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.reg_read(cq) == 0 {
        assert!(
            Instant::now() < deadline,
            "the FILL never ran once bus mastering was on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    mem.read_exact_at(&mut b, dst - iova).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    srv.finish(c);
}

#[test]
fn unmap_replies_only_after_dma_into_the_range_has_stopped() {
    // "the server must release all references to that DMA region before replying, which
    // potentially includes in-flight DMA transactions."
    use std::os::unix::fs::FileExt;
    let (srv, mut c) = Server::start("m-inflight");
    c.negotiate();
    let size = 80u64 << 20;
    let iova = 0x1_0000_0000u64;
    let mem = memfd(size, true);
    assert_eq!(c.dma_map(3, 0, iova, size, Some(&mem)).errno(), None);
    let dst = iova + (8 << 20);
    let len = abi::MAX_TRANSFER;
    post_fill(&mut c, &mem, iova, iova, dst, len);
    // Wait for the device to start writing, then take the memory away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut b = [0u8; 1];
    loop {
        mem.read_exact_at(&mut b, dst - iova).unwrap();
        if b[0] == 0x5a {
            break;
        }
        assert!(Instant::now() < deadline, "FILL never started");
    }
    assert_eq!(c.dma_unmap(0, iova, size).errno(), None);
    let mut before = vec![0u8; len as usize];
    mem.read_exact_at(&mut before, dst - iova).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut after = vec![0u8; len as usize];
    mem.read_exact_at(&mut after, dst - iova).unwrap();
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(
        changed, 0,
        "{changed} bytes were written after the UNMAP reply"
    );
    srv.finish(c);
}

// ---- interrupts ----

#[test]
fn only_eventfds_are_accepted_for_interrupts() {
    let (srv, mut c) = Server::start("i-pipe");
    c.negotiate();
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors owned from here on.
    let (_r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let p = le32s(&[20, (1 << 2) | (1 << 5), MSIX, 0, 1]);
    let (r, _) = c.call(SET_IRQS, &p, &[fds[1]]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    // More descriptors than the count.
    let (e1, e2) = (eventfd(), eventfd());
    let (r, _) = c.call(SET_IRQS, &p, &[e1.as_raw_fd(), e2.as_raw_fd()]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    // Past the index's count.
    let p = le32s(&[20, (1 << 2) | (1 << 5), MSIX, 1, 100]);
    let (r, _) = c.call(SET_IRQS, &p, &[]);
    assert_eq!(r.errno(), Some(libc::EINVAL));
    srv.finish(c);
}

#[test]
fn a_full_interrupt_eventfd_never_blocks_the_server() {
    let (srv, mut c) = Server::start("i-full");
    c.negotiate();
    let (mut e0, mut e1) = (eventfd(), eventfd());
    let p = le32s(&[20, (1 << 2) | (1 << 5), MSIX, 0, 2]);
    let (r, _) = c.call(SET_IRQS, &p, &[e0.as_raw_fd(), e1.as_raw_fd()]);
    assert_eq!(r.errno(), None);
    // The counter's maximum: one more signal would block a blocking writer.
    e0.write_all(&(u64::MAX - 1).to_le_bytes()).unwrap();
    e1.write_all(&(u64::MAX - 1).to_le_bytes()).unwrap();
    // The device raises its error vector (1 with one queue) for a doorbell on a disabled
    // queue, from inside the REGION_WRITE that rings it (an MSI-X message: bus mastering on).
    c.command(true);
    c.reg_write(abi::queue_reg(0, abi::Q_SQ_TAIL), 1);
    assert_ne!(c.reg_read(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    // And the client triggers vector 0 itself (DATA_NONE | TRIGGER).
    let p = le32s(&[20, 1 | (1 << 5), MSIX, 0, 1]);
    let (r, _) = c.call(SET_IRQS, &p, &[]);
    assert_eq!(r.errno(), None);
    c.assert_in_step();
    srv.finish(c);
}

/// A non-blocking eventfd and a reader of its counter (0 when nothing was signalled).
fn counted_eventfd() -> (File, impl Fn(&File) -> u64) {
    // SAFETY: eventfd(2); the File owns the descriptor.
    let f = unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        assert!(fd >= 0);
        File::from_raw_fd(fd)
    };
    let count = |f: &File| {
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        }
    };
    (f, count)
}

/// Issue 25, item 5: a client's TRIGGER signals the interrupt it names: INTx's or MSI's own
/// eventfd, or MSI-X vector k's, never the MSI-X vector that happens to share the sub-index.
#[test]
fn a_client_trigger_signals_the_index_it_names() {
    let (srv, mut c) = Server::start("i-trigger");
    c.negotiate();
    c.command(true);
    let (x0, count) = counted_eventfd();
    let (x1, _) = counted_eventfd();
    let (intx, _) = counted_eventfd();
    let (msi, _) = counted_eventfd();
    let assign = |index: u32, count: u32| le32s(&[20, (1 << 2) | (1 << 5), index, 0, count]);
    for (index, fds) in [
        (MSIX, vec![x0.as_raw_fd(), x1.as_raw_fd()]),
        (0, vec![intx.as_raw_fd()]),
        (1, vec![msi.as_raw_fd()]),
    ] {
        let (r, _) = c.call(SET_IRQS, &assign(index, fds.len() as u32), &fds);
        assert_eq!(r.errno(), None, "assign index {index}");
    }
    let trigger = |index: u32, sub: u32| le32s(&[20, 1 | (1 << 5), index, sub, 1]);
    let expect = |c: &mut Client, index: u32, sub: u32, fired: &File, name: &str| {
        let (r, _) = c.call(SET_IRQS, &trigger(index, sub), &[]);
        assert_eq!(r.errno(), None);
        let counts = [&x0, &x1, &intx, &msi].map(&count);
        let want = [&x0, &x1, &intx, &msi].map(|f| u64::from(std::ptr::eq(f, fired)));
        assert_eq!(counts, want, "TRIGGER on {name}: [msix0, msix1, intx, msi]");
    };
    expect(&mut c, 0, 0, &intx, "INTx");
    expect(&mut c, 1, 0, &msi, "MSI");
    expect(&mut c, MSIX, 1, &x1, "MSI-X vector 1");
    expect(&mut c, MSIX, 0, &x0, "MSI-X vector 0");
    srv.finish(c);
}

/// Guest RAM on a file the client can shrink (`memory-backend-file`, or a memfd without seals):
/// served like any other; and when the client shrinks the file under a mapping, a descriptor
/// whose destination lies past the new end completes with `DMA_FAULT` (the access is recovered
/// from, not a SIGBUS that kills the server), and the server goes on serving.
#[test]
fn a_shrunk_backing_file_fails_the_descriptor_not_the_server() {
    use std::os::unix::fs::FileExt;
    let (srv, mut c) = Server::start("m-unsealed");
    c.negotiate();
    let (size, iova) = (1u64 << 20, 0x1_0000_0000u64);
    let mem = memfd(size, false);
    assert_eq!(c.dma_map(3, 0, iova, size, Some(&mem)).errno(), None);
    // the client takes the second half away; the rings stay in the first
    mem.set_len(size / 2).unwrap();
    let dst = iova + 0xc_0000;
    post_fill(&mut c, &mem, iova, iova, dst, 4096);
    let cq = abi::queue_reg(0, abi::Q_CQ_TAIL);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.reg_read(cq) == 0 {
        assert!(Instant::now() < deadline, "the FILL never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut raw = [0u8; abi::COMPLETION_SIZE];
    mem.read_exact_at(&mut raw, 0x1000).unwrap();
    let done = dmalab_device::wire::decode_completion(&raw);
    assert_eq!(
        done.status,
        abi::Status::DmaFault.raw(),
        "a FILL past the end of the shrunk file: {done:?}"
    );
    // still serving: registers answer, and the file was not grown back
    assert_eq!(c.reg_read(abi::REG_ID), abi::DEVICE_MAGIC);
    assert_eq!(mem.metadata().unwrap().len(), size / 2);
    srv.finish(c);
}

/// The device's own account of what the driver enabled: every change of the command
/// register's memory-space or bus-master bit is an event (the tutorial's checks read it
/// instead of trusting the driver).
#[test]
fn command_register_changes_are_events() {
    let (srv, mut c) = Server::start("m-command");
    c.negotiate();
    c.command(false);
    c.command(false);
    c.command(true);
    let dir = srv.dir.clone();
    srv.finish(c);
    let log = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let seen: Vec<(bool, bool)> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "command")
        .map(|v| {
            (
                v["memory"].as_bool().unwrap(),
                v["bus_master"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [(true, false), (true, true)],
        "one event per change, none for a write that changes nothing"
    );
}
