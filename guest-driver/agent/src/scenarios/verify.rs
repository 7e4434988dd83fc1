//! One request submitted and every byte it produced checked: the step every scenario is made of.

use dmalab_abi::{self as abi, Request};
use dmalab_report::*;

use crate::dev::Dev;
use crate::pattern::data;
use crate::report::report;

/// Request timeout where faults may swallow completions: long enough that a slow, shared host
/// never turns into a false timeout, short enough to keep fault tests quick.
pub(super) const FAULT_TIMEOUT_MS: u32 = 5000;

/// The request's status word says OK.
pub(super) fn ok_status(status: u32) -> bool {
    status == u32::from(abi::Status::Ok.raw())
}

pub(super) fn op_name(op: u8) -> &'static str {
    abi::Opcode::from_raw(op).map_or("?", abi::Opcode::name)
}

/// Outcome of one verified request.
pub(super) struct Outcome {
    pub(super) req: Request,
    pub(super) errno: i32,
    pub(super) verified: bool,
    pub(super) detail: String,
}

pub(super) fn submit(d: &Dev, req: &mut Request) -> i32 {
    match d.submit(req) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Runs one request of `op` and checks every byte it produced.
/// WRITE/READ use internal memory at `dev_off`: concurrent callers must pass disjoint ranges.
pub(super) fn verified(
    d: &Dev,
    op: u8,
    queue: u8,
    len: usize,
    nseg: u16,
    seed: u32,
    dev_off: u64,
) -> Outcome {
    verified_with(d, op, queue, len, nseg, seed, dev_off, 0)
}

/// [`verified`] with a request timeout (0: the driver's default).
#[allow(clippy::too_many_arguments)]
pub(super) fn verified_with(
    d: &Dev,
    op: u8,
    queue: u8,
    len: usize,
    nseg: u16,
    seed: u32,
    dev_off: u64,
    timeout_ms: u32,
) -> Outcome {
    let src = data(len, seed);
    let mut dst = vec![0u8; len];
    let mut req = Request {
        opcode: op,
        queue,
        nseg,
        len: len as u32,
        timeout_ms,
        ..Default::default()
    };
    let (mut verified, mut detail) = (false, String::new());
    let errno;
    match op {
        abi::OP_COPY => {
            req.src = src.as_ptr() as u64;
            req.dst = dst.as_mut_ptr() as u64;
            errno = submit(d, &mut req);
            verified = errno == 0 && ok_status(req.status) && dst == src;
        }
        abi::OP_FILL => {
            req.pattern = 0xa55a_0000 | (seed & 0xffff);
            req.dst = dst.as_mut_ptr() as u64;
            errno = submit(d, &mut req);
            let p = req.pattern.to_le_bytes();
            verified = errno == 0
                && ok_status(req.status)
                && dst.iter().enumerate().all(|(i, &b)| b == p[i % 4]);
        }
        abi::OP_CHECKSUM => {
            req.src = src.as_ptr() as u64;
            errno = submit(d, &mut req);
            let crc = crc32c::crc32c(&src);
            verified = errno == 0 && ok_status(req.status) && req.result == crc;
            detail = format!("device {:#010x} guest {:#010x}", req.result, crc);
        }
        abi::OP_WRITE | abi::OP_READ => {
            // WRITE into internal memory, READ it back: both directions verified together.
            let off = dev_off;
            let mut w = Request {
                opcode: abi::OP_WRITE,
                queue,
                nseg,
                len: len as u32,
                dev_offset: off,
                ..Default::default()
            };
            w.src = src.as_ptr() as u64;
            let e1 = submit(d, &mut w);
            req.opcode = abi::OP_READ;
            req.dev_offset = off;
            req.dst = dst.as_mut_ptr() as u64;
            errno = if e1 != 0 { e1 } else { submit(d, &mut req) };
            verified = errno == 0 && ok_status(w.status) && ok_status(req.status) && dst == src;
            if op == abi::OP_WRITE {
                req = Request {
                    segments: w.segments,
                    latency_ns: w.latency_ns,
                    ..w
                };
            }
        }
        _ => errno = libc::EINVAL,
    }
    if !verified && detail.is_empty() && errno == 0 {
        detail = match dst.iter().zip(src.iter()).position(|(a, b)| a != b) {
            Some(at) => format!("first differing byte at {at}"),
            None => String::new(),
        };
    }
    Outcome {
        req,
        errno,
        verified,
        detail,
    }
}

/// A COPY of `src` into `dst` on queue 0.
pub(super) fn copy_request(src: &[u8], dst: &mut [u8], timeout_ms: u32) -> Request {
    Request {
        opcode: abi::OP_COPY,
        len: src.len() as u32,
        src: src.as_ptr() as u64,
        dst: dst.as_mut_ptr() as u64,
        timeout_ms,
        ..Default::default()
    }
}

pub(super) fn report_xfer(o: &Outcome, scenario: &str) {
    report(Report::Xfer(xfer_of(o, scenario)));
}

pub(super) fn xfer_of(o: &Outcome, scenario: &str) -> Xfer {
    Xfer {
        scenario: scenario.to_string(),
        op: op_name(o.req.opcode).to_string(),
        queue: o.req.queue,
        len: o.req.len,
        segments: o.req.segments,
        status: o.req.status,
        errno: o.errno,
        result: o.req.result,
        bytes: o.req.bytes,
        tag: o.req.tag,
        verified: o.verified,
        detail: o.detail.clone(),
        path: o.req.path,
        ..Default::default()
    }
}

pub(super) const OPS: [u8; 5] = [
    abi::OP_COPY,
    abi::OP_WRITE,
    abi::OP_READ,
    abi::OP_FILL,
    abi::OP_CHECKSUM,
];

pub(super) const SIZES: [usize; 5] = [1, 4096, 65536, 1 << 20, 12_347];
