# Sourced by broker.sh and cluster.sh: what KAFKA_LOCAL_SECURITY=sasl_ssl adds to local KRaft brokers.
#   - clients: one SASL_SSL listener, TLS (a throwaway CA's certificate for 127.0.0.1 and localhost) and
#     SASL/SCRAM-SHA-512; the broker talks to itself (inter-broker) on it as the super user `admin`, whose
#     SCRAM credential is written into the metadata log when the storage is formatted;
#   - the controller listener stays on loopback, SASL_PLAINTEXT with PLAIN, its one user `admin` living in
#     server.properties alone (SCRAM users live in the metadata the controller serves, so they cannot log in
#     to it);
#   - StandardAuthorizer with allow.everyone.if.no.acl.found=false: a principal may do only what an ACL
#     allows (`captioner topics acls` writes them), the super user anything.
# The CA's key is deleted once the broker's certificate is signed, so nothing else can ever be signed by it.

security_mode() {
  case "${KAFKA_LOCAL_SECURITY:-plaintext}" in
    plaintext | sasl_ssl) echo "${KAFKA_LOCAL_SECURITY:-plaintext}" ;;
    *) echo "KAFKA_LOCAL_SECURITY must be plaintext or sasl_ssl, not ${KAFKA_LOCAL_SECURITY}" >&2; return 2 ;;
  esac
}

# make_tls DIR: ca.pem (what clients trust) and broker.pem (the broker's PKCS#8 key and certificate, a PEM
# keystore), made once per state directory.
make_tls() {
  local dir="$1" days="${KAFKA_LOCAL_CERT_DAYS:-30}"
  if [[ -f "$dir/ca.pem" && -f "$dir/broker.pem" ]]; then return; fi
  command -v openssl >/dev/null || { echo "security.sh: openssl is needed to make the TLS certificates" >&2; return 1; }
  mkdir -p "$dir" && chmod 700 "$dir"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days "$days" -subj "/CN=captioner local Kafka CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -new "${ec[@]}" -subj "/CN=localhost" -keyout "$dir/broker.key" -out "$dir/broker.csr" 2>/dev/null
  # Clients check the name they dialled against the subject alternative names (librdkafka and Java both
  # verify it by default): both loopback spellings are in.
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$dir/broker.ext"
  openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$days" -extfile "$dir/broker.ext" -out "$dir/broker.crt" 2>/dev/null
  cat "$dir/broker.key" "$dir/broker.crt" > "$dir/broker.pem"
  chmod 600 "$dir/broker.pem" "$dir/broker.key"
  rm -f "$dir/ca.key" "$dir/broker.csr" "$dir/broker.ext" "$dir/broker.key" "$dir/broker.crt"
}

# secret FILE: a random password, made once and kept in FILE (mode 600).
secret() {
  local file="$1"
  if [[ ! -s "$file" ]]; then
    (umask 077 && mkdir -p "$(dirname "$file")" && openssl rand -hex 24 > "$file")
  fi
  cat "$file"
}

# security_properties PORT CONTROLLER_PORT STATE: the lines that replace the PLAINTEXT listeners (a
# cluster's nodes share STATE's certificate and passwords).
security_properties() {
  local port="$1" controller_port="$2" state="$3"
  local admin_password controller_password
  admin_password="$(secret "$state/secrets/admin")"
  controller_password="$(secret "$state/secrets/controller")"
  cat <<EOF
# KAFKA_LOCAL_SECURITY=sasl_ssl (infra/kafka/security.sh)
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$controller_password" user_admin="$controller_password";
ssl.keystore.type=PEM
ssl.keystore.location=$state/tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$state/tls/ca.pem
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
EOF
}

# listener_lines: the template's lines that security_properties replaces.
listener_lines='^(listeners|advertised\.listeners|listener\.security\.protocol\.map|inter\.broker\.listener\.name)='

# The --add-scram argument that gives `admin` its credential when the storage is formatted.
admin_scram() {
  echo "SCRAM-SHA-512=[name=admin,password=$(secret "$1/secrets/admin")]"
}

# admin_env BOOTSTRAP STATE: the CAPTIONER_KAFKA_* settings of the super user, shell-quoted, one a line.
admin_env() {
  local bootstrap="$1" state="$2"
  printf 'CAPTIONER_KAFKA_BOOTSTRAP_SERVERS=%q\n' "$bootstrap"
  printf 'CAPTIONER_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n'
  printf 'CAPTIONER_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n'
  printf 'CAPTIONER_KAFKA_SASL_USERNAME=admin\n'
  printf 'CAPTIONER_KAFKA_SASL_PASSWORD=%q\n' "$(secret "$state/secrets/admin")"
  printf 'CAPTIONER_KAFKA_SSL_CA_LOCATION=%q\n' "$state/tls/ca.pem"
}
