#!/bin/sh
# The broker of docker-compose.yml (apache/kafka): one KRaft node whose clients all come over SASL_SSL
# with SCRAM-SHA-512, each role as its own principal. The controller listener is bound to the
# container's loopback, so no other container reaches it. Its configuration is written here at start,
# into the container's /tmp, because the broker's own JAAS line needs its password from the secrets; the
# SCRAM credentials of every principal are added when the storage is first formatted (KRaft keeps them
# in its metadata log; a formatted storage keeps the ones it has).
# The environment names the rest, for compose's defaults and for tests/infra/test_compose_broker.py,
# which runs this script against the same Kafka release's jars.
set -eu

secrets="${BROKER_SECRETS:-/run/secrets}"
host="${BROKER_HOST:-kafka}"
port="${BROKER_PORT:-9092}"
controller_port="${BROKER_CONTROLLER_PORT:-9093}"
data="${BROKER_DATA:-/tmp/kafka-data}"
config_dir="${BROKER_CONFIG:-/tmp/kafka-config}"
storage_tool="${BROKER_STORAGE_TOOL:-/opt/kafka/bin/kafka-storage.sh}"
server="${BROKER_SERVER:-/opt/kafka/bin/kafka-server-start.sh}"

password() { cat "$secrets/kafka_$1_password"; }

umask 077
mkdir -p "$config_dir" "$data"
config="$config_dir/server.properties"
cat > "$config" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:$controller_port
controller.listener.names=CONTROLLER
listeners=SASL_SSL://:$port,CONTROLLER://localhost:$controller_port
advertised.listeners=SASL_SSL://$host:$port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$(password broker)";
ssl.keystore.type=PEM
ssl.keystore.location=$secrets/kafka_broker_tls
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka_ca
ssl.endpoint.identification.algorithm=https
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# = CAPTIONER_TOPIC_MAX_MESSAGE_BYTES (16 MiB)
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
# The DLQ keeps 14 days; replay progress must outlive it.
offsets.retention.minutes=20160
PROPERTIES

# What the healthcheck (and an operator in the container) connects with: the broker's own principal.
cat > "$config_dir/client.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$(password broker)";
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka_ca
PROPERTIES

scram() { echo "SCRAM-SHA-512=[name=$1,password=$(password "$2")]"; }
"$storage_tool" format --ignore-formatted --cluster-id "$("$storage_tool" random-uuid)" --config "$config" \
  --add-scram "$(scram broker broker)" \
  --add-scram "$(scram captioner-api api)" \
  --add-scram "$(scram captioner-worker worker)" \
  --add-scram "$(scram captioner-admin admin)"
exec "$server" "$config"
