/* tests/unit/test_replace.c: mvcc_snapshot_verify() and mvcc_replace().
 *
 * - verify reads what export wrote (applied index, term, revision,
 *   compaction) and refuses a missing file, random bytes, a truncated
 *   export and an LMDB file that is not a Cairn store;
 * - replace swaps an open store's data for a snapshot: the same handle then
 *   reads exactly the snapshot's store (every key, version, revision,
 *   lease), goes on applying after the snapshot's index, refuses replays,
 *   and reopens as the new store; a foreign file is refused and changes
 *   nothing;
 * - crash: a child replaces its store again and again with one of two
 *   snapshots; SIGKILL at a random moment (half of them inside a replace);
 *   the store then opens (also as after a machine restart: the sync marker
 *   vouches for the file in place) and is
 *   exactly one of the three stores (the first, or one of the snapshots),
 *   whole, and takes writes. */
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>

#include <lmdb.h>

#include "storage/mvcc.h"
#include "test.h"

static uint64_t next_index;

/* Puts n keys "k/<prefix>/<i>" with values derived from tag, one op per
 * raft index, in batches of 50. */
static void fill(mvcc_store *s, const char *prefix, int n, uint64_t tag) {
  struct mvcc_op ops[50];
  struct mvcc_result res[50];
  char keys[50][64], vals[50][64];
  for (int i = 0; i < n;) {
    size_t m = 0;
    for (; m < 50 && i < n; m++, i++) {
      snprintf(keys[m], sizeof keys[m], "k/%s/%05d", prefix, i);
      snprintf(vals[m], sizeof vals[m], "v-%" PRIu64 "-%d", tag, i * 7);
      memset(&ops[m], 0, sizeof ops[m]);
      ops[m].type = MVCC_OP_PUT;
      ops[m].raft_index = ++next_index;
      ops[m].raft_term = 3;
      ops[m].u.put.key = (struct mvcc_bytes){(const uint8_t *)keys[m], strlen(keys[m])};
      ops[m].u.put.value = (struct mvcc_bytes){(const uint8_t *)vals[m], strlen(vals[m])};
    }
    CHECK_OK(mvcc_apply(s, ops, m, res));
    for (size_t j = 0; j < m; j++) {
      CHECK_OK(res[j].err);
      mvcc_result_free(&res[j]);
    }
  }
}

static void apply1(mvcc_store *s, struct mvcc_op *op, int want) {
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(s, op, 1, &r));
  CHECK_ERR(r.err, want);
  mvcc_result_free(&r);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    h = (h ^ b[i]) * 0x100000001b3ull;
  }
  return h;
}

/* A digest of everything a client can see: every key with its value and
 * revisions, the revision, compaction, applied index and term, leases. */
static uint64_t digest(mvcc_store *s) {
  struct mvcc_range_req rq = {.key = {(const uint8_t *)"\0", 1},
                              .range_end = {(const uint8_t *)"\0", 1}};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(s, &rq, &r));
  CHECK_OK(r.err);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < r.u.range.n_kvs; i++) {
    const struct mvcc_kv *kv = &r.u.range.kvs[i];
    h = fnv(h, kv->key.data, kv->key.len);
    h = fnv(h, kv->value.data, kv->value.len);
    int64_t nums[4] = {kv->create_revision, kv->mod_revision, kv->version, kv->lease};
    h = fnv(h, nums, sizeof nums);
  }
  h = fnv(h, &r.u.range.n_kvs, sizeof r.u.range.n_kvs);
  mvcc_result_free(&r);
  int64_t st[2] = {mvcc_current_revision(s), mvcc_compacted_revision(s)};
  uint64_t idx[2] = {mvcc_applied_index(s), mvcc_applied_term(s)};
  h = fnv(h, st, sizeof st);
  h = fnv(h, idx, sizeof idx);
  struct mvcc_lease *leases;
  size_t n;
  CHECK_OK(mvcc_lease_list(s, &leases, &n));
  for (size_t i = 0; i < n; i++) {
    h = fnv(h, &leases[i].id, sizeof leases[i].id);
    h = fnv(h, &leases[i].ttl, sizeof leases[i].ttl);
  }
  free(leases);
  return h;
}

static void copy_file(const char *from, const char *to) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  CHECK(system(cmd) == 0);
}

/* A store in its own directory with data of its own; returns its digest
 * and writes an export of it to export_path. */
static uint64_t make_snapshot(const char *tag, int keys, uint64_t seed, const char *export_path,
                              struct mvcc_snapshot_info *want) {
  char *dir = test_tmpdir(tag);
  mvcc_store *s;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  fill(s, tag, keys, seed);
  /* a lease with a key, a delete, a compaction: more than puts */
  struct mvcc_op g = {.type = MVCC_OP_LEASE_GRANT, .raft_index = ++next_index, .raft_term = 4};
  g.u.lease_grant.id = 77;
  g.u.lease_grant.ttl = 60;
  apply1(s, &g, 0);
  struct mvcc_op p = {.type = MVCC_OP_PUT, .raft_index = ++next_index, .raft_term = 4};
  p.u.put.key = (struct mvcc_bytes){(const uint8_t *)"leased", 6};
  p.u.put.value = (struct mvcc_bytes){(const uint8_t *)tag, strlen(tag)};
  p.u.put.lease = 77;
  apply1(s, &p, 0);
  char first[64];
  snprintf(first, sizeof first, "k/%s/00000", tag);
  struct mvcc_op d = {.type = MVCC_OP_DELETE, .raft_index = ++next_index, .raft_term = 5};
  d.u.del.key = (struct mvcc_bytes){(const uint8_t *)first, strlen(first)};
  apply1(s, &d, 0);
  struct mvcc_op c = {.type = MVCC_OP_COMPACT, .raft_index = ++next_index, .raft_term = 5};
  c.u.compact_revision = mvcc_current_revision(s) - 3;
  apply1(s, &c, 0);
  bool done = false;
  while (!done) {
    CHECK_OK(mvcc_compact_step(s, 0, &done));
  }
  uint64_t h = digest(s);
  if (want != NULL) {
    want->applied_index = mvcc_applied_index(s);
    want->applied_term = mvcc_applied_term(s);
    want->revision = mvcc_current_revision(s);
    want->compacted_revision = mvcc_compacted_revision(s);
  }
  unlink(export_path);
  CHECK_OK(mvcc_snapshot_export(s, export_path));
  mvcc_close(s);
  test_rmdir(dir);
  return h;
}

static void test_verify(void) {
  char *dir = test_tmpdir("verify");
  char path[512], bad[512];
  snprintf(path, sizeof path, "%s/snap", dir);
  struct mvcc_snapshot_info want, got;
  make_snapshot("verify", 500, 1, path, &want);
  memset(&got, 0, sizeof got);
  CHECK_OK(mvcc_snapshot_verify(path, &got));
  CHECK_EQ_INT(got.applied_index, want.applied_index);
  CHECK_EQ_INT(got.applied_term, want.applied_term);
  CHECK_EQ_INT(got.revision, want.revision);
  CHECK_EQ_INT(got.compacted_revision, want.compacted_revision);
  struct stat st;
  CHECK(stat(path, &st) == 0);
  CHECK_EQ_INT(got.file_bytes, st.st_size);
  CHECK_OK(mvcc_snapshot_verify(path, NULL));

  /* missing */
  snprintf(bad, sizeof bad, "%s/missing", dir);
  CHECK_ERR(mvcc_snapshot_verify(bad, NULL), CAIRN_EINVAL);
  /* random bytes */
  snprintf(bad, sizeof bad, "%s/random", dir);
  FILE *f = fopen(bad, "w");
  CHECK(f != NULL);
  for (int i = 0; i < 64 * 1024; i++) {
    fputc((int)(test_rand() & 0xff), f);
  }
  fclose(f);
  CHECK_ERR(mvcc_snapshot_verify(bad, NULL), CAIRN_EFOREIGN_FILE);
  /* truncated: every cut point at a page boundary refuses cleanly */
  snprintf(bad, sizeof bad, "%s/truncated", dir);
  for (off_t cut = 0; cut < st.st_size; cut += 4096 * (1 + (off_t)test_rand_below(4))) {
    copy_file(path, bad);
    CHECK(truncate(bad, cut) == 0);
    int rc = mvcc_snapshot_verify(bad, NULL);
    CHECK(rc == CAIRN_EFOREIGN_FILE || rc == CAIRN_ECORRUPT);
  }
  /* an LMDB file that is not a Cairn store */
  char lmdir[512];
  snprintf(lmdir, sizeof lmdir, "%s/lmdb", dir);
  CHECK(mkdir(lmdir, 0700) == 0);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  CHECK(mdb_env_create(&env) == 0);
  CHECK(mdb_env_set_maxdbs(env, 4) == 0);
  CHECK(mdb_env_open(env, lmdir, 0, 0644) == 0);
  CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
  CHECK(mdb_dbi_open(txn, "other", MDB_CREATE, &dbi) == 0);
  MDB_val k = {3, "abc"}, v = {3, "def"};
  CHECK(mdb_put(txn, dbi, &k, &v, 0) == 0);
  CHECK(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
  char lmfile[600];
  snprintf(lmfile, sizeof lmfile, "%s/data.mdb", lmdir);
  CHECK_ERR(mvcc_snapshot_verify(lmfile, NULL), CAIRN_EFOREIGN_FILE);
  test_rmdir(dir);
}

static void test_replace_in_place(void) {
  char *dir = test_tmpdir("replace");
  char snap[512], store_dir[512];
  snprintf(snap, sizeof snap, "%s/incoming", dir);
  snprintf(store_dir, sizeof store_dir, "%s/store", dir);
  struct mvcc_snapshot_info want;
  uint64_t want_digest = make_snapshot("new", 2000, 2, snap, &want);

  next_index = 0;
  mvcc_store *s;
  CHECK_OK(mvcc_open(store_dir, NULL, &s));
  fill(s, "old", 300, 9);
  uint64_t old_digest = digest(s);
  CHECK(mvcc_applied_index(s) < want.applied_index);

  /* A foreign file is refused; nothing changes and the file stays. */
  char foreign[512];
  snprintf(foreign, sizeof foreign, "%s/foreign", dir);
  FILE *f = fopen(foreign, "w");
  CHECK(f != NULL);
  for (int i = 0; i < 3 * 4096; i++) {
    fputc(i & 0xff, f);
  }
  fclose(f);
  CHECK_ERR(mvcc_replace(s, foreign), CAIRN_EFOREIGN_FILE);
  CHECK(access(foreign, F_OK) == 0);
  CHECK(digest(s) == old_digest);
  char missing[512];
  snprintf(missing, sizeof missing, "%s/missing", dir);
  CHECK_ERR(mvcc_replace(s, missing), CAIRN_EINVAL);
  CHECK(digest(s) == old_digest);

  CHECK_OK(mvcc_snapshot_verify(snap, NULL));
  CHECK_OK(mvcc_replace(s, snap));
  CHECK(access(snap, F_OK) != 0); /* moved in */
  CHECK(digest(s) == want_digest);
  CHECK_EQ_INT(mvcc_applied_index(s), want.applied_index);
  CHECK_EQ_INT(mvcc_current_revision(s), want.revision);
  CHECK_EQ_INT(mvcc_compacted_revision(s), want.compacted_revision);
  /* the old keys are gone, the snapshot's lease is there */
  struct mvcc_range_req rq = {.key = {(const uint8_t *)"k/old/", 6},
                              .range_end = {(const uint8_t *)"k/old0", 6}};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(s, &rq, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  struct mvcc_lease l;
  CHECK_OK(mvcc_lease_get(s, 77, &l));
  CHECK_EQ_INT(l.ttl, 60);

  /* It goes on from the snapshot's index: a replay is refused, the next
   * entry takes the next revision. */
  struct mvcc_op p = {.type = MVCC_OP_PUT, .raft_index = want.applied_index, .raft_term = 6};
  p.u.put.key = (struct mvcc_bytes){(const uint8_t *)"after", 5};
  p.u.put.value = (struct mvcc_bytes){(const uint8_t *)"x", 1};
  apply1(s, &p, CAIRN_EREPLAY);
  p.raft_index = want.applied_index + 1;
  apply1(s, &p, 0);
  CHECK_EQ_INT(mvcc_current_revision(s), want.revision + 1);
  uint64_t after = digest(s);
  /* history below the snapshot's revision reads as in the snapshot */
  struct mvcc_range_req old_rev = {.key = {(const uint8_t *)"k/new/00005", 11},
                                   .revision = want.revision - 1};
  CHECK_OK(mvcc_range(s, &old_rev, &r));
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  mvcc_result_free(&r);
  mvcc_close(s);

  CHECK_OK(mvcc_open(store_dir, NULL, &s));
  CHECK(digest(s) == after);
  mvcc_close(s);
  test_rmdir(dir);
}

/* ---- crash during replace ---------------------------------------------- */

static void child_replacer(const char *store_dir, const char *snaps[2], int report_fd) {
  mvcc_store *s;
  if (mvcc_open(store_dir, NULL, &s) != 0) {
    _exit(3);
  }
  char incoming[600];
  snprintf(incoming, sizeof incoming, "%s/../incoming", store_dir);
  for (unsigned i = 0;; i++) {
    unlink(incoming);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", snaps[i & 1], incoming);
    if (system(cmd) != 0) {
      _exit(4);
    }
    if (write(report_fd, "s", 1) != 1) {
      _exit(6);
    }
    if (mvcc_replace(s, incoming) != 0) {
      _exit(5);
    }
    if (write(report_fd, "r", 1) != 1) {
      _exit(6);
    }
  }
}

static void test_crash_during_replace(void) {
  char *dir = test_tmpdir("replace-crash");
  char store_dir[512], snap_a[512], snap_b[512];
  snprintf(store_dir, sizeof store_dir, "%s/store", dir);
  snprintf(snap_a, sizeof snap_a, "%s/a", dir);
  snprintf(snap_b, sizeof snap_b, "%s/b", dir);
  uint64_t da = make_snapshot("a", 3000, 3, snap_a, NULL);
  uint64_t db = make_snapshot("b", 1000, 4, snap_b, NULL);
  next_index = 0;
  mvcc_store *s;
  CHECK_OK(mvcc_open(store_dir, NULL, &s));
  fill(s, "first", 200, 5);
  uint64_t d0 = digest(s);
  mvcc_close(s);
  const char *snaps[2] = {snap_a, snap_b};
  int rounds = test_small() ? 8 : 30;
  int seen[3] = {0, 0, 0};
  int in_replace = 0; /* kills after "s" and before "r" */
  for (int round = 0; round < rounds; round++) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      child_replacer(store_dir, snaps, fds[1]);
    }
    close(fds[1]);
    /* Let it do a few replaces, then kill it: at a random moment, or (every
     * other round) just after it said it starts a replace, so that kills
     * land inside mvcc_replace. */
    char c = 0;
    int want = 1 + (int)test_rand_below(5);
    for (int i = 0; i < want; i++) {
      CHECK(read(fds[0], &c, 1) == 1);
    }
    if (round % 2 == 0) {
      while (c != 's') {
        CHECK(read(fds[0], &c, 1) == 1);
      }
      usleep((useconds_t)test_rand_below(3000));
    } else {
      usleep((useconds_t)test_rand_below(40000));
    }
    kill(pid, SIGKILL);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    while (read(fds[0], &c, 1) == 1) {
    }
    in_replace += c == 's';
    close(fds[0]);
    /* As if the machine restarted too: the sync marker must vouch for
     * whichever file is in place (a replace syncs both before the rename). */
    char boot[32];
    snprintf(boot, sizeof boot, "boot-%d", round);
    setenv("CAIRN_BOOT_ID", boot, 1);
    CHECK_OK(mvcc_open(store_dir, NULL, &s));
    uint64_t d = digest(s);
    CHECK(d == d0 || d == da || d == db);
    seen[d == d0 ? 0 : d == da ? 1 : 2]++;
    mvcc_close(s);
  }
  printf("    after %d kills (%d inside a replace): %d first, %d a, %d b\n", rounds, in_replace,
         seen[0], seen[1], seen[2]);
  CHECK(in_replace > 0);
  /* The store takes writes after the last kill. */
  CHECK_OK(mvcc_open(store_dir, NULL, &s));
  struct mvcc_op p = {.type = MVCC_OP_PUT, .raft_index = mvcc_applied_index(s) + 1};
  p.u.put.key = (struct mvcc_bytes){(const uint8_t *)"z", 1};
  p.u.put.value = (struct mvcc_bytes){(const uint8_t *)"z", 1};
  int64_t rev = mvcc_current_revision(s);
  apply1(s, &p, 0);
  CHECK_EQ_INT(mvcc_current_revision(s), rev + 1);
  mvcc_close(s);
  test_rmdir(dir);
}

int main(void) {
  test_seed("test_replace");
  TEST_RUN(test_verify);
  TEST_RUN(test_replace_in_place);
  TEST_RUN(test_crash_during_replace);
  printf("test_replace: ok\n");
  return 0;
}
