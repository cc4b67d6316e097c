package io.qustream.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.avro.message.SchemaStore;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * What a Java user of QuStream's topics runs, with Avro's and Kafka's own libraries.
 *
 * <p>{@code decode CONFIG}: reads every given topic from its beginning to its end offset as of
 * the start (read_committed), decodes every message with Avro's {@link BinaryMessageDecoder}
 * over a {@link SchemaStore.Cache} holding every schema file of the given folders, re-encodes
 * the records written with a current schema to compare bytes, and checks that each keyed
 * record is on the partition Java's default partitioner chooses for its key.
 *
 * <p>{@code produce CONFIG}: encodes one record given in Avro's JSON encoding with {@link
 * BinaryMessageEncoder} and sends it, keyed, with a plain {@link KafkaProducer} (default
 * partitioner).
 *
 * <p>CONFIG is a JSON file (written by tests/interop/java_client.py); the result is one JSON
 * object on stdout.
 */
public final class Interop {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final int MAX_SAMPLES = 3;

  private Interop() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: Interop decode|produce CONFIG.json");
      System.exit(2);
    }
    JsonNode config = JSON.readTree(new File(args[1]));
    ObjectNode result;
    switch (args[0]) {
      case "decode" -> result = decode(config);
      case "produce" -> result = produce(config);
      default -> throw new IllegalArgumentException("unknown mode " + args[0]);
    }
    System.out.println(JSON.writeValueAsString(result));
  }

  /** Every .avsc file of a folder, each parsed on its own (versions of a schema share a name). */
  private static List<Schema> schemasIn(String folder) throws IOException {
    List<Schema> schemas = new ArrayList<>();
    try (Stream<Path> files = Files.list(Path.of(folder))) {
      for (Path file : files.filter(f -> f.toString().endsWith(".avsc")).sorted().toList()) {
        schemas.add(new Schema.Parser().parse(file.toFile()));
      }
    }
    return schemas;
  }

  private static Map<String, Schema> byName(List<Schema> schemas) {
    Map<String, Schema> map = new HashMap<>();
    for (Schema schema : schemas) {
      map.put(schema.getName(), schema);
    }
    return map;
  }

  private static ObjectNode decode(JsonNode config) throws IOException {
    Map<String, Schema> current = byName(schemasIn(config.get("schemas").asText()));
    SchemaStore.Cache store = new SchemaStore.Cache();
    int stored = 0;
    for (String folder : List.of(config.get("schemas").asText(), config.get("history").asText())) {
      for (Schema schema : schemasIn(folder)) {
        store.addSchema(schema);
        stored++;
      }
    }
    Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();
    Map<String, BinaryMessageEncoder<GenericRecord>> encoders = new HashMap<>();
    Map<String, Long> fingerprints = new HashMap<>();
    for (Schema schema : current.values()) {
      decoders.put(schema.getName(), new BinaryMessageDecoder<>(GenericData.get(), schema, store));
      encoders.put(schema.getName(), new BinaryMessageEncoder<>(GenericData.get(), schema));
      fingerprints.put(schema.getName(), SchemaNormalization.parsingFingerprint64(schema));
    }
    ObjectNode result = JSON.createObjectNode();
    result.put("schemas_in_store", stored);
    ObjectNode topics = result.putObject("topics");
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProperties(config))) {
      var fields = config.get("topics").fields();
      while (fields.hasNext()) {
        var entry = fields.next();
        List<String> names = new ArrayList<>();
        entry.getValue().forEach(n -> names.add(n.asText()));
        topics.set(entry.getKey(),
            decodeTopic(consumer, entry.getKey(), names, decoders, encoders, fingerprints));
      }
    }
    return result;
  }

  private static Properties consumerProperties(JsonNode config) {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, config.get("bootstrap").asText());
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, String.valueOf(16 << 20));
    props.put(ConsumerConfig.FETCH_MAX_BYTES_CONFIG, String.valueOf(64 << 20));
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    return props;
  }

  private static ObjectNode decodeTopic(
      KafkaConsumer<byte[], byte[]> consumer,
      String topic,
      List<String> names,
      Map<String, BinaryMessageDecoder<GenericRecord>> decoders,
      Map<String, BinaryMessageEncoder<GenericRecord>> encoders,
      Map<String, Long> fingerprints) {
    int partitions = consumer.partitionsFor(topic).size();
    List<TopicPartition> assigned = new ArrayList<>();
    for (int p = 0; p < partitions; p++) {
      assigned.add(new TopicPartition(topic, p));
    }
    consumer.assign(assigned);
    consumer.seekToBeginning(assigned);
    Map<TopicPartition, Long> end = consumer.endOffsets(assigned);
    long messages = 0, decoded = 0, identical = 0, keyed = 0, placed = 0;
    Map<String, Long> bySchema = new HashMap<>();
    ArrayNode failures = JSON.createArrayNode();
    ArrayNode misplaced = JSON.createArrayNode();
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(180);
    while (!caughtUp(consumer, end) && System.nanoTime() < deadline) {
      for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
        if (record.offset() >= end.get(new TopicPartition(topic, record.partition()))) {
          continue; // written after we started: not part of this snapshot
        }
        messages++;
        byte[] value = record.value();
        String error = "no value";
        for (String name : names) {
          try {
            GenericRecord decodedRecord = decoders.get(name).decode(value);
            decoded++;
            bySchema.merge(name, 1L, Long::sum);
            long written = ByteBuffer.wrap(value, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
            if (written == fingerprints.get(name)) {
              ByteBuffer again = encoders.get(name).encode(decodedRecord);
              byte[] bytes = new byte[again.remaining()];
              again.get(bytes);
              if (Arrays.equals(bytes, value)) {
                identical++;
              }
            }
            error = null;
            break;
          } catch (Exception exc) {
            error = exc.getClass().getSimpleName() + ": " + exc.getMessage();
          }
        }
        if (error != null && failures.size() < MAX_SAMPLES) {
          failures.addObject().put("partition", record.partition())
              .put("offset", record.offset()).put("error", error);
        }
        if (record.key() != null) {
          keyed++;
          int java = BuiltInPartitioner.partitionForKey(record.key(), partitions);
          if (java == record.partition()) {
            placed++;
          } else if (misplaced.size() < MAX_SAMPLES) {
            misplaced.addObject().put("key_hex", HexFormat.of().formatHex(record.key()))
                .put("partition", record.partition()).put("java_partition", java);
          }
        }
      }
    }
    ObjectNode stats = JSON.createObjectNode();
    stats.put("partitions", partitions);
    stats.put("caught_up", caughtUp(consumer, end));
    stats.put("messages", messages);
    stats.put("decoded", decoded);
    stats.put("reencoded_identical", identical);
    stats.set("by_schema", JSON.valueToTree(bySchema));
    stats.set("failures", failures);
    stats.put("keyed", keyed);
    stats.put("on_java_partition", placed);
    stats.set("misplaced", misplaced);
    return stats;
  }

  private static boolean caughtUp(KafkaConsumer<byte[], byte[]> consumer,
                                  Map<TopicPartition, Long> end) {
    for (var entry : end.entrySet()) {
      if (consumer.position(entry.getKey()) < entry.getValue()) {
        return false;
      }
    }
    return true;
  }

  private static ObjectNode produce(JsonNode config) throws Exception {
    Schema schema = byName(schemasIn(config.get("schemas").asText()))
        .get(config.get("schema").asText());
    GenericRecord record = new GenericDatumReader<GenericRecord>(schema).read(
        null, DecoderFactory.get().jsonDecoder(schema, config.get("record_json").asText()));
    ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema)
        .encode(record);
    byte[] value = new byte[encoded.remaining()];
    encoded.get(value);
    byte[] key = config.get("key").asText().getBytes(java.nio.charset.StandardCharsets.UTF_8);
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, config.get("bootstrap").asText());
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    String topic = config.get("topic").asText();
    ObjectNode result = JSON.createObjectNode();
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
      RecordMetadata sent = producer.send(new ProducerRecord<>(topic, key, value))
          .get(60, TimeUnit.SECONDS);
      result.put("partition", sent.partition());
      result.put("offset", sent.offset());
      result.put("partitions", producer.partitionsFor(topic).size());
    }
    result.put("header_hex", HexFormat.of().formatHex(Arrays.copyOf(value, 10)));
    result.put("value_hex", HexFormat.of().formatHex(value));
    return result;
  }
}
