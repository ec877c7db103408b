//! Integration tests of the snapshot engine and the break-glass CLI, run as
//! real processes on real filesystems: XFS with reflink and ext4, both
//! loop-mounted by `tests/run.sh` (KSNAP_TEST_XFS, KSNAP_TEST_EXT4), and a
//! real S3-compatible server it starts (Garage, KSNAP_TEST_S3_*); the
//! daemon against a stand-in cluster and a scripted fake coordinator.

mod broker;
mod cli;
mod common;
mod corruption;
mod cycle;
mod daemon;
mod encryption;
mod hostile;
mod incremental;
mod roundtrip;
mod s3;
mod scenarios;
mod security;
