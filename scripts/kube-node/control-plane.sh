# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: etcd, kube-apiserver, kube-controller-
# manager, kube-scheduler.
# Uses the settings and helpers (step, die, warn) defined there.

start_etcd() {
  start_daemon etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for "etcd health" 60 "$LOGS/etcd.log" \
    curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  step "etcd: healthy on 127.0.0.1:$ETCD_PORT"
}

start_apiserver() {
  start_daemon kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" \
    --secure-port "$APISERVER_PORT" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false --v 1
  wait_for "kube-apiserver /readyz" 120 "$LOGS/kube-apiserver.log" \
    kubectl_admin get --raw /readyz
  step "kube-apiserver: ready at $APISERVER_URL"
}

start_controller_manager() {
  local kc=$STATE/kubeconfigs/kube-controller-manager.kubeconfig
  start_daemon kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/kube-controller-manager" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --allocate-node-cidrs=false --profiling=false --v 1
  wait_for "kube-controller-manager /healthz" 60 "$LOGS/kube-controller-manager.log" \
    curl -fsk https://127.0.0.1:10257/healthz
  step "kube-controller-manager: healthy"
}

start_scheduler() {
  local kc=$STATE/kubeconfigs/kube-scheduler.kubeconfig
  start_daemon kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/kube-scheduler" \
    --leader-elect=false --profiling=false --v 1
  wait_for "kube-scheduler /healthz" 60 "$LOGS/kube-scheduler.log" \
    curl -fsk https://127.0.0.1:10259/healthz
  step "kube-scheduler: healthy"
}
