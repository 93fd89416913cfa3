#!/bin/sh
# The secrets docker-compose.yml reads, made once into infra/deploy/secrets/ (git-ignored, never in an
# image): a CA and the broker's TLS key and certificate (signed by it, for the broker's host names), a
# random password for each Kafka principal, one API key, and the caption cache's Ed25519 key pair (the
# private key signs entries on workers; the public key verifies them on API instances).
#   infra/deploy/make-secrets.sh [DIR [BROKER_HOST...]]      (default: infra/deploy/secrets kafka)
# The folder is the owner's alone (0700); the files in it are readable by all (0644), because compose
# mounts each file as it is into containers that run as other users (uid 1000 in the broker, 10001 in
# ours). Passwords and the key are hex, so they need no quoting in a JAAS line or a --add-scram argument.
set -eu

dir="${1:-$(dirname "$0")/secrets}"
[ "$#" -gt 0 ] && shift
hosts="${*:-kafka}"
if [ -e "$dir/kafka_ca" ]; then
  echo "make-secrets.sh: $dir already holds secrets; remove it to make new ones" >&2
  exit 1
fi
mkdir -p "$dir"
chmod 700 "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=captioner compose CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$work/ca.key" -out "$dir/kafka_ca" 2>/dev/null
san=""
for host in $hosts; do san="${san:+$san,}DNS:$host"; done
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$work/broker.ext"
# A PKCS#8 key (what `openssl req -nodes` writes), which Kafka's PEM key store reads.
openssl req -newkey rsa:3072 -nodes -subj "/CN=${hosts%% *}" \
  -keyout "$work/broker.key" -out "$work/broker.csr" 2>/dev/null
openssl x509 -req -in "$work/broker.csr" -CA "$dir/kafka_ca" -CAkey "$work/ca.key" \
  -CAserial "$work/ca.srl" -CAcreateserial \
  -days 825 -extfile "$work/broker.ext" -out "$work/broker.crt" 2>/dev/null
cat "$work/broker.key" "$work/broker.crt" > "$dir/kafka_broker_tls"

# One principal per role: the broker itself, the API, the workers, the admin (topics, dlq).
for role in broker api worker admin; do
  openssl rand -hex 32 > "$dir/kafka_${role}_password"
done
openssl rand -hex 32 > "$dir/api_keys"
openssl genpkey -algorithm ed25519 -out "$dir/cache_signing_key" 2>/dev/null
openssl pkey -in "$dir/cache_signing_key" -pubout -out "$dir/cache_verify_keys" 2>/dev/null
chmod 644 "$dir"/*
echo "$dir"
