/* tests/unit/test_raft_log.c: raft/raftlog.c's import of libraft's own
 * segments (a data directory from a Cairn before the wal, and what
 * raft_bootstrap() writes): libraft's uv io writes a bootstrap entry and
 * appended entries into its segments; the same directory loaded through a
 * raftlog gives back every entry, the segment files are gone, and a second
 * load reads the same entries from the wal alone. */
#include <dirent.h>
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "raft/raftlog.h"
#include "raft/raftnode_int.h"
#include "test.h"

static uv_loop_t loop;

#define N_APPEND 300

static int appended;
static void on_append(struct raft_io_append *req, int status) {
  (void)req;
  CHECK_EQ_INT(status, 0);
  appended++;
}

static bool io_closed;
static void on_io_close(struct raft_io *io) {
  (void)io;
  io_closed = true;
}

static void run_until(bool *flag) {
  for (int i = 0; i < 100000 && !*flag; i++) {
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK(*flag);
}

static void payload(uint8_t *p, size_t len, unsigned i) {
  for (size_t k = 0; k < len; k++) {
    p[k] = (uint8_t)(i * 7 + k);
  }
}

static size_t len_of(unsigned i) {
  return 8 * (1 + i % 9);
}

static int count_uv_segments(const char *dir) {
  DIR *d = opendir(dir);
  CHECK(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned long long a, b;
    n += sscanf(e->d_name, "%llu-%llu", &a, &b) == 2 || strncmp(e->d_name, "open-", 5) == 0;
  }
  closedir(d);
  return n;
}

/* What io->load gave. */
struct loaded {
  raft_term term;
  raft_id vote;
  struct raft_snapshot *snap;
  raft_index start;
  struct raft_entry *entries;
  size_t n;
};

static struct loaded load(struct raft_io *io) {
  struct loaded l = {0};
  CHECK_OK(io->load(io, &l.term, &l.vote, &l.snap, &l.start, &l.entries, &l.n));
  return l;
}

/* Closes io (libraft's own or wrapped by a raftlog) and its transport. */
static void close_io(struct raft_io *io, struct raft_uv_transport *t) {
  io_closed = false;
  io->close(io, on_io_close);
  run_until(&io_closed);
  raft_uv_close(io);
  raft_uv_tcp_close(t);
  uv_run(&loop, UV_RUN_DEFAULT);
}

/* Writes a bootstrap entry and N_APPEND commands with libraft's uv io. */
static void write_with_libraft(const char *dir) {
  struct raft_uv_transport t;
  struct raft_io io;
  CHECK_OK(raft_uv_tcp_init(&t, &loop));
  CHECK_OK(raft_uv_init(&io, &loop, dir, &t));
  CHECK_OK(io.init(&io, 1, "127.0.0.1:1"));
  struct raft_configuration conf;
  raft_configuration_init(&conf);
  CHECK_OK(raft_configuration_add(&conf, 1, "127.0.0.1:1", RAFT_VOTER));
  CHECK_OK(io.bootstrap(&io, &conf));
  raft_configuration_close(&conf);
  struct loaded l = load(&io);
  struct raft_entry *entries = l.entries;
  size_t n = l.n;
  CHECK(l.snap == NULL);
  CHECK_EQ_INT(n, 1);
  raft_free(entries[0].batch);
  raft_free(entries);
  static struct raft_entry e[N_APPEND];
  static struct raft_io_append reqs[N_APPEND];
  for (unsigned i = 0; i < N_APPEND; i++) {
    e[i].term = 1 + i / 100;
    e[i].type = RAFT_COMMAND;
    e[i].buf.len = len_of(i);
    e[i].buf.base = raft_malloc(e[i].buf.len);
    payload(e[i].buf.base, e[i].buf.len, i);
    e[i].batch = NULL;
    CHECK_OK(io.append(&io, &reqs[i], &e[i], 1, on_append));
  }
  for (int k = 0; k < 100000 && appended < N_APPEND; k++) {
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK_EQ_INT(appended, N_APPEND);
  for (unsigned i = 0; i < N_APPEND; i++) {
    raft_free(e[i].buf.base);
  }
  close_io(&io, &t);
}

/* Loads dir through a raftlog and checks every entry. */
static void load_with_raftlog(const char *dir) {
  static raftnode node; /* only .log is used: raftlog finds itself there */
  struct raft r;
  memset(&r, 0, sizeof r);
  r.data = &node;
  struct raft_uv_transport t;
  struct raft_io io;
  CHECK_OK(raft_uv_tcp_init(&t, &loop));
  CHECK_OK(raft_uv_init(&io, &loop, dir, &t));
  CHECK_OK(raftlog_install(&io, &loop, dir, &node.log));
  io.data = &r;
  CHECK_OK(io.init(&io, 1, "127.0.0.1:1"));
  struct loaded l = load(&io);
  struct raft_entry *entries = l.entries;
  size_t n = l.n;
  CHECK_EQ_INT(l.term, 1);
  CHECK(l.snap == NULL);
  CHECK_EQ_INT(l.start, 1);
  CHECK_EQ_INT(n, 1 + N_APPEND);
  CHECK_EQ_INT(entries[0].type, RAFT_CHANGE);
  for (unsigned i = 0; i < N_APPEND; i++) {
    struct raft_entry *x = &entries[1 + i];
    CHECK_EQ_INT(x->term, 1 + i / 100);
    CHECK_EQ_INT(x->type, RAFT_COMMAND);
    CHECK_EQ_INT(x->buf.len, len_of(i));
    uint8_t want[80];
    payload(want, len_of(i), i);
    CHECK(memcmp(x->buf.base, want, len_of(i)) == 0);
  }
  raft_free(entries[0].batch);
  raft_free(entries);
  CHECK_EQ_INT(count_uv_segments(dir), 0); /* imported, then deleted */
  close_io(&io, &t);
}

int main(void) {
  test_seed("test_raft_log");
  CHECK_OK(uv_loop_init(&loop));
  char *dir = test_tmpdir("raftlog");
  printf("  import of libraft's segments\n");
  write_with_libraft(dir);
  CHECK(count_uv_segments(dir) > 0);
  load_with_raftlog(dir);
  printf("  the same log again, from the wal alone\n");
  load_with_raftlog(dir);
  test_rmdir(dir);
  CHECK_OK(uv_loop_close(&loop));
  printf("test_raft_log: ok\n");
  return 0;
}
