#!/bin/busybox sh
# PID 1 of the test VM: mount what the agent needs, then hand over to it (it powers off).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# DMA-API debug prints only its first error unless told otherwise: every error, so a test that
# makes a second mistake (or a suite of tests) sees each in the kernel log
echo 1 >/sys/kernel/debug/dma-api/all_errors 2>/dev/null
exec /bin/dmalab-agent
