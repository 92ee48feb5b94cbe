//! ClusterIP for host-network clients (the node's own processes, hostNetwork pods): cgroup socket
//! hooks rewrite the destination at connect/sendmsg time, so no packet ever carries the VIP. A UDP
//! socket's answers come from the backend; recvmsg (and getpeername, for TCP too) put the VIP back,
//! per socket, from the socket rev-NAT map.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use common::{
    lb::{SCOPE_EXTERNAL, svc_flags},
    net::{Be16, Be32, proto},
    sock::{SockRevNatKey4, SockRevNatValue4},
};

use crate::{
    lb::{self, Lookup},
    maps::STRAIT_SOCK_REVNAT4_V2 as SOCK_REVNAT,
    nodeport,
};

/// Hook return values: 1 lets the call proceed, 0 fails it (with the errno set by bpf_set_retval).
const PROCEED: i32 = 1;
const FAIL: i32 = 0;
const AF_INET: u32 = 2;
const ECONNREFUSED: i32 = 111;
const EPERM: i32 = 1;

/// connect4 / sendmsg4: a VIP:port destination becomes a backend.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let (family, protocol, addr, port) =
        unsafe { ((*sa).user_family, (*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET {
        return PROCEED;
    }
    let proto = protocol as u8;
    // SCTP sockets go the same way (the port rewrite is all a socket needs); this machine's kernel has no
    // SCTP stack, so that path is exercised only where one exists.
    if proto != proto::TCP && proto != proto::UDP && proto != proto::SCTP {
        return PROCEED;
    }
    // user_port holds the port in network order in its first two bytes.
    let port = port as u16;
    let service_addr = loopback_node_port(addr, port, proto);
    let frontend = match lb::lookup_frontend(service_addr, port, proto) {
        Lookup::NotService => return PROCEED,
        Lookup::Drop => return fail(EPERM),
        Lookup::Found(f) => f,
    };
    // loadBalancerSourceRanges: the socket has no source yet, so the node is judged by its own address,
    // the source its packets would get. Refused at once (EPERM) rather than left to time out.
    if frontend.svc.flags & svc_flags::SOURCE_RANGES != 0
        && !nodeport::source_allowed(frontend.svc.rev_nat, nodeport::node_addr())
    {
        return fail(EPERM);
    }
    if frontend.svc.count == 0 {
        let errno = if frontend.svc.flags & svc_flags::REJECT != 0 {
            ECONNREFUSED
        } else {
            EPERM
        };
        return fail(errno);
    }
    // The client address is not known before the socket is bound: the node is one client for
    // sessionAffinity, as kube-proxy sees it when the source is the node's address.
    let Some((_, be)) = lb::pick(0, service_addr, port, proto, &frontend) else {
        return fail(EPERM);
    };
    let rev_nat = frontend.svc.rev_nat;
    let (be_addr, be_port) = (be.addr, be.port);
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey4 {
        cookie,
        backend_addr: be_addr,
        backend_port: be_port,
        _pad: 0,
    };
    let value = SockRevNatValue4 {
        addr: Be32::from_raw(addr),
        port: Be16::from_raw(port),
        _pad: 0,
        rev_nat,
    };
    if SOCK_REVNAT.insert(&key, &value, 0).is_err() {
        return fail(EPERM);
    }
    // SAFETY: writing the destination fields the hook is allowed to rewrite.
    unsafe {
        (*sa).user_ip4 = be_addr.raw();
        (*sa).user_port = u32::from(be_port.raw());
    }
    PROCEED
}

/// `127.0.0.0/8:nodePort` from the node's own processes is served as the node's address with that
/// nodePort, as kube-proxy's iptables mode does (route_localnet); the socket keeps the loopback
/// address it asked for, since the rev-NAT entry records the address as the caller gave it. Other
/// loopback ports are left alone (a local listener on 127.0.0.1 must keep working).
#[inline(always)]
fn loopback_node_port(addr: u32, port: u16, proto: u8) -> u32 {
    if u32::from_be(addr) >> 24 != 127 {
        return addr;
    }
    let node = nodeport::node_addr();
    if node == 0 {
        return addr;
    }
    match lb::service(node, port, proto, SCOPE_EXTERNAL, 0) {
        Some(svc) if svc.flags & svc_flags::NODEPORT != 0 => node,
        _ => addr,
    }
}

/// recvmsg4 / getpeername4: a backend address seen by a translated socket becomes the VIP again.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let (family, addr, port) = unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET {
        return PROCEED;
    }
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey4 {
        cookie,
        backend_addr: Be32::from_raw(addr),
        backend_port: Be16::from_raw(port as u16),
        _pad: 0,
    };
    // SAFETY: read-only copy of a map value.
    if let Some(v) = unsafe { SOCK_REVNAT.get(&key) } {
        let (vip, vport) = (v.addr.raw(), v.port.raw());
        // SAFETY: writing the address fields these hooks are allowed to rewrite.
        unsafe {
            (*sa).user_ip4 = vip;
            (*sa).user_port = u32::from(vport);
        }
    }
    PROCEED
}

#[inline(always)]
fn fail(errno: i32) -> i32 {
    // SAFETY: helper without preconditions; sets the errno the failed syscall returns.
    unsafe { bpf_set_retval(-errno) };
    FAIL
}
