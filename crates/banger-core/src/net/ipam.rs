//! The address allocator: the lowest free host address of the bridge subnet
//! that no VM holds. Leases are the `ip` column of VM rows (unique in the
//! store), so they survive daemon restarts and go away with the row.

use banger_sys::net::Ipv4Cidr;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The bridge's own address: the subnet's first host address.
pub fn gateway(subnet: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network().addr()) + 1)
}

/// The first address after the gateway not in `leased`, or `None` when the
/// subnet is full.
pub fn allocate(subnet: Ipv4Cidr, leased: &[String]) -> Option<Ipv4Addr> {
    let taken: HashSet<Ipv4Addr> = leased.iter().filter_map(|s| s.parse().ok()).collect();
    let first = u32::from(gateway(subnet)) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

/// Parses a bridge subnet: an IPv4 CIDR with a prefix of 8 to 30, so there
/// is room for the gateway and at least one guest.
pub fn parse_subnet(s: &str) -> Result<Ipv4Cidr, String> {
    let bad = || format!("{s:?} is not an IPv4 subnet like 172.30.0.0/24 (prefix 8-30)");
    let cidr: Ipv4Cidr = s.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&cidr.prefix()) {
        return Err(bad());
    }
    Ok(cidr.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_gateway_and_leases_and_reuses_released() {
        let s = parse_subnet("172.30.0.0/24").unwrap();
        assert_eq!(allocate(s, &[]), Some(Ipv4Addr::new(172, 30, 0, 2)));
        let leased = vec!["172.30.0.2".to_string(), "172.30.0.3".to_string()];
        assert_eq!(allocate(s, &leased), Some(Ipv4Addr::new(172, 30, 0, 4)));
        let released = vec!["172.30.0.3".to_string()];
        assert_eq!(allocate(s, &released), Some(Ipv4Addr::new(172, 30, 0, 2)));
    }

    #[test]
    fn a_full_subnet_has_no_address() {
        let s = parse_subnet("10.9.0.0/30").unwrap();
        assert_eq!(allocate(s, &[]), Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(allocate(s, &["10.9.0.2".to_string()]), None);
    }

    #[test]
    fn subnets_normalise_and_refuse_odd_prefixes() {
        let s = parse_subnet("172.30.0.9/24").unwrap();
        assert_eq!(s.to_string(), "172.30.0.0/24");
        assert_eq!(gateway(s), Ipv4Addr::new(172, 30, 0, 1));
        assert!(parse_subnet("172.30.0.0").is_err());
        assert!(parse_subnet("172.30.0.0/31").is_err());
        assert!(parse_subnet("300.1.1.1/24").is_err());
    }
}
