//! Bridge mode on the host: the bridge with its address, banger's own
//! nftables NAT table, dnsmasq answering `<vm>.<suffix>`, and taps from a
//! warm pool. Set up lazily by the first bridge-mode VM, torn down per VM on
//! stop, delete and failed create (tap back to the pool, name out of DNS;
//! the address lease goes with the VM's row).

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::VmRecord;

impl Manager {
    /// The tap a bridge-mode VM boots with (none for other modes).
    pub(crate) async fn acquire_tap(
        &self,
        _op: &Op,
        vm: &VmRecord,
    ) -> Result<Option<String>, Error> {
        if vm.network != "bridge" {
            return Ok(None);
        }
        Err(Error::Invalid(
            "bridge networking is not available in this build yet: use --network user".into(),
        ))
    }

    /// Gives a VM's tap back and removes its DNS name.
    pub(crate) fn release_tap(&self, _vm: &VmRecord, _tap: Option<String>) {}
}
