//! The address allocator: the lowest free host address of the bridge subnet
//! that no VM holds. Leases are the `ip` column of VM rows (unique in the
//! store), so they survive daemon restarts and go away with the row.

use super::Subnet;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The first address after the gateway not in `leased`, or `None` when the
/// subnet is full.
pub fn allocate(subnet: &Subnet, leased: &[String]) -> Option<Ipv4Addr> {
    let taken: HashSet<Ipv4Addr> = leased.iter().filter_map(|s| s.parse().ok()).collect();
    let first = u32::from(subnet.gateway()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_gateway_and_leases_and_reuses_released() {
        let s = Subnet::parse("172.30.0.0/24").unwrap();
        assert_eq!(allocate(&s, &[]), Some(Ipv4Addr::new(172, 30, 0, 2)));
        let leased = vec!["172.30.0.2".to_string(), "172.30.0.3".to_string()];
        assert_eq!(allocate(&s, &leased), Some(Ipv4Addr::new(172, 30, 0, 4)));
        let released = vec!["172.30.0.3".to_string()];
        assert_eq!(allocate(&s, &released), Some(Ipv4Addr::new(172, 30, 0, 2)));
    }

    #[test]
    fn a_full_subnet_has_no_address() {
        let s = Subnet::parse("10.9.0.0/30").unwrap();
        assert_eq!(allocate(&s, &[]), Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(allocate(&s, &["10.9.0.2".to_string()]), None);
    }
}
