// SPDX-License-Identifier: GPL-2.0

//! `/dev/dmalab0`: the misc device through which the test agent asks for transfers
//! (`IOC_INFO`, `IOC_SUBMIT`, `IOC_RESET`, `IOC_DMA_SELFTEST`; docs/driver.md). Given, not an exercise: it only carries a
//! request between user space and [`crate::transfer`].

use core::pin::Pin;
use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    prelude::*,
    sync::Arc,
    uaccess::{UserPtr, UserSlice},
};

use crate::abi::{self, DeviceInfo, Request, SelfTest};
use crate::DevState;

/// One open file of `/dev/dmalab0`.
pub(crate) struct DmalabFile {
    dev: Arc<DevState>,
}

/// The misc registration next to the state it serves, so `open` can find the state.
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
        // `MiscHolder` (built only in probe); misc_open() holds misc_mtx, so the registration
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
        match cmd {
            abi::IOC_INFO => {
                let w = UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<DeviceInfo>());
                w.writer().write(&me.dev.info)?;
            }
            abi::IOC_SUBMIT => {
                let (mut r, mut w) =
                    UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<Request>())
                        .reader_writer();
                let mut req: Request = r.read()?;
                let result = crate::transfer(&me.dev, &mut req);
                // The request goes back in every case, so the status is seen next to the errno.
                w.write(&req)?;
                result?;
                crate::status_to_result(req.status)?;
            }
            abi::IOC_RESET => crate::reset_device(&me.dev, ECANCELED)?,
            abi::IOC_DMA_SELFTEST => {
                let (mut r, mut w) =
                    UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<SelfTest>())
                        .reader_writer();
                let mut t: SelfTest = r.read()?;
                let result = crate::selftest::run(&me.dev, &mut t);
                // the counts go back in every case, next to the errno
                w.write(&t)?;
                result?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}
