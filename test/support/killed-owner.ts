/**
 * An owner of the embedded broker killed with SIGKILL right after its records were
 * acknowledged (run by test/embedded.int.test.ts): starts a broker journaling into the
 * directory given, sends 2,000 records with acks=-1, prints how many were acknowledged,
 * and kills itself. Its broker is left to journal them and exit.
 */
import kafkajs from 'kafkajs';
import { EmbeddedBroker } from '../../embedded/broker.ts';
import { Journal } from '../../embedded/journal.ts';
import { BrokerJournal } from '../../embedded/persistence.ts';
import { createLogger } from '../../runtime/logger.ts';

const { Kafka, logLevel, Partitioners } = kafkajs;
const dir = process.argv[2]!;
const broker = await EmbeddedBroker.start();
const topic = 'killed-owner';
await broker.createTopic(topic, 4);
const kafka = new Kafka({ clientId: 'killed-owner', brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING });
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
const admin = kafka.admin();
await Promise.all([producer.connect(), admin.connect()]);
await new BrokerJournal(Journal.open(dir), broker, admin, producer, createLogger('silent')).follow([topic]);
let acked = 0;
for (let i = 0; i < 20; i++) {
  const messages = Array.from({ length: 100 }, (_, j) => ({ key: `k-${i}-${j}`, value: `v-${i}-${j}` }));
  await producer.send({ topic, acks: -1, messages });
  acked += messages.length;
}
process.stdout.write(`acked ${acked}\n`, () => process.kill(process.pid, 'SIGKILL'));
