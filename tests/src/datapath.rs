//! The real datapath, loaded exactly as the agent loads it, with its maps pinned in a directory of the
//! test's own that is removed afterwards.

use std::path::PathBuf;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use proxy_agent::datapath::Datapath;

pub struct TestDatapath {
    pub datapath: Datapath,
    pin_dir: PathBuf,
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Debug)]
pub struct RunResult {
    pub action: u32,
    pub packet: Vec<u8>,
}

impl TestDatapath {
    /// Loads every program; `name` makes the pin directory unique to the test. The `_` prefix cannot
    /// start a lab name, so `lab down` never touches these pins and the tests never touch a lab's.
    pub fn load(name: &str) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/strait/_test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let datapath = Datapath::load(&pin_dir).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("loading the datapath: {e:#}")
        });
        Self { datapath, pin_dir }
    }

    /// Where the maps are pinned (what the agent's sweeper and dumpers open).
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Runs program `prog` once on `packet` and returns the verdict and the packet as it left.
    pub fn run(&mut self, prog: &str, packet: &[u8]) -> RunResult {
        self.run_with_ctx(prog, packet, None)
    }

    /// One BPF_PROG_TEST_RUN of `prog` (XDP or tc) on `packet`, with `ctx` as its context when given.
    fn run_with_ctx(&mut self, prog: &str, packet: &[u8], ctx: Option<&[u8]>) -> RunResult {
        let mut out = vec![0u8; packet.len() + 256];
        let program = self
            .datapath
            .ebpf_mut()
            .program_mut(prog)
            .unwrap_or_else(|| panic!("program {prog} missing from the object"));
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat: 1,
            ..Default::default()
        };
        let result: Result<aya::programs::TestRunResult, ProgramError> = match program {
            aya::programs::Program::Xdp(p) => p.test_run(opts),
            aya::programs::Program::SchedClassifier(p) => p.test_run(opts),
            other => panic!(
                "program {prog} has type {:?}, not runnable here",
                other.prog_type()
            ),
        };
        let result = result.unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {prog}: {e:?}"));
        out.truncate(result.data_size_out as usize);
        RunResult {
            action: result.return_value,
            packet: out,
        }
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A service to seed the maps with, the way the agent's reconciler lays it out.
pub struct TestService {
    pub vip: std::net::Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub backends: Vec<(std::net::Ipv4Addr, u16)>,
    pub rev_nat: u32,
    pub flags: u16,
    pub affinity_timeout: u32,
}

impl TestService {
    pub fn new(vip: std::net::Ipv4Addr, port: u16, proto: u8, rev_nat: u32) -> Self {
        Self {
            vip,
            port,
            proto,
            backends: Vec::new(),
            rev_nat,
            flags: 0,
            affinity_timeout: 0,
        }
    }

    /// Backend ids are derived from the rev-NAT id so two services in one test never share one.
    pub fn backend_id(&self, index: usize) -> u32 {
        self.rev_nat * 1000 + index as u32 + 1
    }
}

use aya::maps::HashMap as AyaHashMap;
use common::{
    ct::{CtEntry4, CtKey4},
    lb::{Backend4, Lb4Key, Lb4Service, RevNat4},
    map_names,
    net::{Be16, Be32},
};

fn lb_key(vip: std::net::Ipv4Addr, port: u16, proto: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        addr: Be32::from_octets(vip.octets()),
        port: Be16::new(port),
        slot,
        proto,
        scope: common::lb::SCOPE_EXTERNAL,
        _pad: [0; 2],
    }
}

impl TestDatapath {
    pub fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> AyaHashMap<&mut aya::maps::MapData, K, V> {
        let map = self
            .datapath
            .ebpf_mut()
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} missing"));
        AyaHashMap::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e}"))
    }

    /// Writes backends, slots, rev-NAT and the frontend, in the agent's order.
    pub fn add_service(&mut self, svc: &TestService) {
        for (i, (addr, port)) in svc.backends.iter().enumerate() {
            let be = Backend4 {
                addr: Be32::from_octets(addr.octets()),
                port: Be16::new(*port),
                proto: svc.proto,
                flags: 0,
            };
            self.hash_map::<u32, Backend4>(map_names::LB4_BACKENDS)
                .insert(svc.backend_id(i), be, 0)
                .unwrap();
        }
        let mut services = self.hash_map::<Lb4Key, Lb4Service>(map_names::LB4_SERVICES);
        for i in 0..svc.backends.len() {
            let slot = Lb4Service {
                backend_id: svc.backend_id(i),
                ..Default::default()
            };
            services
                .insert(lb_key(svc.vip, svc.port, svc.proto, i as u16 + 1), slot, 0)
                .unwrap();
        }
        let frontend = Lb4Service {
            backend_id: 0,
            count: svc.backends.len() as u16,
            rev_nat: svc.rev_nat,
            flags: svc.flags,
            affinity_timeout: svc.affinity_timeout,
        };
        services
            .insert(lb_key(svc.vip, svc.port, svc.proto, 0), frontend, 0)
            .unwrap();
        let rev = RevNat4 {
            addr: Be32::from_octets(svc.vip.octets()),
            port: Be16::new(svc.port),
            _pad: 0,
        };
        self.hash_map::<u32, RevNat4>(map_names::LB4_REVNAT)
            .insert(svc.rev_nat, rev, 0)
            .unwrap();
    }

    /// Points slot `slot` of a service at another backend (as an endpoint change would).
    pub fn set_slot(&mut self, svc: &TestService, slot: u16, backend_id: u32) {
        let entry = Lb4Service {
            backend_id,
            ..Default::default()
        };
        self.hash_map::<Lb4Key, Lb4Service>(map_names::LB4_SERVICES)
            .insert(lb_key(svc.vip, svc.port, svc.proto, slot), entry, 0)
            .unwrap();
    }

    pub fn remove_backend(&mut self, id: u32) {
        self.hash_map::<u32, Backend4>(map_names::LB4_BACKENDS)
            .remove(&id)
            .unwrap();
    }

    pub fn add_backend(&mut self, id: u32, addr: std::net::Ipv4Addr, port: u16, proto: u8) {
        let be = Backend4 {
            addr: Be32::from_octets(addr.octets()),
            port: Be16::new(port),
            proto,
            flags: 0,
        };
        self.hash_map::<u32, Backend4>(map_names::LB4_BACKENDS)
            .insert(id, be, 0)
            .unwrap();
    }

    pub fn conntrack(&mut self) -> Vec<(CtKey4, CtEntry4)> {
        self.hash_map::<CtKey4, CtEntry4>(map_names::CT4)
            .iter()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Removes one conntrack entry, as LRU eviction or the sweeper would.
    pub fn remove_conntrack(&mut self, key: &CtKey4) {
        self.hash_map::<CtKey4, CtEntry4>(map_names::CT4)
            .remove(key)
            .unwrap();
    }
}

use aya::maps::{
    Array as AyaArray, PerCpuArray as AyaPerCpuArray,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use common::{
    config::DatapathConfig,
    event::DropReason,
    policy::{IpCacheValue4, PolicyEndpoint4, PolicyEndpointKey4, PolicyEntry, PolicyKey, PolicyKeyData},
};

impl TestDatapath {
    /// ipcache: `addr/prefix_len` → identity and CIDR class.
    pub fn add_ipcache(&mut self, addr: std::net::Ipv4Addr, prefix_len: u32, identity: u32, cidr_class: u32) {
        let map = self
            .datapath
            .ebpf_mut()
            .map_mut(map_names::IPCACHE4)
            .expect("ipcache map");
        let mut trie: LpmTrie<_, Be32, IpCacheValue4> =
            LpmTrie::try_from(map).expect("ipcache is an LPM trie");
        trie.insert(
            &LpmKey::new(prefix_len, Be32::from_octets(addr.octets())),
            IpCacheValue4 { identity, cidr_class },
            0,
        )
        .unwrap();
    }

    pub fn add_endpoint(&mut self, addr: std::net::Ipv4Addr, endpoint_id: u32, identity: u32, flags: u32) {
        let key = PolicyEndpointKey4 {
            addr: Be32::from_octets(addr.octets()),
        };
        self.hash_map::<PolicyEndpointKey4, PolicyEndpoint4>(map_names::POLICY_ENDPOINTS4)
            .insert(
                key,
                PolicyEndpoint4 {
                    endpoint_id,
                    identity,
                    flags,
                },
                0,
            )
            .unwrap();
    }

    fn policy_trie(&mut self) -> LpmTrie<&mut aya::maps::MapData, PolicyKeyData, PolicyEntry> {
        let map = self
            .datapath
            .ebpf_mut()
            .map_mut(map_names::POLICY)
            .expect("policy map");
        LpmTrie::try_from(map).expect("policy is an LPM trie")
    }

    /// One allow entry; `key.prefix_len` says how much of proto/port is significant.
    pub fn add_policy(&mut self, key: PolicyKey, policy_ref: u16, rule_index: u16) {
        let entry = PolicyEntry {
            policy_ref,
            rule_index,
            flags: 0,
            _pad: 0,
        };
        self.policy_trie()
            .insert(&LpmKey::new(key.prefix_len, key.data()), entry, 0)
            .unwrap();
    }

    pub fn remove_policy(&mut self, key: PolicyKey) {
        self.policy_trie()
            .remove(&LpmKey::new(key.prefix_len, key.data()))
            .unwrap();
    }

    pub fn set_config(&mut self, flags: u32) {
        self.set_datapath_config(DatapathConfig {
            flags,
            ..Default::default()
        });
    }

    /// Marks backend `id` as running on this node, as the agent does for local endpoints.
    pub fn mark_backend_local(&mut self, id: u32) {
        let mut backends = self.hash_map::<u32, Backend4>(map_names::LB4_BACKENDS);
        let mut be = backends.get(&id, 0).expect("backend to mark local");
        be.flags |= common::lb::backend_flags::LOCAL;
        backends.insert(id, be, 0).unwrap();
    }

    pub fn set_datapath_config(&mut self, config: DatapathConfig) {
        let map = self
            .datapath
            .ebpf_mut()
            .map_mut(map_names::CONFIG)
            .expect("config map");
        let mut array: AyaArray<_, DatapathConfig> = AyaArray::try_from(map).unwrap();
        array.set(0, config, 0).unwrap();
    }

    /// Writes the policy state map's `NONE_ISOLATED` through the agent's own policy map writer.
    pub fn set_none_isolated(&mut self, none_isolated: bool) {
        use proxy_agent::policy::{PolicyMaps, PolicyOp};
        self.datapath
            .policy_maps()
            .apply(&PolicyOp::SetState { none_isolated })
            .expect("writing the policy state map");
    }

    /// Registers `addr` as the pod behind `ifindex` the way the agent does (BPF_PROG_TEST_RUN runs
    /// skbs on loopback, ifindex 1, unless [`Self::run_tc_on`] names another interface).
    pub fn register_iface(&mut self, ifindex: u32, addr: std::net::Ipv4Addr) {
        self.datapath
            .register_iface(ifindex, addr)
            .expect("registering an interface");
    }

    pub fn forget_iface(&mut self, ifindex: u32) {
        self.datapath
            .forget_iface(ifindex)
            .expect("forgetting an interface");
    }

    /// Runs a tc program as if `packet` went through interface `ifindex` of the calling thread's netns.
    pub fn run_tc_on(&mut self, prog: &str, packet: &[u8], ifindex: u32) -> RunResult {
        // struct __sk_buff up to `ifindex`, its eleventh field; every other field stays zero, as the
        // kernel requires of the ones it does not take from userspace.
        let mut skb = [0u32; 11];
        skb[10] = ifindex;
        let ctx: Vec<u8> = skb.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.run_with_ctx(prog, packet, Some(&ctx))
    }

    pub fn drops(&mut self, reason: DropReason) -> u64 {
        let map = self
            .datapath
            .ebpf_mut()
            .map(map_names::DROP_STATS)
            .expect("drop stats map");
        let array: AyaPerCpuArray<_, u64> = AyaPerCpuArray::try_from(map).unwrap();
        array.get(&(reason as u32), 0).unwrap().iter().sum()
    }
}

use common::lb::{MAGLEV_MAX, MaglevTable, SourceRangeKey4};

impl TestDatapath {
    /// Runs an XDP program as if `packet` arrived on interface `ifindex` of the calling thread's netns
    /// (the kernel resolves it there; route and neighbour lookups then use that netns).
    pub fn run_xdp_on(&mut self, prog: &str, packet: &[u8], ifindex: u32) -> RunResult {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, packet.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.run_with_ctx(prog, packet, Some(&ctx))
    }

    /// The Maglev table of rev-NAT id `rev_nat`: `backend_ids` repeated over the whole table.
    pub fn set_maglev(&mut self, rev_nat: u32, backend_ids: &[u32]) {
        let mut table = Box::new(MaglevTable {
            backend_ids: [0; MAGLEV_MAX],
        });
        for (i, slot) in table.backend_ids.iter_mut().enumerate() {
            *slot = backend_ids[i % backend_ids.len()];
        }
        self.hash_map::<u32, MaglevTable>(map_names::LB4_MAGLEV)
            .insert(rev_nat, *table, 0)
            .unwrap();
    }

    /// Lets sources in `addr/prefix_len` reach the frontend with rev-NAT id `rev_nat`.
    pub fn add_source_range(&mut self, rev_nat: u32, addr: std::net::Ipv4Addr, prefix_len: u32) {
        let map = self
            .datapath
            .ebpf_mut()
            .map_mut(map_names::LB4_SOURCE_RANGES)
            .expect("source range map");
        let mut trie: LpmTrie<_, SourceRangeKey4, u8> = LpmTrie::try_from(map).expect("an LPM trie");
        let key = SourceRangeKey4 {
            rev_nat,
            saddr: Be32::from_octets(addr.octets()),
        };
        trie.insert(&LpmKey::new(32 + prefix_len, key), 1, 0).unwrap();
    }
}
