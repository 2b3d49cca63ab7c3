#!/bin/sh
# Start the secured Kafka broker of deploy/compose.secure.yml (the `kafka` service's command).
#
# The apache/kafka image configures the broker from KAFKA_* variables, but SCRAM users must exist
# before the broker accepts a SASL login, and only `kafka-storage.sh format --add-scram` creates
# them on a fresh KRaft node. So this script, instead of the image's /etc/kafka/docker/run:
#
#   1. reads the passwords, the CA and the server certificate from /run/secrets (compose secrets),
#   2. writes, in a private directory (mode 0700, files 0600):
#        server.properties         KRaft single node; clients only over SASL_SSL (SCRAM-SHA-512):
#                                  SASL_SSL://:9092 (containers, advertised as kafka:9092) and
#                                  HOST://:29092 (published on the host's 127.0.0.1, advertised
#                                  as localhost:29092); the KRaft controller listener is plaintext
#                                  but bound to 127.0.0.1 inside the container
#        server-keystore.pem       server key + certificate (Kafka's PEM keystore wants both in one file)
#        admin-client.properties   client config of the admin user, for the healthcheck and operators
#   3. formats the storage once (`--ignore-formatted`: a formatted volume is left as it is, and so
#      are the SCRAM credentials stored in it), creating the SCRAM users admin, router and stats,
#   4. execs kafka-server-start.sh.
#
# It never prints a password. Passwords must match [A-Za-z0-9._~-]+ (they go into a JAAS line and
# a --add-scram argument unquoted); the script refuses any other value without showing it.
#
# Environment (defaults in brackets): KAFKA_NODE_ID [1], CLUSTER_ID (required), KAFKA_LOG_DIRS
# [/var/lib/kafka/data], KAFKA_NUM_PARTITIONS [1], KAFKA_AUTO_CREATE_TOPICS_ENABLE [true],
# KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR, KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR,
# KAFKA_TRANSACTION_STATE_LOG_MIN_ISR [1], KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS [0] -- the
# base file's values; the listeners and the security settings are fixed here on purpose.
# For tests: VAR_KAFKA_SECRETS_DIR [/run/secrets], VAR_KAFKA_CONFIG_DIR [/tmp/var-kafka],
# KAFKA_HOME [/opt/kafka], VAR_KAFKA_DRY_RUN=1 (write the files, then stop before formatting).
set -eu
umask 077

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
SECRETS=${VAR_KAFKA_SECRETS_DIR:-/run/secrets}
CONF=${VAR_KAFKA_CONFIG_DIR:-/tmp/var-kafka}

die() {
    echo "kafka-start: $*" >&2
    exit 1
}

need_file() {  # need_file SECRET: fail unless /run/secrets/SECRET is a readable, non-empty file
    [ -f "$SECRETS/$1" ] || die "secret $1 is missing ($SECRETS/$1): run the secrets generator (deploy/README.md)"
    [ -r "$SECRETS/$1" ] || die "secret $1 is not readable by uid $(id -u) ($SECRETS/$1): see deploy/README.md"
    [ -s "$SECRETS/$1" ] || die "secret $1 is empty ($SECRETS/$1)"
}

password() {  # password SECRET: the password in /run/secrets/SECRET (trailing newlines dropped)
    need_file "$1"
    value=$(cat "$SECRETS/$1")
    case $value in
        '') die "secret $1 is empty" ;;
        *[!A-Za-z0-9._~-]*) die "secret $1 contains characters outside [A-Za-z0-9._~-] (value not shown)" ;;
    esac
    printf '%s' "$value"
}

jaas() {  # jaas USER PASSWORD
    printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' "$1" "$2"
}

[ -n "${CLUSTER_ID:-}" ] || die "CLUSTER_ID is not set"
node_id=${KAFKA_NODE_ID:-1}
case $node_id in '' | *[!0-9]*) die "KAFKA_NODE_ID must be a number" ;; esac

admin_password=$(password kafka_admin_password)
router_password=$(password kafka_router_password)
stats_password=$(password kafka_stats_password)
need_file ca_cert
need_file server_cert
need_file server_key
grep -q -- '-----BEGIN PRIVATE KEY-----' "$SECRETS/server_key" ||
    die "secret server_key must be an unencrypted PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)"
grep -q -- '-----BEGIN CERTIFICATE-----' "$SECRETS/server_cert" || die "secret server_cert is not a PEM certificate"

mkdir -p "$CONF"
chmod 700 "$CONF"

# Kafka's PEM keystore (ssl.keystore.location) holds the private key and the certificate chain.
cat "$SECRETS/server_key" "$SECRETS/server_cert" > "$CONF/server-keystore.pem"

cat > "$CONF/server.properties" <<EOF
# Written by deploy/secure/kafka-start.sh -- do not edit (rewritten at every start).
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$node_id@127.0.0.1:9093
controller.listener.names=CONTROLLER
listeners=SASL_SSL://:9092,HOST://:29092,CONTROLLER://127.0.0.1:9093
advertised.listeners=SASL_SSL://kafka:9092,HOST://localhost:29092
listener.security.protocol.map=SASL_SSL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas admin "$admin_password")
listener.name.host.scram-sha-512.sasl.jaas.config=$(jaas admin "$admin_password")
ssl.keystore.type=PEM
ssl.keystore.location=$CONF/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$SECRETS/ca_cert
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
log.dirs=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
num.partitions=${KAFKA_NUM_PARTITIONS:-1}
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS_ENABLE:-true}
offsets.topic.replication.factor=${KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR:-1}
transaction.state.log.replication.factor=${KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR:-1}
transaction.state.log.min.isr=${KAFKA_TRANSACTION_STATE_LOG_MIN_ISR:-1}
group.initial.rebalance.delay.ms=${KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS:-0}
EOF

cat > "$CONF/admin-client.properties" <<EOF
# Written by deploy/secure/kafka-start.sh: the admin user's client config (healthcheck, operators):
#   kafka-topics.sh --bootstrap-server localhost:9092 --command-config $CONF/admin-client.properties --list
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(jaas admin "$admin_password")
ssl.truststore.type=PEM
ssl.truststore.location=$SECRETS/ca_cert
EOF

if [ "${VAR_KAFKA_DRY_RUN:-0}" = 1 ]; then
    echo "kafka-start: dry run: wrote $CONF/server.properties and $CONF/admin-client.properties"
    exit 0
fi

# Format once, creating the SCRAM users. Its output is shown with every line that contains a
# password removed (the patterns come from a private file, not the command line).
printf '%s\n' "$admin_password" "$router_password" "$stats_password" > "$CONF/.redact"
status=0
output=$("$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted -t "$CLUSTER_ID" -c "$CONF/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]" \
    --add-scram "SCRAM-SHA-512=[name=router,password=$router_password]" \
    --add-scram "SCRAM-SHA-512=[name=stats,password=$stats_password]" 2>&1) || status=$?
printf '%s\n' "$output" | grep -v -F -f "$CONF/.redact" || true
rm -f "$CONF/.redact"
[ "$status" = 0 ] || die "kafka-storage.sh format failed (exit $status)"

unset admin_password router_password stats_password output
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$CONF/server.properties"
