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

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A subnet of `prefix` somewhere in the address space, through the
    /// same parser the config uses.
    fn random_subnet(rng: &mut StdRng, prefix: u8) -> Ipv4Cidr {
        let addr = Ipv4Addr::from(rng.r#gen::<u32>());
        parse_subnet(&format!("{addr}/{prefix}")).unwrap()
    }

    /// The host addresses a guest may get: after the gateway, before the broadcast.
    fn guest_range(s: Ipv4Cidr) -> std::ops::RangeInclusive<u32> {
        u32::from(s.network().addr()) + 2..=u32::from(s.broadcast()) - 1
    }

    #[test]
    fn allocation_is_the_lowest_guest_address_no_lease_holds() {
        let mut rng = StdRng::seed_from_u64(0x1ea5e);
        for _ in 0..5_000 {
            let prefix = rng.gen_range(8..=30);
            let s = random_subnet(&mut rng, prefix);
            let range = guest_range(s);
            // Leases: mostly near the start, some anywhere, some outside
            // the subnet, the special addresses, and garbage.
            let mut leased = Vec::new();
            for _ in 0..rng.gen_range(0..=40) {
                let near = range.start() + rng.gen_range(0..8u32).min(range.end() - range.start());
                let lease = match rng.gen_range(0..10) {
                    0 => Ipv4Addr::from(rng.r#gen::<u32>()).to_string(),
                    1 => s.network().addr().to_string(),
                    2 => gateway(s).to_string(),
                    3 => s.broadcast().to_string(),
                    4 => {
                        ["", "x", "1.2.3", "172.30.0.2/24", " 10.0.0.2"][rng.gen_range(0..5)].into()
                    }
                    _ => Ipv4Addr::from(near).to_string(),
                };
                leased.push(lease);
            }
            let held: Vec<Ipv4Addr> = leased.iter().filter_map(|l| l.parse().ok()).collect();
            let got = allocate(s, &leased);
            let want = range
                .clone()
                .map(Ipv4Addr::from)
                .find(|ip| !held.contains(ip));
            assert_eq!(got, want, "{s} with {leased:?}");
            if let Some(ip) = got {
                assert!(s.contains(ip), "{ip} outside {s}");
                assert_ne!(ip, s.network().addr());
                assert_ne!(ip, gateway(s));
                assert_ne!(ip, s.broadcast());
                assert!(!held.contains(&ip), "{ip} is leased");
            }
        }
    }

    #[test]
    fn a_subnet_has_an_address_until_every_guest_address_is_leased() {
        let mut rng = StdRng::seed_from_u64(0xf111);
        for prefix in 22..=30u8 {
            let s = random_subnet(&mut rng, prefix);
            let guests = (1u32 << (32 - prefix)) - 3;
            let mut leased: Vec<String> = Vec::new();
            for _ in 0..guests {
                let ip = allocate(s, &leased).expect("not full yet");
                leased.push(ip.to_string());
            }
            assert_eq!(allocate(s, &leased), None, "{s} is full");
            // Releasing any one lease makes exactly that address free again.
            let gone = leased.swap_remove(rng.gen_range(0..leased.len()));
            assert_eq!(allocate(s, &leased).map(|ip| ip.to_string()), Some(gone));
        }
    }

    #[test]
    fn parsed_subnets_are_networks_with_room_for_a_guest() {
        let mut rng = StdRng::seed_from_u64(0x5b);
        for _ in 0..20_000 {
            let addr = Ipv4Addr::from(rng.r#gen::<u32>());
            let prefix = rng.gen_range(0..=40);
            match parse_subnet(&format!("{addr}/{prefix}")) {
                Ok(s) => {
                    assert!((8..=30).contains(&prefix));
                    assert_eq!(s, s.network());
                    assert!(s.contains(addr));
                    assert!(allocate(s, &[]).is_some());
                }
                Err(e) => assert!(!(8..=30).contains(&prefix), "{addr}/{prefix}: {e}"),
            }
        }
    }
}
