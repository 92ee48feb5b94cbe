//! Which kinds of objects changed between two snapshots, so that a pass redoes only the work those
//! kinds feed: an EndpointSlice change re-plans the Services but does not recompile NetworkPolicies.

/// A set of object kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub const NODES: Self = Self(1);
    pub const NAMESPACES: Self = Self(1 << 1);
    pub const PODS: Self = Self(1 << 2);
    pub const SERVICES: Self = Self(1 << 3);
    pub const ENDPOINT_SLICES: Self = Self(1 << 4);
    pub const NETWORK_POLICIES: Self = Self(1 << 5);
    pub const ALL: Self = Self((1 << 6) - 1);
    pub const NONE: Self = Self(0);

    /// What the service planner reads (pods too: standalone mode derives slices from them).
    pub const SERVICE_INPUTS: Self =
        Self(Self::NODES.0 | Self::PODS.0 | Self::SERVICES.0 | Self::ENDPOINT_SLICES.0);
    /// What the policy compiler reads.
    pub const POLICY_INPUTS: Self =
        Self(Self::NODES.0 | Self::NAMESPACES.0 | Self::PODS.0 | Self::NETWORK_POLICIES.0);

    /// The kind named as in the API (`"EndpointSlice"`); no kind for a name the agent does not read.
    pub fn of_kind(name: &str) -> Self {
        match name {
            "Node" => Self::NODES,
            "Namespace" => Self::NAMESPACES,
            "Pod" => Self::PODS,
            "Service" => Self::SERVICES,
            "EndpointSlice" => Self::ENDPOINT_SLICES,
            "NetworkPolicy" => Self::NETWORK_POLICIES,
            _ => Self::NONE,
        }
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Kinds {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Kinds {
    fn bitor_assign(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

impl std::fmt::Display for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::NODES, "Node"),
            (Self::NAMESPACES, "Namespace"),
            (Self::PODS, "Pod"),
            (Self::SERVICES, "Service"),
            (Self::ENDPOINT_SLICES, "EndpointSlice"),
            (Self::NETWORK_POLICIES, "NetworkPolicy"),
        ];
        let present: Vec<&str> = names
            .iter()
            .filter(|(k, _)| self.intersects(*k))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "{}", present.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_change_feeds_services_not_policy() {
        let k = Kinds::ENDPOINT_SLICES;
        assert!(k.intersects(Kinds::SERVICE_INPUTS));
        assert!(!k.intersects(Kinds::POLICY_INPUTS));
        assert!(Kinds::PODS.intersects(Kinds::POLICY_INPUTS));
        assert_eq!((Kinds::PODS | Kinds::SERVICES).to_string(), "Pod,Service");
        assert!(Kinds::NONE.is_empty());
        assert_eq!(Kinds::of_kind("EndpointSlice"), Kinds::ENDPOINT_SLICES);
    }
}
