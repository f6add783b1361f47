"""The loopback address plan of one local mesh.

Every mesh owns one /16 of 127.0.0.0/8, `127.B.0.0/16`, so two meshes (different B) run side by side:

    127.B.0.1            control plane (xDS, port 15010)
    127.B.0.(10+n)       ztunnel of node n
    127.B.1.x ...        waypoints (one address each; HBONE on 15008)
    127.B.16.1 ...       pod IPs (what clients dial, what the mesh captures)
    127.B.64.1 ...       where an enrolled pod's application really listens (its "inside"; see below)
    127.B.128.1 ...      service VIPs (bound by ztunnel, like kube-proxy's ClusterIPs)

Why pods have two addresses: without iptables nothing can redirect a connection to `podIP:port` into the
node proxy. So the ztunnel binds the pod IPs of enrolled pods (capturing traffic addressed to them, as
ztunnel's inbound redirection does) and delivers to the application at its inside address.

Pure: which block B to use is decided by the caller (the local runner finds a free one).
"""

from __future__ import annotations

from dataclasses import dataclass

POD_FIRST_OCTET3 = 16
APP_FIRST_OCTET3 = 64
POD_OCTET3_SPAN = APP_FIRST_OCTET3 - POD_FIRST_OCTET3  # 48 /24s = 12,192 pods
VIP_FIRST_OCTET3 = 128
VIP_OCTET3_SPAN = 128
WAYPOINT_FIRST_OCTET3 = 1
WAYPOINT_OCTET3_SPAN = 15
PER_24 = 254  # .1 ... .254

XDS_PORT = 15010
HBONE_PORT = 15008
ADMIN_PORT = 15000
STATS_PORT = 15020


class AddressSpaceExhausted(ValueError):
    pass


def _indexed(block: int, first: int, span: int, index: int, what: str) -> str:
    if index < 0 or index >= span * PER_24:
        raise AddressSpaceExhausted(f"too many {what}: the plan holds {span * PER_24}")
    return f"127.{block}.{first + index // PER_24}.{1 + index % PER_24}"


@dataclass(frozen=True)
class AddressPlan:
    block: int

    def __post_init__(self) -> None:
        if not 1 <= self.block <= 254:
            raise ValueError(f"address block must be between 1 and 254, got {self.block}")

    @property
    def control_plane(self) -> str:
        return f"127.{self.block}.0.1"

    def ztunnel(self, node_index: int) -> str:
        if not 0 <= node_index < 200:
            raise AddressSpaceExhausted("at most 200 nodes")
        return f"127.{self.block}.0.{10 + node_index}"

    def waypoint(self, index: int) -> str:
        return _indexed(self.block, WAYPOINT_FIRST_OCTET3, WAYPOINT_OCTET3_SPAN, index, "waypoints")

    def pod(self, index: int) -> str:
        return _indexed(self.block, POD_FIRST_OCTET3, POD_OCTET3_SPAN, index, "pods")

    def app(self, index: int) -> str:
        """The inside address of pod `index`; same offset as its pod IP in the app range."""
        return _indexed(self.block, APP_FIRST_OCTET3, POD_OCTET3_SPAN, index, "pods")

    def inside_of(self, pod_ip: str) -> str:
        """The inside address that pairs with a pod IP (the same offset in the app range)."""
        _, _, third, fourth = (int(x) for x in pod_ip.split("."))
        return self.app((third - POD_FIRST_OCTET3) * PER_24 + (fourth - 1))

    def vip(self, index: int) -> str:
        return _indexed(self.block, VIP_FIRST_OCTET3, VIP_OCTET3_SPAN, index, "services")

    def contains(self, address: str) -> bool:
        return address.startswith(f"127.{self.block}.")
