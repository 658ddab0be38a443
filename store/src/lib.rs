//! The content-addressed image store of aktualizr-rs.
//!
//! It will pull OSTree commits from a treehub, deploy them as the pending deployment and
//! inspect deployments (libostree through the `ostree` crate). For now it holds only the
//! reboot sentinel contract shared with the `ostree-pending-reboot` units.

/// The default directory of the reboot sentinel (aktualizr's `[bootloader] reboot_sentinel_dir`).
pub const DEFAULT_REBOOT_SENTINEL_DIR: &str = "/run/aktualizr-session";

/// The default name of the reboot sentinel (aktualizr's `[bootloader] reboot_sentinel_name`).
pub const DEFAULT_REBOOT_SENTINEL_NAME: &str = "need_reboot";
