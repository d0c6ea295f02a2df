/*
 * herald-mock-cluster: starts librdkafka's mock Kafka cluster on loopback and
 * takes control commands on stdin, one per line. It exits (and the brokers
 * with it) at `stop`, or when stdin closes without it: its owner died, and it
 * first journals what it acknowledged (at most 10 s), so it outlives its owner
 * only for that.
 *
 *   stdout on start:  "bootstraps 127.0.0.1:p1,127.0.0.1:p2,..."
 *   commands:         topic <name> <partitions> [replication]
 *                     down <brokerId> | up <brokerId> | rtt <brokerId> <ms>
 *                     journal <dir>
 *                     follow <topic> <partition> <fromOffset>
 *                     ping
 *                     stop   (a clean stop: exits without answering)
 *   each other command answers one line: "ok" or "err <reason>".
 *
 * The journal (embedded/journal.ts holds the file format and reads it back):
 * after `journal <dir>`, a librdkafka consumer in this process reads every
 * partition named by `follow` from the given offset and appends each record to
 * <dir>/<topic>/<partition>.log. After each write it reports on file descriptor
 * 3 (when the owner opened it), one line per partition written:
 *   "j <topic> <partition> <first offset> <next offset> <bytes>"
 * and "e <reason>" when a write fails (it is retried every 500 ms until it
 * succeeds; the file is cut back to its last whole record first, so it stays
 * intact). Each report covers consecutive offsets: records the broker dropped
 * before they were read start a new report at the next offset it has.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* ---- CRC-32 (IEEE, as zlib's crc32 and Node's zlib.crc32) ---- */
static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
}
static uint32_t crc32_of(const unsigned char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/* ---- a growable byte buffer ---- */
typedef struct { unsigned char *p; size_t len, cap; } buf_t;
static void buf_need(buf_t *b, size_t more) {
  if (b->len + more <= b->cap) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  unsigned char *p = realloc(b->p, cap);
  if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
  b->p = p;
  b->cap = cap;
}
static void buf_put(buf_t *b, const void *p, size_t n) {
  buf_need(b, n);
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
}
static void put_u32(unsigned char *at, uint32_t v) { at[0] = v >> 24; at[1] = v >> 16; at[2] = v >> 8; at[3] = v; }
static void buf_u32(buf_t *b, uint32_t v) { unsigned char x[4]; put_u32(x, v); buf_put(b, x, 4); }
static void buf_i64(buf_t *b, int64_t v) { buf_u32(b, (uint32_t)((uint64_t)v >> 32)); buf_u32(b, (uint32_t)v); }
/* A JSON string: quotes, backslashes and control characters escaped; other bytes as they are. */
static void buf_json(buf_t *b, const char *s, size_t n) {
  buf_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; buf_put(b, e, 2); }
    else if (c < 0x20) { char e[8]; snprintf(e, sizeof(e), "\\u%04x", c); buf_put(b, e, 6); }
    else buf_put(b, &c, 1);
  }
  buf_put(b, "\"", 1);
}

/* ---- the journal ---- */
typedef struct {
  char *topic;
  int32_t partition;
  int fd;
  off_t size;    /* the file's length up to its last whole record written */
  int dead;      /* its assignment failed: not followed */
  int64_t next;  /* the next offset to journal */
  int64_t first; /* first offset in `out`, -1 when empty */
  buf_t out;
} part_t;

static struct {
  char *dir;
  rd_kafka_t *rk;
  rd_kafka_queue_t *queue;
  pthread_t thread;
  int running;
  volatile int stop;
  pthread_mutex_t lock; /* guards the list of parts while `follow` adds one */
  part_t **parts;      /* pointers: a part never moves, so the loop writes outside the lock */
  int nparts, capparts;
  FILE *report;
  buf_t headers;
  volatile int64_t last_read_ms; /* when the writer last read a record (monotonic ms) */
} J;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
  if (!J.report) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(J.report, fmt, ap);
  va_end(ap);
}

static part_t *find_part(const char *topic, int32_t partition) {
  for (int i = 0; i < J.nparts; i++)
    if (!J.parts[i]->dead && J.parts[i]->partition == partition && strcmp(J.parts[i]->topic, topic) == 0) return J.parts[i];
  return NULL;
}

/* Frames one record as embedded/journal.ts encodeRecord does. */
static void frame(part_t *pt, const rd_kafka_message_t *m) {
  buf_t *h = &J.headers;
  h->len = 0;
  rd_kafka_headers_t *hdrs = NULL;
  if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs && rd_kafka_header_cnt(hdrs) > 0) {
    const char *name;
    const void *val;
    size_t size;
    buf_put(h, "{", 1);
    int emitted = 0;
    for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
      /* A repeated name keeps its first value (as Herald reads headers). */
      int seen = 0;
      const char *n2;
      const void *v2;
      size_t s2;
      for (size_t k = 0; k < i && !seen; k++)
        if (rd_kafka_header_get_all(hdrs, k, &n2, &v2, &s2) == RD_KAFKA_RESP_ERR_NO_ERROR && strcmp(n2, name) == 0) seen = 1;
      if (seen) continue;
      if (emitted++) buf_put(h, ",", 1);
      buf_json(h, name, strlen(name));
      buf_put(h, ":", 1);
      buf_json(h, val ? (const char *)val : "", val ? size : 0);
    }
    buf_put(h, "}", 1);
  }
  rd_kafka_timestamp_type_t tstype;
  int64_t ts = rd_kafka_message_timestamp(m, &tstype);
  if (ts < 0) ts = 0;
  size_t body = 8 + 8 + 4 + (m->key ? m->key_len : 0) + 4 + (m->payload ? m->len : 0) + 4 + h->len;
  buf_t *b = &pt->out;
  buf_need(b, 8 + body);
  size_t start = b->len;
  b->len += 8; /* length and CRC, filled in below */
  buf_i64(b, m->offset);
  buf_i64(b, ts);
  buf_u32(b, m->key ? (uint32_t)m->key_len : 0xFFFFFFFFu);
  if (m->key) buf_put(b, m->key, m->key_len);
  buf_u32(b, m->payload ? (uint32_t)m->len : 0xFFFFFFFFu);
  if (m->payload) buf_put(b, m->payload, m->len);
  buf_u32(b, (uint32_t)h->len);
  buf_put(b, h->p, h->len);
  put_u32(b->p + start, (uint32_t)body);
  put_u32(b->p + start + 4, crc32_of(b->p + start + 8, body));
}

/*
 * Writes a partition's framed records, then reports them. On a failure the file is cut back
 * to its last whole record (retried until that succeeds too) before the next try, so no
 * torn record is ever left between whole ones.
 */
static void flush_part(part_t *pt) {
  if (pt->out.len == 0) return;
  int warned = 0;
  for (;;) {
    int err = 0;
    if (lseek(pt->fd, 0, SEEK_END) != pt->size && ftruncate(pt->fd, pt->size) != 0) err = errno;
    size_t done = 0;
    while (!err && done < pt->out.len) {
      ssize_t w = write(pt->fd, pt->out.p + done, pt->out.len - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        err = errno;
      } else done += (size_t)w;
    }
    if (!err) break;
    if (!warned++) {
      report("e writing %s[%d] of the journal failed: %s; retrying every 500 ms\n", pt->topic, pt->partition, strerror(err));
      if (J.report) fflush(J.report);
    }
    if (J.stop) return;
    usleep(500 * 1000);
  }
  pt->size += (off_t)pt->out.len;
  report("j %s %d %lld %lld %zu\n", pt->topic, pt->partition, (long long)pt->first, (long long)pt->next, pt->out.len);
  pt->out.len = 0;
  pt->first = -1;
}

static void *journal_loop(void *arg) {
  (void)arg;
  rd_kafka_message_t *msgs[2048];
  while (!J.stop) {
    /* Waits for one record, then takes what else is queued without waiting (a batch call
       with a timeout would wait for a full batch). */
    rd_kafka_message_t *first = rd_kafka_consume_queue(J.queue, 100);
    if (!first) continue;
    msgs[0] = first;
    ssize_t more = rd_kafka_consume_batch_queue(J.queue, 0, msgs + 1, 2047);
    ssize_t n = 1 + (more > 0 ? more : 0);
    /* Only this thread frames and writes; the lock covers looking parts up. */
    pthread_mutex_lock(&J.lock);
    int nparts = J.nparts;
    for (ssize_t i = 0; i < n; i++) {
      rd_kafka_message_t *m = msgs[i];
      if (!m->err) {
        part_t *pt = find_part(rd_kafka_topic_name(m->rkt), m->partition);
        /* Records it has (a refetch) are skipped. After a gap (the broker dropped records
           before they were read), what was framed is written and reported first: a report
           covers consecutive offsets, and the next one starts after the gap. */
        if (pt && m->offset >= pt->next) {
          if (pt->out.len && m->offset != pt->next) {
            pthread_mutex_unlock(&J.lock);
            flush_part(pt);
            pthread_mutex_lock(&J.lock);
          }
          if (pt->first < 0) pt->first = m->offset;
          frame(pt, m);
          pt->next = m->offset + 1;
        }
      }
      rd_kafka_message_destroy(m);
    }
    nparts = J.nparts;
    pthread_mutex_unlock(&J.lock);
    /* `follow` may grow (realloc) the array meanwhile: each pointer is read under the lock
       (a part itself never moves). */
    for (int i = 0; i < nparts; i++) {
      pthread_mutex_lock(&J.lock);
      part_t *pt = J.parts[i];
      pthread_mutex_unlock(&J.lock);
      flush_part(pt);
    }
    if (J.report) fflush(J.report);
    J.last_read_ms = mono_ms();
  }
  return NULL;
}

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk; (void)level; (void)fac; (void)buf;
}

static const char *journal_start(const char *bootstraps, const char *dir) {
  if (J.rk) return "the journal is started already";
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  const char *settings[][2] = {
    {"bootstrap.servers", bootstraps},
    /* Never joined or committed: the consumer queue needs a group id, nothing else does. */
    {"group.id", "herald.journal-writer"},
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    {"auto.offset.reset", "earliest"},
    /* The mock answers a fetch at once when it has fetch.min.bytes, else after the wait:
       with 1 byte, any record made the writer fetch again at once (hundreds of small
       fetches a second at a moderate load); with 64 KB it fetches at most every 20 ms
       unless that much is waiting. */
    {"fetch.wait.max.ms", "20"},
    {"fetch.min.bytes", "65536"},
    {"fetch.error.backoff.ms", "10"},
    {"queued.max.messages.kbytes", "16384"},
    {"enable.partition.eof", "false"},
    {"log_level", "0"},
  };
  for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
    if (rd_kafka_conf_set(conf, settings[i][0], settings[i][1], errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      static char why[600];
      snprintf(why, sizeof(why), "%s", errstr);
      return why;
    }
  }
  rd_kafka_conf_set_log_cb(conf, quiet_log);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (!rk) {
    static char why[600];
    snprintf(why, sizeof(why), "%s", errstr);
    return why;
  }
  const char *why = NULL;
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_queue_t *queue = rd_kafka_queue_get_consumer(rk);
  if (!queue) why = "the journal's consumer has no queue";
  else if (mkdir(dir, 0777) != 0 && errno != EEXIST) why = strerror(errno);
  else {
    J.rk = rk;
    J.queue = queue;
    J.dir = strdup(dir);
    J.running = pthread_create(&J.thread, NULL, journal_loop, NULL) == 0;
    if (J.running) {
      /* Who writes this journal: a start after its owner was killed waits for this process
         to finish journaling (and exit) before it reads the files. */
      char path[4700];
      snprintf(path, sizeof(path), "%s/writer.pid", dir);
      FILE *f = fopen(path, "w");
      if (f) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
      }
      return NULL;
    }
    why = "starting the journal thread failed";
  }
  /* Nothing half-made stays behind: `journal` may be sent again. */
  if (queue) rd_kafka_queue_destroy(queue);
  rd_kafka_destroy(rk);
  J.rk = NULL;
  J.queue = NULL;
  free(J.dir);
  J.dir = NULL;
  return why;
}

static const char *journal_follow(const char *topic, int32_t partition, int64_t from) {
  if (!J.rk) return "no journal: send `journal <dir>` first";
  for (const char *c = topic; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-')) return "a topic name holds only [a-zA-Z0-9._-]";
  if (partition < 0 || from < 0) return "partition and offset must be >= 0";
  pthread_mutex_lock(&J.lock);
  if (find_part(topic, partition)) {
    pthread_mutex_unlock(&J.lock);
    return "that partition is followed already";
  }
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", J.dir, topic);
  if (mkdir(path, 0777) != 0 && errno != EEXIST) {
    pthread_mutex_unlock(&J.lock);
    return strerror(errno);
  }
  snprintf(path, sizeof(path), "%s/%s/%d.log", J.dir, topic, partition);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    pthread_mutex_unlock(&J.lock);
    return strerror(errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    pthread_mutex_unlock(&J.lock);
    return strerror(errno);
  }
  if (J.nparts == J.capparts) {
    J.capparts = J.capparts ? J.capparts * 2 : 64;
    J.parts = realloc(J.parts, sizeof(part_t *) * (size_t)J.capparts);
    if (!J.parts) { fprintf(stderr, "out of memory\n"); exit(1); }
  }
  part_t *pt = calloc(1, sizeof(part_t));
  if (!pt) { fprintf(stderr, "out of memory\n"); exit(1); }
  pt->topic = strdup(topic);
  pt->partition = partition;
  pt->fd = fd;
  pt->size = st.st_size;
  pt->next = from;
  pt->first = -1;
  J.parts[J.nparts++] = pt;
  pthread_mutex_unlock(&J.lock);
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, topic, partition)->offset = from;
  rd_kafka_error_t *error = rd_kafka_incremental_assign(J.rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (error) {
    static char why[600];
    snprintf(why, sizeof(why), "%s", rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    /* Not followed: `follow` may be sent again for it. */
    pthread_mutex_lock(&J.lock);
    pt->dead = 1;
    pthread_mutex_unlock(&J.lock);
    return why;
  }
  return NULL;
}

/*
 * After the owner died (SIGKILL, the OOM killer): its last acknowledged records may not have
 * been read yet. The writer keeps reading until every followed partition is journaled up to
 * the high watermark its consumer last saw (librdkafka's cached figure: no request, so a
 * broker that is down cannot hold this up) and nothing came for 100 ms, at most `ms` in all
 * by the monotonic clock. A partition not fetched yet (no watermark) is waited for 3 s at
 * most. A clean stop skips this: the owner waited for the journal before it sent `stop`.
 */
static void journal_drain(int ms) {
  if (!J.rk || !J.running) return;
  int64_t start = mono_ms();
  while (mono_ms() - start < ms) {
    int behind = 0;
    pthread_mutex_lock(&J.lock);
    for (int i = 0; i < J.nparts && !behind; i++) {
      part_t *pt = J.parts[i];
      if (pt->dead) continue;
      int64_t lo = -1, hi = -1;
      rd_kafka_get_watermark_offsets(J.rk, pt->topic, pt->partition, &lo, &hi);
      if (hi < 0) behind = mono_ms() - start < 3000;
      else if (pt->next < hi && hi > lo) behind = 1;
    }
    pthread_mutex_unlock(&J.lock);
    if (!behind && mono_ms() - J.last_read_ms >= 100) return;
    usleep(20 * 1000);
  }
}

static void journal_stop(void) {
  if (!J.rk) return;
  J.stop = 1;
  if (J.running) pthread_join(J.thread, NULL);
  rd_kafka_queue_destroy(J.queue);
  rd_kafka_destroy(J.rk);
  for (int i = 0; i < J.nparts; i++) close(J.parts[i]->fd);
  if (J.report) fflush(J.report);
  if (J.dir) {
    char path[4700];
    snprintf(path, sizeof(path), "%s/writer.pid", J.dir);
    unlink(path);
  }
}

/* The owner died: stop reading commands, journal what is left, and go. */
static volatile sig_atomic_t owner_gone = 0;
static void on_owner_death(int sig) {
  (void)sig;
  owner_gone = 1;
}

int main(int argc, char **argv) {
  int brokers = argc > 1 ? atoi(argv[1]) : 1;
  if (brokers < 1 || brokers > 16) {
    fprintf(stderr, "broker count must be 1..16, got %s\n", argv[1]);
    return 2;
  }
  /* The owner's death is told by SIGUSR1 (below) or by stdin's end: either ends the command
     loop, and the journal is drained before exit. Only the main thread takes SIGUSR1 (the
     threads librdkafka and the journal start inherit it blocked), so it interrupts fgets. */
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, NULL);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_owner_death;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: a blocked read returns EINTR */
  sigaction(SIGUSR1, &sa, NULL);
#ifdef __linux__
  /* Belt and braces: also told of the parent's death if stdin is inherited elsewhere. */
  prctl(PR_SET_PDEATHSIG, SIGUSR1);
#endif
  /* Ctrl-C, a terminal's hangup, and a process manager's SIGTERM to the whole group (systemd's default), reach
     this process too: the owner decides when to stop, and closes stdin once its last
     snapshot is taken. */
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  crc_init();
  pthread_mutex_init(&J.lock, NULL);
  /* The journal's reports go to fd 3 when the owner opened it. */
  if (fcntl(3, F_GETFD) != -1) J.report = fdopen(3, "w");
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
  const char *bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
  printf("bootstraps %s\n", bootstraps);
  fflush(stdout);

  /* The threads exist now (librdkafka's, the mock brokers'), with SIGUSR1 blocked; the
     journal's thread, started later by this thread, gets the mask at the point it is made,
     so it is unblocked only after the loop, never in another thread. */
  char line[4608];
  int clean_stop = 0;
  for (;;) {
    if (owner_gone) break;
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    char *got = owner_gone ? NULL : fgets(line, sizeof(line), stdin);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    if (!got) break;
    if (strncmp(line, "stop", 4) == 0 && (line[4] == '\n' || line[4] == '\r' || line[4] == 0)) {
      clean_stop = 1;
      break;
    }
    line[strcspn(line, "\r\n")] = 0;
    char cmd[32] = {0}, name[512] = {0};
    int a = 0, b = 0;
    long long from = 0;
    const char *why = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (sscanf(line, "topic %511s %d %d", name, &a, &b) >= 2) {
      err = rd_kafka_mock_topic_create(mc, name, a, b > 0 ? b : 1);
    } else if (sscanf(line, "down %d", &a) == 1) {
      err = rd_kafka_mock_broker_set_down(mc, a);
    } else if (sscanf(line, "up %d", &a) == 1) {
      err = rd_kafka_mock_broker_set_up(mc, a);
    } else if (sscanf(line, "rtt %d %d", &a, &b) == 2) {
      err = rd_kafka_mock_broker_set_rtt(mc, a, b);
    } else if (strncmp(line, "journal ", 8) == 0 && line[8]) {
      why = journal_start(bootstraps, line + 8);
    } else if (sscanf(line, "follow %511s %d %lld", name, &a, &from) == 3) {
      why = journal_follow(name, a, from);
    } else if (sscanf(line, "%31s", cmd) == 1 && strcmp(cmd, "ping") == 0) {
      err = RD_KAFKA_RESP_ERR_NO_ERROR;
    } else {
      printf("err unknown command\n");
      fflush(stdout);
      continue;
    }
    if (why) printf("err %s\n", why);
    else if (err) printf("err %s\n", rd_kafka_err2str(err));
    else printf("ok\n");
    fflush(stdout);
  }
  /* Ended without `stop`: the owner is gone (its death signal, or its end of stdin closed
     by the kernel), so what it was told was acknowledged is journaled first. */
  if (!clean_stop) journal_drain(10000);
  journal_stop();
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
