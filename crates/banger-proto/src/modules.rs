//! The initramfs's module list (`/etc/banger/modules`, written by the image
//! build, read by the agent at boot): the kernel modules the guest may
//! load, in load order, one line each, with what decides whether a guest
//! needs one, read from the module's `.modinfo` when the image was built,
//! so the agent reads no module it does not load:
//!
//! ```text
//! virtio_ring.ko virtio= depends=
//! virtio_net.ko virtio=00000001 depends=net_failover
//! ```
//!
//! `virtio=` lists the virtio device ids the module drives (`*`: any
//! device), `depends=` the modules it needs, both comma-separated and
//! possibly empty. A line with the file name alone says nothing about its
//! module. Blank lines and `#` comments are skipped.

/// What a module's `.modinfo` says about whether a guest needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The virtio device ids it drives; `None` is a wildcard (any device).
    pub virtio_ids: Vec<Option<u32>>,
    /// The modules it depends on, dashes as underscores.
    pub depends: Vec<String>,
}

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModule {
    /// The `.ko` file's name (`virtio_net.ko`).
    pub file_name: String,
    /// `None`: the line said nothing about the module.
    pub info: Option<ModuleInfo>,
}

impl ListedModule {
    /// The module's name: the file name up to its first dot, dashes as
    /// underscores.
    pub fn name(&self) -> String {
        self.file_name
            .split('.')
            .next()
            .unwrap_or(&self.file_name)
            .replace('-', "_")
    }
}

/// `file_name`'s line, without its newline.
pub fn module_line(file_name: &str, info: &ModuleInfo) -> String {
    let ids: Vec<String> = info
        .virtio_ids
        .iter()
        .map(|id| id.map_or_else(|| "*".to_string(), |id| format!("{id:08x}")))
        .collect();
    format!(
        "{file_name} virtio={} depends={}",
        ids.join(","),
        info.depends.join(",")
    )
}

/// The modules `text` lists, in order.
pub fn parse_module_list(text: &str) -> Vec<ListedModule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let file_name = words.next().unwrap_or_default().to_string();
            let mut info = None;
            for word in words {
                let info = info.get_or_insert_with(ModuleInfo::default);
                let items = |v: &str| -> Vec<String> {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                };
                if let Some(ids) = word.strip_prefix("virtio=") {
                    info.virtio_ids = items(ids)
                        .iter()
                        .map(|id| u32::from_str_radix(id, 16).ok())
                        .collect();
                } else if let Some(deps) = word.strip_prefix("depends=") {
                    info.depends = items(deps).iter().map(|d| d.replace('-', "_")).collect();
                }
            }
            ListedModule { file_name, info }
        })
        .collect()
}

/// The virtio device id a `.modinfo` `alias=` value names (`virtio:d00000001v*`
/// is 1), `Some(None)` for a wildcard id, `None` for no virtio alias.
pub fn virtio_alias(alias: &str) -> Option<Option<u32>> {
    let id = alias.strip_prefix("virtio:d")?;
    Some(id.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let net = ModuleInfo {
            virtio_ids: vec![Some(1)],
            depends: vec!["net_failover".into()],
        };
        let any = ModuleInfo {
            virtio_ids: vec![None, Some(3)],
            depends: vec![],
        };
        let text = format!(
            "# block\n{}\n\n{}\nold.ko\n{}\n",
            module_line("virtio_net.ko", &net),
            module_line("any-thing.ko", &any),
            module_line("virtio_ring.ko", &ModuleInfo::default())
        );
        assert!(text.contains("virtio_net.ko virtio=00000001 depends=net_failover"));
        let listed = parse_module_list(&text);
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].info.as_ref(), Some(&net));
        assert_eq!(listed[1].info.as_ref(), Some(&any));
        assert_eq!(listed[1].name(), "any_thing");
        assert_eq!(listed[2].file_name, "old.ko");
        assert_eq!(listed[2].info, None, "a bare name says nothing");
        assert_eq!(listed[3].info, Some(ModuleInfo::default()));
    }

    #[test]
    fn virtio_aliases_give_ids_or_a_wildcard() {
        assert_eq!(virtio_alias("virtio:d00000001v*"), Some(Some(1)));
        assert_eq!(virtio_alias("virtio:d0000001Av*"), Some(Some(26)));
        assert_eq!(virtio_alias("virtio:d*v*"), Some(None));
        assert_eq!(virtio_alias("pci:v00001AF4d*"), None);
    }
}
