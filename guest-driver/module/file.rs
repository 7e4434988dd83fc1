// SPDX-License-Identifier: GPL-2.0

//! `/dev/dmalabN`: the misc device, its open files and their ioctls.

use core::pin::Pin;
use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    prelude::*,
    sync::Arc,
    uaccess::{UserPtr, UserSlice},
};

use crate::abi::{self, Batch, DeviceInfo, Request, SelfTest, Stats};
use crate::batch::submit_batch;
use crate::bugs::DmaBug;
use crate::queue::status_to_result;
use crate::state::{reset_device, DevState};

/// Per open file of `/dev/dmalabN`.
pub(crate) struct DmalabFile {
    pub(crate) dev: Arc<DevState>,
}

/// Holds the misc registration next to the state so `open` can find it.
#[pin_data]
pub(crate) struct MiscHolder {
    pub(crate) dev: Arc<DevState>,
    #[pin]
    pub(crate) reg: MiscDeviceRegistration<DmalabFile>,
}

#[vtable]
impl MiscDevice for DmalabFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        // SAFETY: every `MiscDeviceRegistration<DmalabFile>` is the `reg` field of a pinned
        // `MiscHolder` (built only in `probe`); misc_open() holds misc_mtx, so the registration
        // cannot be deregistered and freed during this call.
        let holder = unsafe {
            &*kernel::container_of!(core::ptr::from_ref(misc).cast_mut(), MiscHolder, reg)
        };
        Ok(KBox::pin(
            DmalabFile {
                dev: holder.dev.clone(),
            },
            GFP_KERNEL,
        )?)
    }

    fn ioctl(me: Pin<&DmalabFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let arg = UserPtr::from_addr(arg);
        // Unbound (or removed) while this file stayed open: the device and its DMA memory are
        // gone, whatever the file still holds; every command says so.
        if me.dev.is_dead() {
            return Err(ENODEV);
        }
        match cmd {
            abi::IOC_INFO => me.info(arg)?,
            abi::IOC_SUBMIT => me.submit(arg)?,
            abi::IOC_SUBMIT_BATCH => me.submit_batch(arg)?,
            abi::IOC_STATS => me.stats(arg)?,
            abi::IOC_RESET => reset_device(&me.dev)?,
            abi::IOC_DMA_SELFTEST => me.selftest(arg)?,
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// One method per ioctl command; `arg` is the caller's pointer to the command's argument.
impl DmalabFile {
    /// `IOC_INFO`: the device as the driver found it at probe.
    fn info(&self, arg: UserPtr) -> Result {
        let w = UserSlice::new(arg, core::mem::size_of::<DeviceInfo>());
        w.writer().write(&self.dev.info)
    }

    /// `IOC_SUBMIT`: one request, waited for. The request goes back to the caller in every
    /// case, so the tag (0 if nothing was submitted) and the status are visible next to the
    /// errno.
    fn submit(&self, arg: UserPtr) -> Result {
        let dev: &DevState = &self.dev;
        let (mut r, mut w) = UserSlice::new(arg, core::mem::size_of::<Request>()).reader_writer();
        let mut req: Request = r.read()?;
        let q = dev.queues.get(req.queue as usize).ok_or(EINVAL)?;
        let result = q.submit(dev, &mut req);
        w.write(&req)?;
        result?;
        if DmaBug::active() != DmaBug::IgnoreStatus {
            status_to_result(req.status)?;
        }
        Ok(())
    }

    /// `IOC_SUBMIT_BATCH`: up to `MAX_BATCH` requests, any queues, one doorbell per queue per
    /// wave; every request goes back, each with its own outcome in `error`.
    fn submit_batch(&self, arg: UserPtr) -> Result {
        let (mut r, mut w) = UserSlice::new(arg, core::mem::size_of::<Batch>()).reader_writer();
        let mut batch: Batch = r.read()?;
        if batch.count == 0 || batch.count > abi::MAX_BATCH {
            return Err(EINVAL);
        }
        let n = batch.count as usize;
        let at = UserPtr::from_addr(usize::try_from(batch.requests).map_err(|_| EFAULT)?);
        let (mut rr, mut rw) =
            UserSlice::new(at, n * core::mem::size_of::<Request>()).reader_writer();
        let mut reqs = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            reqs.push(rr.read::<Request>()?, GFP_KERNEL)?;
        }
        batch.done = submit_batch(&*self.dev, &mut reqs)?;
        for req in reqs.iter() {
            rw.write(req)?;
        }
        w.write(&batch)
    }

    /// `IOC_STATS`: the driver's counters.
    fn stats(&self, arg: UserPtr) -> Result {
        let w = UserSlice::new(arg, core::mem::size_of::<Stats>());
        w.writer().write(&self.dev.stats())
    }

    /// `IOC_DMA_SELFTEST`: one streaming mapping of the caller's buffer, handed between CPU and
    /// device for `rounds` rounds (`selftest.rs`).
    fn selftest(&self, arg: UserPtr) -> Result {
        let (mut r, mut w) = UserSlice::new(arg, core::mem::size_of::<SelfTest>()).reader_writer();
        let mut t: SelfTest = r.read()?;
        let result = crate::selftest::run(&self.dev, &mut t);
        w.write(&t)?;
        result
    }
}
