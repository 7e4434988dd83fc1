//! The host harness: starts the device server, boots the guest in QEMU (TCG), collects what the
//! guest agent reports on the serial console and what the device logged, and tears everything
//! down whatever happens. Every run keeps its logs in its own directory under `target/e2e/`.

pub mod artifacts;
pub mod bench;
pub mod campaign;
pub mod conditions;
pub mod conformance;
pub mod grading;
pub mod html;
pub mod hugepages;
pub mod kernel_log;
pub mod oracle;
pub mod slots;
pub mod timings;
pub mod tutorial;
pub mod verdict;
pub mod vm;

pub use conditions::Conditions;
pub use vm::{run, Run, VmOptions};
