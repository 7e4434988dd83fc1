// SPDX-License-Identifier: GPL-2.0

//! One kernel-log line per test, read by the harness (harness/src/conformance.rs):
//! `dmalab-conformance: {"api":"coherent","test":"zeroed_slice 4096 B","ok":true,"why":""}`.

use kernel::{prelude::*, str::BStr};

use crate::device::Failed;

/// JSON string contents: quotes and backslashes escaped, control characters dropped.
fn escaped(s: &[u8]) -> KVec<u8> {
    let mut v = KVec::new();
    for &b in s {
        let _ = match b {
            b'"' | b'\\' => v
                .push(b'\\', GFP_KERNEL)
                .and_then(|()| v.push(b, GFP_KERNEL)),
            0..=0x1f => Ok(()),
            _ => v.push(b, GFP_KERNEL),
        };
    }
    v
}

/// The suite begins: the device's DMA width, for the report's header.
pub(crate) fn start(dma_bits: u32) {
    pr_info!(
        "dmalab-conformance: {{\"start\":true,\"dma_bits\":{}}}\n",
        dma_bits
    );
}

/// The suite ran to its end (a missing line means the module crashed or hung mid-way).
pub(crate) fn done() {
    pr_info!("dmalab-conformance: {{\"done\":true}}\n");
}

/// Test `test` of API `api` passed or failed, with why.
pub(crate) fn result(api: &str, test: core::fmt::Arguments<'_>, outcome: Result<(), Failed>) {
    let test = crate::device::text(test);
    let (ok, why) = match &outcome {
        Ok(()) => (true, KVec::new()),
        Err(why) => (false, escaped(why)),
    };
    let test = escaped(&test);
    pr_info!(
        "dmalab-conformance: {{\"api\":\"{}\",\"test\":\"{}\",\"ok\":{},\"why\":\"{}\"}}\n",
        api,
        BStr::from_bytes(&test),
        ok,
        BStr::from_bytes(&why)
    );
}
