//! The two maps only external frontends use — Maglev tables and loadBalancerSourceRanges — keyed by the
//! rev-NAT ids the service reconcile allocated. A Maglev table is 16k entries, so neither the desired
//! nor the written state holds tables: each is known by a fingerprint of its contents, and a table is
//! built only when a frontend's backend set changed.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use policy::net::Ipv4Net;

use super::Ids;
use crate::lb::{
    LbPlan, Proto,
    maglev::{self, TableSize},
    source_ranges,
};

/// A frontend's backends as the table is built from them: (name, backend id), sorted by name.
type TableKey = Vec<(String, u32)>;

/// What the two maps hold (or should): rev-NAT id → fingerprint of its Maglev table, and the
/// (rev-NAT id, prefix) pairs let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalState {
    pub maglev: BTreeMap<u32, u64>,
    pub source_ranges: BTreeSet<(u32, Ipv4Net)>,
}

/// The datapath side, behind a trait so the reconcile is tested without BPF.
pub trait ExternalMaps {
    /// Current contents; `size` says how many entries of each table are in use.
    fn dump(&self, size: TableSize) -> Result<ExternalState>;
    fn put_maglev(&mut self, rev_nat: u32, backend_ids: &[u32]) -> Result<()>;
    fn delete_maglev(&mut self, rev_nat: u32) -> Result<()>;
    fn put_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()>;
    fn delete_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()>;
}

/// The fingerprint of a table's contents (the backend id in each entry), the same whether computed from
/// a freshly built table or read back from the map.
pub fn fingerprint(backend_ids: &[u32]) -> u64 {
    let bytes: Vec<u8> = backend_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    maglev::stable_hash(0x6d61_676c_6576_0003, &bytes)
}

/// The table of a frontend as backend ids, in entry order.
pub fn table_ids(size: TableSize, key: &TableKey) -> Vec<u32> {
    let names: Vec<&str> = key.iter().map(|(n, _)| n.as_str()).collect();
    let table = maglev::build(size, &names);
    // `build` sorts and de-duplicates names the way `key` already is, so indices line up.
    table.entries.iter().map(|&i| key[i as usize].1).collect()
}

#[derive(Debug, Default)]
pub struct ExternalReconciler {
    /// `None` until read from the maps (at start, and after a failed write).
    written: Option<ExternalState>,
    /// Fingerprints of tables built so far, by backend set (cleared when the size changes).
    fingerprints: BTreeMap<TableKey, u64>,
    size: Option<TableSize>,
}

impl ExternalReconciler {
    /// Desired tables by rev-NAT id with their backend sets, and source ranges. Frontends whose ids the
    /// service reconcile did not allocate (they did not fit) are left out.
    fn wanted(plan: &LbPlan, ids: &Ids) -> (BTreeMap<u32, TableKey>, BTreeSet<(u32, Ipv4Net)>) {
        let mut tables = BTreeMap::new();
        for f in plan.frontends.iter() {
            if f.kind == crate::lb::FrontendKind::ClusterIp
                || f.scope != common::lb::SCOPE_EXTERNAL
                || f.backends.is_empty()
            {
                continue;
            }
            let proto = f.proto.number();
            let Some(rev_nat) = ids.revnat(&(f.addr, f.port, proto)) else {
                continue;
            };
            let key: Option<BTreeMap<String, u32>> = f
                .backends
                .iter()
                .map(|b| {
                    Some((
                        maglev::backend_name(b.addr, b.port),
                        ids.backend(&(b.addr, b.port, proto))?,
                    ))
                })
                .collect();
            if let Some(key) = key {
                tables.insert(rev_nat, key.into_iter().collect());
            }
        }
        let ranges = source_ranges::desired(plan)
            .into_iter()
            .filter_map(|((addr, port, proto), net): ((_, u16, Proto), _)| {
                Some((ids.revnat(&(addr, port, proto.number()))?, net))
            })
            .collect();
        (tables, ranges)
    }

    /// Brings both maps to what `plan` needs; returns the number of map writes and deletes.
    pub fn reconcile(
        &mut self,
        plan: &LbPlan,
        ids: &Ids,
        size: TableSize,
        maps: &mut dyn ExternalMaps,
    ) -> Result<usize> {
        if self.size != Some(size) {
            self.fingerprints.clear();
            self.written = None;
            self.size = Some(size);
        }
        let (tables, ranges) = Self::wanted(plan, ids);
        let written = match self.written.take() {
            Some(w) => w,
            None => maps.dump(size)?,
        };
        let mut fingerprints = BTreeMap::new();
        let mut desired = ExternalState {
            maglev: BTreeMap::new(),
            source_ranges: ranges,
        };
        let mut ops = 0;
        let result = (|| -> Result<()> {
            // Ranges before tables and deletes last, so a frontend never admits more than it should.
            for &(rev_nat, net) in desired.source_ranges.difference(&written.source_ranges) {
                maps.put_source_range(rev_nat, net)?;
                ops += 1;
            }
            for (rev_nat, key) in &tables {
                let mut built = None;
                let print = match self.fingerprints.get(key) {
                    Some(&p) => p,
                    None => fingerprint(built.insert(table_ids(size, key))),
                };
                fingerprints.insert(key.clone(), print);
                desired.maglev.insert(*rev_nat, print);
                if written.maglev.get(rev_nat) != Some(&print) {
                    let table = built.unwrap_or_else(|| table_ids(size, key));
                    maps.put_maglev(*rev_nat, &table)?;
                    ops += 1;
                }
            }
            for &(rev_nat, net) in written.source_ranges.difference(&desired.source_ranges) {
                maps.delete_source_range(rev_nat, net)?;
                ops += 1;
            }
            for rev_nat in written.maglev.keys().filter(|r| !desired.maglev.contains_key(r)) {
                maps.delete_maglev(*rev_nat)?;
                ops += 1;
            }
            Ok(())
        })();
        // Only fingerprints of tables still wanted are kept.
        self.fingerprints = fingerprints;
        match result {
            Ok(()) => {
                self.written = Some(desired);
                Ok(ops)
            }
            // What was written is unknown now: read it back next time.
            Err(e) => Err(e),
        }
    }

    /// Forgets what was written, so the next reconcile reads the maps (the periodic resync: it prunes
    /// what was written behind the agent's back).
    pub fn resync(&mut self) {
        self.written = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::tests::load;

    /// Map contents as the kernel would hold them, with every operation recorded.
    #[derive(Default)]
    struct Fake {
        tables: BTreeMap<u32, Vec<u32>>,
        ranges: BTreeSet<(u32, Ipv4Net)>,
        ops: Vec<String>,
        fail_puts: bool,
    }

    impl ExternalMaps for Fake {
        fn dump(&self, _size: TableSize) -> Result<ExternalState> {
            Ok(ExternalState {
                maglev: self.tables.iter().map(|(r, t)| (*r, fingerprint(t))).collect(),
                source_ranges: self.ranges.clone(),
            })
        }
        fn put_maglev(&mut self, rev_nat: u32, ids: &[u32]) -> Result<()> {
            if self.fail_puts {
                anyhow::bail!("map full");
            }
            self.ops.push(format!("put table {rev_nat}"));
            self.tables.insert(rev_nat, ids.to_vec());
            Ok(())
        }
        fn delete_maglev(&mut self, rev_nat: u32) -> Result<()> {
            self.ops.push(format!("delete table {rev_nat}"));
            self.tables.remove(&rev_nat);
            Ok(())
        }
        fn put_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()> {
            self.ops.push(format!("put range {rev_nat} {net}"));
            self.ranges.insert((rev_nat, net));
            Ok(())
        }
        fn delete_source_range(&mut self, rev_nat: u32, net: Ipv4Net) -> Result<()> {
            self.ops.push(format!("delete range {rev_nat} {net}"));
            self.ranges.remove(&(rev_nat, net));
            Ok(())
        }
    }

    fn planned(name: &str) -> (LbPlan, Ids) {
        let (snapshot, node, _) = load(name);
        let plan = crate::lb::plan(&snapshot, &node);
        let mut ids = Ids::new();
        let _ = super::super::desired(&plan, &mut ids);
        (plan, ids)
    }

    const SIZE: u32 = 251;

    #[test]
    fn tables_hold_backend_ids_and_a_second_pass_writes_nothing() {
        let (plan, ids) = planned("external");
        let size = TableSize::new(SIZE).unwrap();
        let mut maps = Fake::default();
        let mut r = ExternalReconciler::default();
        let ops = r.reconcile(&plan, &ids, size, &mut maps).unwrap();
        assert!(ops > 0 && !maps.tables.is_empty(), "{:?}", maps.ops);
        for table in maps.tables.values() {
            assert_eq!(table.len(), SIZE as usize);
            assert!(table.iter().all(|id| *id != 0));
        }
        maps.ops.clear();
        assert_eq!(r.reconcile(&plan, &ids, size, &mut maps).unwrap(), 0);
        // A restarted agent reads the maps back and finds nothing to do either.
        let mut fresh = ExternalReconciler::default();
        assert_eq!(fresh.reconcile(&plan, &ids, size, &mut maps).unwrap(), 0);
        assert!(maps.ops.is_empty(), "{:?}", maps.ops);
    }

    #[test]
    fn only_external_frontends_with_backends_get_tables() {
        let (plan, ids) = planned("external");
        let mut maps = Fake::default();
        ExternalReconciler::default()
            .reconcile(&plan, &ids, TableSize::new(SIZE).unwrap(), &mut maps)
            .unwrap();
        let want: BTreeSet<u32> = plan
            .frontends
            .iter()
            .filter(|f| {
                f.kind != crate::lb::FrontendKind::ClusterIp
                    && f.scope == common::lb::SCOPE_EXTERNAL
                    && !f.backends.is_empty()
            })
            .map(|f| ids.revnat(&(f.addr, f.port, f.proto.number())).unwrap())
            .collect();
        assert!(!want.is_empty());
        assert_eq!(maps.tables.keys().copied().collect::<BTreeSet<_>>(), want);
    }

    #[test]
    fn source_ranges_follow_the_plan_and_stale_entries_are_pruned() {
        let (plan, ids) = planned("north-south");
        let size = TableSize::new(SIZE).unwrap();
        let mut maps = Fake::default();
        // Left behind by an earlier run: a table and a range nothing wants any more.
        maps.tables.insert(999_999, vec![1; SIZE as usize]);
        let stale = "198.51.100.0/24".parse::<policy::net::Cidr>().unwrap();
        let policy::net::Cidr::V4(stale) = stale else {
            panic!()
        };
        maps.ranges.insert((999_999, stale));
        ExternalReconciler::default()
            .reconcile(&plan, &ids, size, &mut maps)
            .unwrap();
        let expected: BTreeSet<(u32, Ipv4Net)> = source_ranges::desired(&plan)
            .into_iter()
            .map(|((a, p, pr), n)| (ids.revnat(&(a, p, pr.number())).unwrap(), n))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(maps.ranges, expected);
        assert!(!maps.tables.contains_key(&999_999));
        // Deletes come after every put.
        let first_delete = maps.ops.iter().position(|o| o.starts_with("delete")).unwrap();
        assert!(
            maps.ops[first_delete..].iter().all(|o| o.starts_with("delete")),
            "{:?}",
            maps.ops
        );
    }

    #[test]
    fn a_failed_write_makes_the_next_pass_read_the_maps_again() {
        let (plan, ids) = planned("external");
        let size = TableSize::new(SIZE).unwrap();
        let mut maps = Fake {
            fail_puts: true,
            ..Default::default()
        };
        let mut r = ExternalReconciler::default();
        assert!(r.reconcile(&plan, &ids, size, &mut maps).is_err());
        maps.fail_puts = false;
        assert!(r.reconcile(&plan, &ids, size, &mut maps).unwrap() > 0);
        assert_eq!(r.reconcile(&plan, &ids, size, &mut maps).unwrap(), 0);
    }

    #[test]
    fn the_table_a_frontend_gets_is_the_maglev_table_of_its_backends() {
        let (plan, ids) = planned("external");
        let size = TableSize::new(SIZE).unwrap();
        let mut maps = Fake::default();
        ExternalReconciler::default()
            .reconcile(&plan, &ids, size, &mut maps)
            .unwrap();
        let f = plan
            .frontends
            .iter()
            .find(|f| {
                f.kind != crate::lb::FrontendKind::ClusterIp
                    && f.scope == common::lb::SCOPE_EXTERNAL
                    && !f.backends.is_empty()
            })
            .unwrap();
        let proto = f.proto.number();
        let table = &maps.tables[&ids.revnat(&(f.addr, f.port, proto)).unwrap()];
        let names: Vec<String> = f
            .backends
            .iter()
            .map(|b| maglev::backend_name(b.addr, b.port))
            .collect();
        let reference = maglev::build(size, &names);
        for (entry, id) in reference.entries.iter().zip(table) {
            let name = &reference.backends[*entry as usize];
            let b = f
                .backends
                .iter()
                .find(|b| &maglev::backend_name(b.addr, b.port) == name)
                .unwrap();
            assert_eq!(ids.backend(&(b.addr, b.port, proto)), Some(*id));
        }
    }
}
