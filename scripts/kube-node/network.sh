# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: the node's address, the forwarding guard
# and the CNI bridge's configuration.
# Uses the settings and helpers (step, die, warn) defined there.

# The node's address on an interface of its own, and a route that sends the
# rest of 198.19.0.0/16 (unused Service IPs above all) into that interface:
# nothing for these addresses goes to the default route. The kernel has no
# dummy driver, so the interface is a bridge without ports, which sends what
# it is given nowhere.
setup_node_address() {
  ip link show "$NODE_IF" >/dev/null 2>&1 || ip link add "$NODE_IF" type bridge
  ip link set "$NODE_IF" up
  ip addr replace "$NODE_IP/32" dev "$NODE_IF"
  ip route replace "$NODE_NET" dev "$NODE_IF"
  step "network: $NODE_IP on $NODE_IF, $NODE_NET routed into it"
}

# The bridge plugin turns on IP forwarding for the pod gateway. These rules
# keep forwarding to the bridge: pod traffic is dropped on its way to any
# other interface, and traffic from other interfaces to the pods too.
# (mangle FORWARD runs before filter FORWARD, where kube-proxy accepts.)
setup_forward_guard() {
  iptables -w -t mangle -N PODSHAPER-NODE 2>/dev/null || true
  iptables -w -t mangle -F PODSHAPER-NODE
  iptables -w -t mangle -A PODSHAPER-NODE -s "$NODE_NET" ! -o "$BRIDGE_IF" -j DROP
  iptables -w -t mangle -A PODSHAPER-NODE -o "$BRIDGE_IF" ! -i "$BRIDGE_IF" -j DROP
  iptables -w -t mangle -C FORWARD -j PODSHAPER-NODE 2>/dev/null ||
    iptables -w -t mangle -I FORWARD -j PODSHAPER-NODE
  step "network: forwarding limited to $BRIDGE_IF"
}

write_cni_config() {
  mkdir -p "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  cat >"$CNI_CONF_DIR/10-podshaper-node.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NODE_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE_IF",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  step "network: CNI bridge $BRIDGE_IF, pods in $POD_CIDR"
}
