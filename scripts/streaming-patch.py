#!/usr/bin/env python3
"""The streaming abstraction as a kernel patch (kernel-patches/streaming/).

guest-driver/module/streaming.rs is the one source: this turns it into
rust/kernel/dma/streaming.rs of a kernel tree (crate paths, `pub` instead of
`pub(crate)`, `Device::as_raw` instead of the module's cast) and writes the
patch that adds it and declares it in rust/kernel/dma.rs, with the commit
message of kernel-patches/streaming/message.txt.

Usage: streaming-patch.py <kernel source tree> <patch file to write>
"""
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
tree, out = Path(sys.argv[1]), Path(sys.argv[2])

s = (ROOT / "guest-driver/module/streaming.rs").read_text()
head_old = s[s.index("//! Streaming DMA of memory"):s.index("//! - After the map")]
s = s.replace(head_old, """//! Streaming DMA mappings of memory the driver does not own: a user's pages, pinned, mapped
//! for one device, and handed between the CPU and the device by type.
//!
//! C header: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h)
//!
//! The rules it encodes are the DMA API's (see
//! [`dma-api-howto.rst`](srctree/Documentation/core-api/dma-api-howto.rst)):
//!
""")
s = s.replace("use kernel::{", "use crate::{", 1)
s = s.replace("    pr_warn_once,\n", "")
s = s.replace("kernel::page::PAGE_SIZE", "crate::page::PAGE_SIZE")
s = re.sub(r"/// The C `struct device` of `dev`[^\n]*\nfn raw<[^\n]*\n(?:.*\n)*?\}\n\n", "", s, count=1)
for a, b in [("raw(dev)", "dev.as_raw()"), ("raw(&self.dev)", "self.dev.as_raw()"),
             ("raw(&this.dev)", "this.dev.as_raw()"), ("pub(crate) ", "pub "),
             ("pr_warn_once!", "crate::pr_warn_once!")]:
    s = s.replace(a, b)
# `dma_mapping_error` is inline: the module does what it does, the kernel has a helper for it
s = re.sub(r"(fn mapping_error\(dev: &Device, addr: bindings::dma_addr_t\) -> bool \{\n)(?:.*\n)*?\}\n",
           r"\1    // SAFETY: `dev` is a valid `struct device`.\n"
           r"    unsafe { bindings::dma_mapping_error(dev.as_raw(), addr) != 0 }\n}\n", s, count=1)
assert "debug_dma_mapping_error" not in s, "mapping_error was not rewritten"
s = s.replace('pr_warn_once!("dmalab: ', 'pr_warn_once!("')
assert "kernel::" not in s.replace("kernel::dma", ""), "a kernel:: path is left"
assert "raw(" not in s.replace("as_raw(", ""), "a raw() call is left"
# the rewrites change line lengths: format as the tree formats its Rust
with tempfile.TemporaryDirectory() as tmp:
    f = Path(tmp) / "streaming.rs"
    f.write_text(s)
    subprocess.run(["rustfmt", "--edition", "2021", "--config-path", str(tree / ".rustfmt.toml"), str(f)],
                   check=True)
    s = f.read_text()

dma_old = (tree / "rust/kernel/dma.rs").read_text()
i = dma_old.index("\nuse crate::")
dma_new = dma_old[:i] + "\n\npub mod streaming;" + dma_old[i:]


helpers_old = (tree / "rust/helpers/dma.c").read_text()
helpers_new = helpers_old.rstrip("\n") + """

__rust_helper int rust_helper_dma_mapping_error(struct device *dev,
\t\t\t\t\t\tdma_addr_t dma_addr)
{
\treturn dma_mapping_error(dev, dma_addr);
}
"""


def diff(path, old, new):
    a = f"a/{path}" if old else "/dev/null"
    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True), a, f"b/{path}", n=3)
    return "".join(lines)


msg = (ROOT / "kernel-patches/streaming/message.txt").read_text().rstrip("\n").split("\n")
body = "\n".join(msg[2:])
patch = (
    "From: dmalab developers <dmalab@example.org>\n"
    f"Subject: [PATCH] {msg[0]}\n\n"
    f"{body}\n\n"
    "Signed-off-by: dmalab developers <dmalab@example.org>\n"
    "---\n"
    + diff("rust/helpers/dma.c", helpers_old, helpers_new)
    + diff("rust/kernel/dma.rs", dma_old, dma_new)
    + diff("rust/kernel/dma/streaming.rs", "", s)
    + "--\n2.47.3\n"
)
out.write_text(patch)
