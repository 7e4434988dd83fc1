// SPDX-License-Identifier: GPL-2.0

//! `dma::streaming` (kernel-patches/streaming/; a tree without it reports this API absent):
//! user pages pinned, mapped for the device, and handed between the CPU and the device; the
//! driver's own pages (`DriverPages`); part of a mapping lent to the CPU
//! (`sync_range_for_cpu`); one page mapped without a table (`SinglePage`). The user pages are a
//! fresh anonymous mapping of the task that loads the module. With every mapping bounced
//! (swiotlb), a sync that does not copy, or copies the wrong way, gives wrong bytes.

use kernel::{
    bindings,
    dma::{
        streaming::{
            Bidirectional, DeviceDone, DeviceOwned, Direction, DriverPages, FromDevice, Mapping,
            PageProvider, SinglePage, ToDevice, UserPages,
        },
        Coherent,
    },
    page::Page,
    prelude::*,
    uaccess::{UserPtr, UserSlice},
};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "streaming";

/// The slots of the partial-sync test, and their length together.
const SLOT: usize = 5000;
const SLOTS_LEN: usize = 4 * SLOT;

/// The device's maximum segment length (the PCI default; nothing raises it).
const MAX_SEGMENT: u32 = 64 * 1024;

pub(crate) fn run(dma: &Dma<'_>) {
    for (len, off) in [(4096, 0), (200_000, 123), (1 << 20, 4000)] {
        result(
            API,
            format_args!("FromDevice {len} B at page offset {off}: the device fills, the CPU reads after sync_for_cpu"),
            from_device(dma, len, off),
        );
        result(
            API,
            format_args!("ToDevice {len} B at page offset {off}: the device sees the caller's data after the map"),
            to_device(dma, len, off),
        );
        result(
            API,
            format_args!("Bidirectional {len} B at page offset {off}: map, device, sync_for_cpu, CPU, sync_for_device, device"),
            whole_cycle(dma, len, off),
        );
    }
    for len in [4096, 300_000] {
        result(
            API,
            format_args!("DriverPages {len} B: CPU writes, ToDevice map, device copies; then FromDevice, device fills, CPU reads"),
            driver_pages(dma, len),
        );
    }
    result(
        API,
        format_args!("sync_range_for_cpu: four slots of a device-owned mapping lent to the CPU one by one, read and rewritten"),
        partial_syncs(dma),
    );
    result(
        API,
        format_args!(
            "SinglePage 3000 B at offset 100: device fills, CPU reads and writes, device copies"
        ),
        single_page(dma),
    );
}

/// An anonymous mapping of `len` bytes in the current task, unmapped when dropped.
struct UserBuffer {
    addr: usize,
    len: usize,
}

impl UserBuffer {
    fn new(len: usize) -> Result<Self, Failed> {
        const PROT_READ_WRITE: usize = 0x3;
        const MAP_PRIVATE_ANONYMOUS: usize = 0x22;
        // SAFETY: an anonymous private mapping of the current task; no file.
        let addr = unsafe {
            bindings::vm_mmap(
                core::ptr::null_mut(),
                0,
                len,
                PROT_READ_WRITE,
                MAP_PRIVATE_ANONYMOUS,
                0,
            )
        };
        if addr >= (-4095isize) as usize {
            return Err(text(format_args!(
                "vm_mmap of {len} bytes: errno {}",
                addr as isize
            )));
        }
        Ok(Self { addr, len })
    }
}

impl Drop for UserBuffer {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `new` and nothing else unmaps it.
        unsafe { bindings::vm_munmap(self.addr, self.len) };
    }
}

fn from_device(dma: &Dma<'_>, len: usize, off: usize) -> Result<(), Failed> {
    let user = UserBuffer::new(len + off)?;
    let pages = UserPages::<FromDevice>::pin(UserPtr::from_addr(user.addr + off), len)
        .map_err(|e| text(format_args!("pin: {}", errname(e))))?;
    let mapped = pages
        .map(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map: {}", errname(e))))?;
    let want = fill_segments(dma, &mapped, len, 0x6d61_7020 ^ len as u32)?;
    // SAFETY: every transfer above is over (DONE read); the device has no other request.
    let done = unsafe { DeviceDone::new() };
    let cpu = mapped.sync_for_cpu(&done);
    let mut got =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    cpu.read(0, &mut got)
        .map_err(|e| text(format_args!("read: {}", errname(e))))?;
    expect(
        "what the CPU reads after sync_for_cpu",
        len,
        |i| got[i],
        |i| want[i],
    )?;
    drop(cpu.unmap());
    Ok(())
}

fn to_device(dma: &Dma<'_>, len: usize, off: usize) -> Result<(), Failed> {
    let user = UserBuffer::new(len + off)?;
    let data = |i: usize| (i * 13 + len) as u8;
    let mut buf =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = data(i);
    }
    // the caller's data, written as the caller would (a device that only reads gets pages
    // pinned read-only, which the CPU may not write through the abstraction)
    UserSlice::new(UserPtr::from_addr(user.addr + off), len)
        .writer()
        .write_slice(&buf)
        .map_err(|e| text(format_args!("copy to the user buffer: {}", errname(e))))?;
    let pages = UserPages::<ToDevice>::pin(UserPtr::from_addr(user.addr + off), len)
        .map_err(|e| text(format_args!("pin: {}", errname(e))))?;
    let mapped = pages
        .map(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map: {}", errname(e))))?;
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    copy_out(dma, &mapped, &out, len)?;
    // SAFETY: the device's transfers are done.
    let got = unsafe { out.as_ref() };
    expect("the device's copy after the map", len, |i| got[i], data)?;
    // SAFETY: no transfer is running.
    drop(mapped.unmap(&unsafe { DeviceDone::new() }));
    Ok(())
}

/// The whole cycle on one `Bidirectional` mapping: the device fills, the CPU reads after
/// `sync_for_cpu`, writes new data, gives it back with `sync_for_device`, the device copies it.
fn whole_cycle(dma: &Dma<'_>, len: usize, off: usize) -> Result<(), Failed> {
    let user = UserBuffer::new(len + off)?;
    let pages = UserPages::<Bidirectional>::pin(UserPtr::from_addr(user.addr + off), len)
        .map_err(|e| text(format_args!("pin: {}", errname(e))))?;
    let mapped = pages
        .map(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map: {}", errname(e))))?;
    let want = fill_segments(dma, &mapped, len, 0x0c1c_1e00 ^ len as u32)?;
    // SAFETY: every transfer above is over (DONE read).
    let mut cpu = mapped.sync_for_cpu(&unsafe { DeviceDone::new() });
    let mut got =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    cpu.read(0, &mut got)
        .map_err(|e| text(format_args!("read: {}", errname(e))))?;
    expect(
        "what the CPU reads after sync_for_cpu",
        len,
        |i| got[i],
        |i| want[i],
    )?;
    for (i, b) in got.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    cpu.write(0, &got)
        .map_err(|e| text(format_args!("write: {}", errname(e))))?;
    let mapped = cpu.sync_for_device();
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    copy_out(dma, &mapped, &out, len)?;
    // SAFETY: the device's transfers are done.
    let dev_saw = unsafe { out.as_ref() };
    expect(
        "the device's copy after sync_for_device",
        len,
        |i| dev_saw[i],
        |i| (i * 7 + 3) as u8,
    )?;
    // SAFETY: no transfer is running.
    drop(mapped.unmap(&unsafe { DeviceDone::new() }));
    Ok(())
}

/// The driver's own pages: written by the CPU and read by the device, then written by the
/// device and read by the CPU, mapped twice.
fn driver_pages(dma: &Dma<'_>, len: usize) -> Result<(), Failed> {
    let mut pages = DriverPages::alloc(len, GFP_KERNEL)
        .map_err(|e| text(format_args!("alloc: {}", errname(e))))?;
    let mut buf =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 31 + len) as u8;
    }
    pages
        .write(0, &buf)
        .map_err(|e| text(format_args!("write: {}", errname(e))))?;
    let mapped = pages
        .map::<ToDevice>(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map ToDevice: {}", errname(e))))?;
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    copy_out(dma, &mapped, &out, len)?;
    // SAFETY: the device's transfers are done.
    let got = unsafe { out.as_ref() };
    expect(
        "the device's copy of the CPU's data",
        len,
        |i| got[i],
        |i| (i * 31 + len) as u8,
    )?;
    // SAFETY: no transfer is running.
    let pages = mapped.unmap(&unsafe { DeviceDone::new() });
    let mapped = pages
        .map::<FromDevice>(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map FromDevice: {}", errname(e))))?;
    let pattern = 0x4472_7650 ^ len as u32;
    let want = fill_segments(dma, &mapped, len, pattern)?;
    // SAFETY: the device's transfers are done.
    let cpu = mapped.sync_for_cpu(&unsafe { DeviceDone::new() });
    cpu.read(0, &mut buf)
        .map_err(|e| text(format_args!("read: {}", errname(e))))?;
    expect(
        "what the CPU reads after sync_for_cpu",
        len,
        |i| buf[i],
        |i| want[i],
    )?;
    drop(cpu.unmap());
    Ok(())
}

/// Four slots of one device-owned mapping, each lent to the CPU on its own while the device
/// keeps the mapping: the CPU reads what the device wrote there and writes new data, which the
/// device must see once the slot is given back. An empty or outside range is `EINVAL`.
fn partial_syncs(dma: &Dma<'_>) -> Result<(), Failed> {
    let pages = DriverPages::alloc(SLOTS_LEN, GFP_KERNEL)
        .map_err(|e| text(format_args!("alloc: {}", errname(e))))?;
    let mut mapped = pages
        .map::<Bidirectional>(dma.dev(), MAX_SEGMENT)
        .map_err(|e| text(format_args!("map: {}", errname(e))))?;
    // SAFETY: the suite's transfers are polled to their end (or the device reset) before a
    // step returns, and the device starts none of its own.
    let done = unsafe { DeviceDone::new() };
    let outcome = lent_slots(dma, &mut mapped, &done);
    // whatever the outcome: a device-owned mapping dropped is leaked by design, and DMA-API
    // debug would report it at unbind against another API's test
    drop(mapped.unmap(&done));
    outcome
}

/// `partial_syncs` on its mapping of four slots of `SLOT` bytes.
fn lent_slots(
    dma: &Dma<'_>,
    mapped: &mut Mapping<Bidirectional, DeviceOwned, DriverPages>,
    done: &DeviceDone,
) -> Result<(), Failed> {
    let pattern = 0x5107_0000;
    let want = fill_segments(dma, mapped, SLOTS_LEN, pattern)?;
    for (offset, len) in [(0, 0), (SLOTS_LEN - 10, 11), (usize::MAX, 2)] {
        if !matches!(mapped.sync_range_for_cpu(done, offset, len), Err(e) if e == EINVAL) {
            return Err(text(format_args!(
                "sync_range_for_cpu({offset}, {len}) was not refused with EINVAL"
            )));
        }
    }
    let mut got = [0u8; SLOT];
    for slot in 0..4 {
        let mut range = mapped
            .sync_range_for_cpu(done, slot * SLOT, SLOT)
            .map_err(|e| text(format_args!("sync_range_for_cpu: {}", errname(e))))?;
        range
            .read(0, &mut got)
            .map_err(|e| text(format_args!("read: {}", errname(e))))?;
        expect(
            "what the CPU reads in the lent slot",
            SLOT,
            |i| got[i],
            |i| want[slot * SLOT + i],
        )
        .map_err(|why| {
            let mut t = text(format_args!("slot {slot}: "));
            let _ = t.extend_from_slice(&why, GFP_KERNEL);
            t
        })?;
        got.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i + slot * 77) as u8);
        range
            .write(0, &got)
            .map_err(|e| text(format_args!("write: {}", errname(e))))?;
        // dropping the range gives it back to the device
    }
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), SLOTS_LEN, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    copy_out(dma, mapped, &out, SLOTS_LEN)?;
    // SAFETY: the device's transfers are done.
    let dev_saw = unsafe { out.as_ref() };
    expect(
        "the device's copy after every slot was given back",
        SLOTS_LEN,
        |i| dev_saw[i],
        |i| (i % SLOT + (i / SLOT) * 77) as u8,
    )?;
    Ok(())
}

/// One range of a driver's page, mapped without a table: the whole cycle.
fn single_page(dma: &Dma<'_>) -> Result<(), Failed> {
    const OFF: usize = 100;
    const LEN: usize = 3000;
    let page = Page::alloc_page(GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    let refused = SinglePage::<Bidirectional, DeviceOwned>::map(page, 4000, 200, dma.dev());
    if !matches!(refused, Err(e) if e == EINVAL) {
        return Err(text(format_args!(
            "a range that leaves the page was not refused with EINVAL"
        )));
    }
    let page = Page::alloc_page(GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    let mapped = SinglePage::<Bidirectional, DeviceOwned>::map(page, OFF, LEN, dma.dev())
        .map_err(|e| text(format_args!("map: {}", errname(e))))?;
    let pattern = 0x5167_1e00;
    dma.fill(mapped.addr(), LEN, pattern)?;
    // SAFETY: the device's transfer is done.
    let mut cpu = mapped.sync_for_cpu(&unsafe { DeviceDone::new() });
    let mut got = [0u8; LEN];
    cpu.read(0, &mut got)
        .map_err(|e| text(format_args!("read: {}", errname(e))))?;
    expect(
        "what the CPU reads after sync_for_cpu",
        LEN,
        |i| got[i],
        |i| fill_byte(pattern, i),
    )?;
    got.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 5 + 1) as u8);
    cpu.write(0, &got)
        .map_err(|e| text(format_args!("write: {}", errname(e))))?;
    let mapped = cpu.sync_for_device();
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), LEN, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    dma.copy(mapped.addr(), out.bus(), LEN)?;
    // SAFETY: the device's transfer is done.
    let dev_saw = unsafe { out.as_ref() };
    expect(
        "the device's copy after sync_for_device",
        LEN,
        |i| dev_saw[i],
        |i| (i * 5 + 1) as u8,
    )?;
    // SAFETY: no transfer is running.
    drop(mapped.unmap(&unsafe { DeviceDone::new() }));
    Ok(())
}

/// The device fills every segment of `m` with `pattern`: the bytes it wrote (FILL starts its
/// pattern afresh in every segment). The segments must cover the `len` bytes mapped exactly.
fn fill_segments<D: Direction, P: PageProvider>(
    dma: &Dma<'_>,
    m: &Mapping<D, DeviceOwned, P>,
    len: usize,
    pattern: u32,
) -> Result<KVVec<u8>, Failed> {
    let mut want =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    let mut at = 0usize;
    for s in m.segments() {
        let n = s.len as usize;
        if at + n > len {
            return Err(text(format_args!(
                "the segments run past the {len} bytes mapped"
            )));
        }
        dma.fill(s.addr, n, pattern)?;
        for (k, w) in want[at..at + n].iter_mut().enumerate() {
            *w = fill_byte(pattern, k);
        }
        at += n;
    }
    if at != len {
        return Err(text(format_args!("the segments cover {at} of {len} bytes")));
    }
    Ok(want)
}

/// The device copies every segment of `m`, in order, into `out`.
fn copy_out<D: Direction, P: PageProvider>(
    dma: &Dma<'_>,
    m: &Mapping<D, DeviceOwned, P>,
    out: &Coherent<[u8]>,
    len: usize,
) -> Result<(), Failed> {
    let mut at = 0usize;
    for s in m.segments() {
        let n = s.len as usize;
        if at + n > len {
            return Err(text(format_args!(
                "the segments run past the {len} bytes mapped"
            )));
        }
        dma.copy(s.addr, out.bus() + at as u64, n)?;
        at += n;
    }
    if at != len {
        return Err(text(format_args!("the segments cover {at} of {len} bytes")));
    }
    Ok(())
}
