# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: the kubelet, kube-proxy, and waiting for
# the node to be Ready.
# Uses the settings and helpers (step, die, warn) defined there.

# The node runs no cluster DNS, and the host's name server is outside the
# addresses the node may use: pods get loopback as their name server, which
# answers nothing, so no query leaves (a resolv.conf without any name server
# would make containerd copy the host's). Pods reach the API server by the
# KUBERNETES_SERVICE_HOST address.
write_kubelet_config() {
  echo "nameserver 127.0.0.1" >"$STATE/resolv.conf"
  cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
# runc puts the pods' processes at kubepods/<qos>/pod<uid> in cgroup2 too,
# where podshaper attaches.
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
# The images are imported, not pulled (there is no registry): image garbage
# collection, which starts at 85 % disk use by default, would delete the pause
# and workload images for good on a busy disk, and no pod would start again
# ("failed to pull ... podshaper-pause:1"). 100 turns it off.
imageGCHighThresholdPercent: 100
EOF
}

start_kubelet() {
  mkdir -p "$KUBELET_ROOT"
  write_kubelet_config
  start_daemon kubelet "$KUBE_BIN/kubelet" \
    --config "$STATE/kubelet-config.yaml" \
    --kubeconfig "$STATE/kubeconfigs/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --container-runtime remote --container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
    --eviction-hard= --v 1 # no evictions: a test machine's disk is whatever it is
  wait_for "node $NODE_NAME registered" 90 "$LOGS/kubelet.log" \
    kubectl_admin get node "$NODE_NAME"
  step "kubelet: node $NODE_NAME registered"
}

start_kube_proxy() {
  start_daemon kube-proxy "$KUBE_BIN/kube-proxy" \
    --kubeconfig "$STATE/kubeconfigs/kube-proxy.kubeconfig" \
    --hostname-override "$NODE_NAME" --bind-address "$NODE_IP" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --nodeport-addresses "$NODE_IP/32" \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --v 1
  wait_for "kube-proxy rules for the kubernetes Service" 60 "$LOGS/kube-proxy.log" \
    service_rule_present
  step "kube-proxy: $SERVICE_IP:443 -> $NODE_IP:$APISERVER_PORT"
}

service_rule_present() { iptables -w -t nat -S KUBE-SERVICES | grep -q -- "-d $SERVICE_IP/32"; }

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
node_untainted() {
  [ -z "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.spec.taints}')" ]
}
sa_token_ready() {
  kubectl_admin -n "$1" get serviceaccount default -o jsonpath='{.secrets[0].name}' | grep -q .
}

wait_node_ready() {
  wait_for "node $NODE_NAME Ready" 120 "$LOGS/kubelet.log" node_ready
  wait_for "node $NODE_NAME without taints" 60 "$LOGS/kube-controller-manager.log" node_untainted
  wait_for "kube-system default ServiceAccount token" 60 "$LOGS/kube-controller-manager.log" \
    sa_token_ready kube-system
  wait_for "default ServiceAccount token" 60 "$LOGS/kube-controller-manager.log" \
    sa_token_ready default
  step "node: Ready, no taints, ServiceAccount tokens issued"
}
