# Sourced by run-local.sh for `make run SECURE=1`: the local broker with TLS, SASL/SCRAM and an authorizer
# (KAFKA_LOCAL_SECURITY=sasl_ssl, infra/kafka/security.sh), a SCRAM user per role (api, worker, operator)
# with the ACLs `captioner topics acls` gives each, and `use_role ROLE`, which puts ROLE's principal in the
# environment of the processes started after it. Passwords are made once per broker state directory and
# never appear on a command line.
# shellcheck source=kafka/security.sh
source "$repo/infra/kafka/security.sh"
if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  echo "SECURE=1 starts a secured local broker of its own: unset KAFKA_BOOTSTRAP_SERVERS" >&2
  exit 2
fi
export KAFKA_LOCAL_SECURITY=sasl_ssl
secure_roles=(api worker operator)

# After the broker has started: users, ACLs, and each role's settings in <state>/<role>.env.
secure_local_setup() {
  local state role
  state="$("$repo/infra/kafka/broker.sh" state)"
  secure_state="$state"
  export CAPTIONER_KAFKA_SECURITY_PROTOCOL=SASL_SSL CAPTIONER_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 \
    CAPTIONER_KAFKA_SSL_CA_LOCATION="$state/tls/ca.pem"
  for role in "${secure_roles[@]}"; do
    secret "$state/secrets/$role" | as_admin "$bin/captioner" topics scram-user "$role" >/dev/null
    (umask 077 && sed -e "s/^CAPTIONER_KAFKA_SASL_USERNAME=.*/CAPTIONER_KAFKA_SASL_USERNAME=$role/" \
      -e "s/^CAPTIONER_KAFKA_SASL_PASSWORD=.*/CAPTIONER_KAFKA_SASL_PASSWORD=$(secret "$state/secrets/$role")/" \
      "$state/admin.env" > "$state/$role.env")
  done
  as_admin "$bin/captioner" topics acls --api User:api --worker User:worker --operator User:operator >/dev/null
  echo "secured Kafka (TLS + SCRAM-SHA-512, ACLs): each role's settings in $state/<role>.env," \
    "e.g. set -a; source $state/operator.env; set +a; captioner dlq list"
}

as_admin() {
  (set -a && source "$secure_state/admin.env" && set +a && "$@")
}

use_role() {
  export CAPTIONER_KAFKA_SASL_USERNAME="$1"
  CAPTIONER_KAFKA_SASL_PASSWORD="$(secret "$secure_state/secrets/$1")"
  export CAPTIONER_KAFKA_SASL_PASSWORD
}
