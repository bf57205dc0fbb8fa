# shellcheck shell=bash
# Sourced by scripts/kube-node.sh: the CA, the components' certificates and
# the kubeconfigs.
# Uses the settings and helpers (step, die, warn) defined there.

make_ca() {
  [ -s "$PKI/ca.crt" ] && return 0
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -subj "/CN=$NODE_NAME-ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

# issue_cert NAME SUBJECT server|client [SUBJECT_ALT_NAMES]
issue_cert() {
  local name=$1 subject=$2 usage=$3 san=${4:-}
  [ -s "$PKI/$name.crt" ] && return 0
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=${usage}Auth"
  [ -z "$san" ] || ext="$ext
subjectAltName=$san"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile <(echo "$ext") -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for the client certificate.
write_kubeconfig() {
  local file=$1 cert=$2
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $cert}
current-context: $NODE_NAME
EOF
  )
}

make_pki() {
  mkdir -p "$PKI" "$STATE/kubeconfigs"
  chmod 700 "$PKI"
  make_ca
  issue_cert apiserver "/CN=kube-apiserver" server \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,DNS:localhost"
  issue_cert kubelet-serving "/CN=$NODE_NAME" server "IP:$NODE_IP,DNS:$NODE_NAME"
  # The API server's identity towards the kubelet (logs, exec, port-forward).
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
  issue_cert admin "/O=system:masters/CN=podshaper-node-admin" client
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
  issue_cert kube-scheduler "/CN=system:kube-scheduler" client
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager" client
  issue_cert kube-proxy "/CN=system:kube-proxy" client
  if [ ! -s "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  write_kubeconfig "$KUBECONFIG_ADMIN" admin
  local c
  for c in kubelet kube-scheduler kube-controller-manager kube-proxy; do
    write_kubeconfig "$STATE/kubeconfigs/$c.kubeconfig" "$c"
  done
  step "pki: CA, serving and client certificates, kubeconfigs in $STATE"
}
