//! Reading guest memory from a callback. The `qemu-plugin` crate's own
//! `qemu_plugin_read_memory_vaddr` hands QEMU a stack buffer dressed as a GLib `GByteArray`,
//! which QEMU then resizes with `g_byte_array_set_size` (a realloc of stack memory: QEMU
//! crashes). This reads through a real `GByteArray` instead.

use qemu_plugin::sys::{qemu_plugin_read_memory_vaddr, qemu_plugin_translate_vaddr, GByteArray};

/// The guest-physical address of guest-virtual `vaddr` in the current vCPU's address space;
/// `None` if it is not mapped. Call only from a vCPU callback.
#[allow(unsafe_code)]
pub(crate) fn translate(vaddr: u64) -> Option<u64> {
    let mut hw = 0u64;
    // SAFETY: `hw` is a valid place for the result; we are in a vCPU callback.
    let ok = unsafe { qemu_plugin_translate_vaddr(vaddr, &mut hw) };
    ok.then_some(hw)
}

#[allow(unsafe_code)]
unsafe extern "C" {
    // GLib, which QEMU links: the array type QEMU's plugin API grows and fills.
    fn g_byte_array_new() -> *mut GByteArray;
    fn g_byte_array_free(array: *mut GByteArray, free_segment: bool) -> *mut u8;
}

/// The 8 bytes at guest-virtual `addr`, little-endian; `None` if it is not mapped. Call only
/// from a vCPU callback.
#[allow(unsafe_code)]
pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: g_byte_array_new returns a fresh, owned, empty array.
    let array = unsafe { g_byte_array_new() };
    if array.is_null() {
        return None;
    }
    // SAFETY: `array` is a valid GByteArray that QEMU may grow; we are in a vCPU callback.
    let ok = unsafe { qemu_plugin_read_memory_vaddr(addr, array, 8) };
    // SAFETY: `array` is valid; when the read succeeded QEMU set its length to 8 and filled
    // `data` with that many bytes.
    let value = unsafe {
        (ok && (*array).len >= 8).then(|| {
            let bytes = std::slice::from_raw_parts((*array).data, 8);
            u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
        })
    };
    // SAFETY: frees the array and its data, which nothing references any more.
    unsafe { g_byte_array_free(array, true) };
    value
}
