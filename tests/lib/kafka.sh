# Apache Kafka for the real-Kafka tests (coordinator/tests/real_kafka.rs):
# the release's jars resolved from Maven Central with mvn into a cache dir,
# reused by later runs. Nothing is downloaded from anywhere else. Source it,
# then call kafka_setup.
#
#   KSNAP_KAFKA_VERSION  the Kafka release (default below)
#   KSNAP_KAFKA_CACHE    where the jars go: <cache>/kafka-<version>/libs
#                        (default /var/cache/kafka-snapshot-tests)
#
# kafka_setup exports what the tests read:
#   KSNAP_TEST_KAFKA_HOME     <cache>/kafka-<version>: libs/ has every jar a
#                             broker, a controller and the storage tool need,
#                             log4j2.properties logs to the file named by
#                             -Dksnap.log
#   KSNAP_TEST_KAFKA_VERSION  the version in it
#
# A node runs as
#   java -cp "$KSNAP_TEST_KAFKA_HOME/libs/*" kafka.Kafka server.properties
# after
#   java -cp ... kafka.tools.StorageTool format -t <cluster id> -c server.properties ...

KSNAP_KAFKA_VERSION=${KSNAP_KAFKA_VERSION:-4.0.2}
KSNAP_KAFKA_CACHE=${KSNAP_KAFKA_CACHE:-/var/cache/kafka-snapshot-tests}

# The log4j2 version Kafka 4.0 ships with, and its binding for Kafka's
# slf4j 1.7 API: without a binding a broker logs nothing.
_KAFKA_LOG4J2_VERSION=2.24.3

_kafka_pom() { # version
    cat <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafka-snapshot-tests</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$1</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$_KAFKA_LOG4J2_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$_KAFKA_LOG4J2_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
}

# Resolves the jars once; a later call with the marker present does nothing.
kafka_install() {
    local version=$KSNAP_KAFKA_VERSION
    KSNAP_TEST_KAFKA_HOME=$KSNAP_KAFKA_CACHE/kafka-$version
    local marker=$KSNAP_TEST_KAFKA_HOME/.complete
    if [[ -f $marker ]]; then
        return
    fi
    echo "resolving kafka $version from Maven Central into $KSNAP_TEST_KAFKA_HOME (once)"
    rm -rf "$KSNAP_TEST_KAFKA_HOME"
    mkdir -p "$KSNAP_TEST_KAFKA_HOME/build"
    _kafka_pom "$version" >"$KSNAP_TEST_KAFKA_HOME/build/pom.xml"
    # A local repository of its own: the cache is all a later run needs.
    mvn -q -B -Dstyle.color=never -f "$KSNAP_TEST_KAFKA_HOME/build/pom.xml" \
        -Dmaven.repo.local="$KSNAP_TEST_KAFKA_HOME/build/m2" \
        dependency:copy-dependencies \
        -DincludeScope=runtime \
        -DoutputDirectory="$KSNAP_TEST_KAFKA_HOME/libs"
    cat >"$KSNAP_TEST_KAFKA_HOME/log4j2.properties" <<'LOG'
# One file per node, named by -Dksnap.log on the java command line.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:ksnap.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = info
LOG
    ls "$KSNAP_TEST_KAFKA_HOME"/libs/kafka_2.13-"$version".jar >/dev/null
    rm -rf "$KSNAP_TEST_KAFKA_HOME/build"
    # Last: a run that died half way leaves no marker and is redone.
    echo "$version" >"$marker"
}

kafka_setup() {
    command -v java >/dev/null || { echo "kafka_setup: java (17+) is needed" >&2; return 1; }
    command -v mvn >/dev/null || { echo "kafka_setup: mvn is needed" >&2; return 1; }
    kafka_install
    KSNAP_TEST_KAFKA_VERSION=$KSNAP_KAFKA_VERSION
    export KSNAP_TEST_KAFKA_HOME KSNAP_TEST_KAFKA_VERSION
    echo "kafka $KSNAP_TEST_KAFKA_VERSION: jars in $KSNAP_TEST_KAFKA_HOME/libs"
}
