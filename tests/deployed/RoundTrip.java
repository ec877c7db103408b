// A Kafka client for tests/deployed.sh, run from the host with the jars of
// the Kafka release the guests run (kafka-clients is among them):
//
//   java -cp '<kafka>/libs/*' tests/deployed/RoundTrip.java <command> <bootstrap> <topic> [args]
//
//   create TOPIC PARTITIONS    replication factor 3, min.insync.replicas 2
//   produce TOPIC N PREFIX     N records PREFIX-0 .. PREFIX-(N-1), acks=all
//   consume TOPIC PREFIX N     reads the topic from the beginning; fails
//                              unless PREFIX-0 .. PREFIX-(N-1) are all there
//   lead TOPIC BROKER          preferred leader election, then fails unless
//                              BROKER leads a partition and every partition
//                              has 3 replicas in sync
//
// Exits 0 when the check holds, 1 with the reason on stderr otherwise.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.serialization.*;

public class RoundTrip {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            fail("usage: RoundTrip create|produce|consume|lead BOOTSTRAP TOPIC [args]");
        }
        String cmd = args[0], bootstrap = args[1], topic = args[2];
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("request.timeout.ms", "20000");
        switch (cmd) {
            case "create" -> create(p, topic, Integer.parseInt(args[3]));
            case "produce" -> produce(p, topic, Integer.parseInt(args[3]), args[4]);
            case "consume" -> consume(p, topic, args[3], Integer.parseInt(args[4]));
            case "lead" -> lead(p, topic, Integer.parseInt(args[3]));
            default -> fail("unknown command " + cmd);
        }
    }

    static void fail(String why) {
        System.err.println("RoundTrip: " + why);
        System.exit(1);
    }

    static void create(Properties p, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(p)) {
            NewTopic t = new NewTopic(topic, partitions, (short) 3)
                    .configs(Map.of("min.insync.replicas", "2"));
            admin.createTopics(List.of(t)).all().get();
            System.out.println("created " + topic + " with " + partitions + " partitions");
        }
    }

    static void produce(Properties p, String topic, int n, String prefix) throws Exception {
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("delivery.timeout.ms", "60000");
        try (Producer<String, String> producer =
                new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                sent.add(producer.send(new ProducerRecord<>(topic, prefix + "-" + i, prefix + "-" + i)));
            }
            producer.flush();
            for (var f : sent) {
                f.get();
            }
            System.out.println("produced " + n + " records " + prefix + "-* to " + topic);
        }
    }

    static void consume(Properties p, String topic, String prefix, int n) {
        p.put("group.id", "ksnap-deployed-" + UUID.randomUUID());
        p.put("enable.auto.commit", "false");
        p.put("auto.offset.reset", "earliest");
        Set<String> missing = new TreeSet<>();
        for (int i = 0; i < n; i++) {
            missing.add(prefix + "-" + i);
        }
        try (Consumer<String, String> consumer =
                new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            for (PartitionInfo pi : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                parts.add(new TopicPartition(topic, pi.partition()));
            }
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            long deadline = System.currentTimeMillis() + 60_000;
            while (!missing.isEmpty() && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofSeconds(1))) {
                    missing.remove(r.value());
                }
            }
        }
        if (!missing.isEmpty()) {
            fail(missing.size() + " of " + n + " records " + prefix + "-* not read from " + topic
                    + ", e.g. " + missing.iterator().next());
        }
        System.out.println("consumed all " + n + " records " + prefix + "-* from " + topic);
    }

    static void lead(Properties p, String topic, int broker) throws Exception {
        try (Admin admin = Admin.create(p)) {
            try {
                admin.electLeaders(ElectionType.PREFERRED, null).all().get();
            } catch (ExecutionException e) {
                // ElectionNotNeeded for partitions already led by their
                // preferred leader: the description below is what counts.
            }
            long deadline = System.currentTimeMillis() + 60_000;
            String problem;
            do {
                TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
                problem = null;
                boolean leads = false;
                for (TopicPartitionInfo tp : d.partitions()) {
                    if (tp.leader() != null && tp.leader().id() == broker) {
                        leads = true;
                    }
                    if (tp.isr().size() != 3) {
                        problem = topic + "-" + tp.partition() + " has ISR " + tp.isr();
                    }
                }
                if (problem == null && !leads) {
                    problem = "broker " + broker + " leads no partition of " + topic;
                }
                if (problem != null) {
                    Thread.sleep(1000);
                }
            } while (problem != null && System.currentTimeMillis() < deadline);
            if (problem != null) {
                fail(problem);
            }
            System.out.println("broker " + broker + " leads a partition of " + topic + ", every ISR has 3 replicas");
        }
    }
}
