//! The DNS server of bridge mode: dnsmasq answering `<vm>.<suffix>` on the
//! bridge address from a hosts directory (one file per VM, picked up by its
//! inotify). Starting it is behind [`DnsServer`] so the lifecycle's unit
//! tests run without it; the entries are plain files either way.

use banger_sys::net::dnsmasq::{self, DnsmasqConfig, DnsmasqError};

pub trait DnsServer: Send + Sync {
    /// Starts the server for `cfg` unless it already runs.
    fn ensure_running(&self, cfg: &DnsmasqConfig) -> Result<(), DnsmasqError>;
    /// The pid of the running server, if any.
    fn running(&self, cfg: &DnsmasqConfig) -> Option<u32>;
    /// Stops the server if it runs.
    fn stop(&self, cfg: &DnsmasqConfig) -> Result<(), DnsmasqError>;
}

/// The real one: dnsmasq.
pub struct Dnsmasq;

impl DnsServer for Dnsmasq {
    fn ensure_running(&self, cfg: &DnsmasqConfig) -> Result<(), DnsmasqError> {
        if dnsmasq::running(&cfg.pid_file).is_none() {
            dnsmasq::start(cfg)?;
        }
        Ok(())
    }

    fn running(&self, cfg: &DnsmasqConfig) -> Option<u32> {
        dnsmasq::running(&cfg.pid_file)
    }

    fn stop(&self, cfg: &DnsmasqConfig) -> Result<(), DnsmasqError> {
        dnsmasq::stop(&cfg.pid_file, std::time::Duration::from_secs(2)).map(drop)
    }
}

/// A server that is always "running": for unit tests.
#[cfg(test)]
pub struct NoDns;

#[cfg(test)]
impl DnsServer for NoDns {
    fn ensure_running(&self, _cfg: &DnsmasqConfig) -> Result<(), DnsmasqError> {
        Ok(())
    }

    fn running(&self, _cfg: &DnsmasqConfig) -> Option<u32> {
        Some(1)
    }

    fn stop(&self, _cfg: &DnsmasqConfig) -> Result<(), DnsmasqError> {
        Ok(())
    }
}
