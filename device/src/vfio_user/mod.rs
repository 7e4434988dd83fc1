//! The vfio-user protocol, server side: our own message layer (see `docs/reliability.md` for
//! why it replaced the crates.io `vfio_user` crate). `proto` is the wire format, `conn` moves
//! whole messages over the socket, `server` applies the spec's rules and calls a [`Backend`].

mod conn;
mod proto;
mod server;

pub use server::{
    Backend, Errno, IrqAction, IrqInfo, RegionInfo, Server, IRQ_INFO_EVENTFD, REGION_FLAG_READ,
    REGION_FLAG_WRITE,
};
