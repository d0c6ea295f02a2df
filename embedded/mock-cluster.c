/*
 * herald-mock-cluster: starts librdkafka's mock Kafka cluster on loopback and
 * takes control commands on stdin, one per line. It exits (and the brokers
 * with it) when stdin closes, so it never outlives the process that owns it.
 *
 *   stdout on start:  "bootstraps 127.0.0.1:p1,127.0.0.1:p2,..."
 *   commands:         topic <name> <partitions> [replication]
 *                     down <brokerId> | up <brokerId> | rtt <brokerId> <ms>
 *                     ping
 *   each command answers one line: "ok" or "err <reason>".
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <signal.h>
#include <sys/prctl.h>
#endif

int main(int argc, char **argv) {
  int brokers = argc > 1 ? atoi(argv[1]) : 1;
  if (brokers < 1 || brokers > 16) {
    fprintf(stderr, "broker count must be 1..16, got %s\n", argv[1]);
    return 2;
  }
#ifdef __linux__
  /* Belt and braces: also die with the parent if stdin is inherited elsewhere. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  /* Quiet the owning handle: it never connects anywhere. */
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr));
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!rk) {
    fprintf(stderr, "rd_kafka_new failed: %s\n", errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (!mc) {
    fprintf(stderr, "rd_kafka_mock_cluster_new failed\n");
    return 1;
  }
  printf("bootstraps %s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);

  char line[1024];
  while (fgets(line, sizeof(line), stdin)) {
    char cmd[32] = {0}, name[512] = {0};
    int a = 0, b = 0;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (sscanf(line, "topic %511s %d %d", name, &a, &b) >= 2) {
      err = rd_kafka_mock_topic_create(mc, name, a, b > 0 ? b : 1);
    } else if (sscanf(line, "down %d", &a) == 1) {
      err = rd_kafka_mock_broker_set_down(mc, a);
    } else if (sscanf(line, "up %d", &a) == 1) {
      err = rd_kafka_mock_broker_set_up(mc, a);
    } else if (sscanf(line, "rtt %d %d", &a, &b) == 2) {
      err = rd_kafka_mock_broker_set_rtt(mc, a, b);
    } else if (sscanf(line, "%31s", cmd) == 1 && strcmp(cmd, "ping") == 0) {
      err = RD_KAFKA_RESP_ERR_NO_ERROR;
    } else {
      printf("err unknown command\n");
      fflush(stdout);
      continue;
    }
    if (err) printf("err %s\n", rd_kafka_err2str(err));
    else printf("ok\n");
    fflush(stdout);
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
