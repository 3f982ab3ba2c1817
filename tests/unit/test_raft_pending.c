/* tests/unit/test_raft_pending.c: the request id table against a reference
 * model: random inserts, lookups and removals at every fill level up to the
 * capacity, ids clustered so that probe runs wrap and shift. */
#include "raft/pending.h"
#include "test.h"

#define IDS_MAX (PENDING_CAPACITY + 64)

static uint64_t ids[IDS_MAX]; /* the model: ids present */
static size_t n_ids;
static char values[IDS_MAX * 4]; /* distinct addresses to store */

static uint64_t random_id(int mode) {
  switch (mode) {
    case 0:
      return test_rand();
    case 1:
      return test_rand_below(3 * PENDING_CAPACITY); /* small, dense ids */
    default:
      /* etcd-style: a fixed prefix and a counter. */
      return (0xabcdull << 48) | test_rand_below(2 * PENDING_CAPACITY);
  }
}

static void *value_of(uint64_t id) {
  return &values[id % sizeof values];
}

static void check_all(const struct pending_table *t) {
  CHECK_EQ_INT(t->count, n_ids);
  for (size_t i = 0; i < n_ids; i++) {
    CHECK(pending_find(t, ids[i]) == value_of(ids[i]));
  }
}

static void run(int mode, unsigned steps) {
  static struct pending_table t;
  pending_init(&t);
  n_ids = 0;
  for (unsigned s = 0; s < steps; s++) {
    /* Drift between empty and full. */
    unsigned phase = (s / 5000) % 2;
    bool insert = test_rand_below(100) < (phase ? 30u : 70u);
    if (insert) {
      uint64_t id = random_id(mode);
      bool present = false;
      for (size_t i = 0; i < n_ids; i++) {
        present |= ids[i] == id;
      }
      int rc = pending_insert(&t, id, value_of(id));
      if (n_ids == PENDING_CAPACITY) {
        CHECK_ERR(rc, CAIRN_ETOO_MANY_REQUESTS);
      } else if (present) {
        CHECK_ERR(rc, CAIRN_EINVAL);
      } else {
        CHECK_OK(rc);
        ids[n_ids++] = id;
      }
    } else if (n_ids > 0 && test_rand_below(4) != 0) {
      size_t i = (size_t)test_rand_below(n_ids);
      CHECK(pending_remove(&t, ids[i]) == value_of(ids[i]));
      CHECK(pending_find(&t, ids[i]) == NULL);
      ids[i] = ids[--n_ids];
    } else {
      /* An id that is (probably) absent. */
      uint64_t id = random_id(mode);
      bool present = false;
      for (size_t i = 0; i < n_ids; i++) {
        present |= ids[i] == id;
      }
      if (!present) {
        CHECK(pending_find(&t, id) == NULL);
        CHECK(pending_remove(&t, id) == NULL);
      }
    }
    if (s % 997 == 0) {
      check_all(&t);
    }
  }
  check_all(&t);
  /* Fill to the bound exactly. */
  while (n_ids < PENDING_CAPACITY) {
    uint64_t id = test_rand();
    if (pending_insert(&t, id, value_of(id)) == 0) {
      ids[n_ids++] = id;
    }
  }
  /* Full: refused, whether the id is there or not. */
  CHECK_ERR(pending_insert(&t, 1, value_of(1)), CAIRN_ETOO_MANY_REQUESTS);
  CHECK_ERR(pending_insert(&t, ids[0], value_of(ids[0])), CAIRN_ETOO_MANY_REQUESTS);
  check_all(&t);
  while (n_ids > 0) {
    size_t i = (size_t)test_rand_below(n_ids);
    CHECK(pending_remove(&t, ids[i]) == value_of(ids[i]));
    ids[i] = ids[--n_ids];
  }
  CHECK_EQ_INT(t.count, 0);
  for (size_t i = 0; i < PENDING_SLOTS; i++) {
    CHECK(t.slots[i].value == NULL);
  }
}

static void test_model(void) {
  unsigned steps = test_small() ? 20000 : 100000;
  for (int mode = 0; mode < 3; mode++) {
    run(mode, steps);
  }
}

int main(void) {
  test_seed("test_raft_pending");
  TEST_RUN(test_model);
  printf("ok\n");
  return 0;
}
