/* raft/pending.c: the request id table. */
#include "pending.h"

#include <stdbool.h>
#include <string.h>

#include "common/cairn_assert.h"

CAIRN_STATIC_ASSERT((PENDING_SLOTS & (PENDING_SLOTS - 1)) == 0, "a power of two");
CAIRN_STATIC_ASSERT(PENDING_SLOTS >= 2 * PENDING_CAPACITY, "at most half full");

#define MASK ((size_t)PENDING_SLOTS - 1)

/* Fibonacci hashing: request ids are a counter under a fixed prefix, whose
 * low bits alone would hash well too; this also spreads arbitrary ids. */
static size_t home(uint64_t id) {
  return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 40) & MASK;
}

void pending_init(struct pending_table *t) {
  memset(t, 0, sizeof *t);
}

static size_t slot_of(const struct pending_table *t, uint64_t id) {
  size_t i = home(id);
  while (t->slots[i].value != NULL && t->slots[i].id != id) {
    i = (i + 1) & MASK;
  }
  return i; /* id's slot, or the free slot that ends its probe run */
}

int pending_insert(struct pending_table *t, uint64_t id, void *value) {
  CAIRN_ASSERT(value != NULL);
  if (t->count >= PENDING_CAPACITY) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  size_t i = slot_of(t, id);
  if (t->slots[i].value != NULL) {
    return CAIRN_EINVAL;
  }
  t->slots[i] = (struct pending_slot){id, value};
  t->count++;
  return 0;
}

void *pending_find(const struct pending_table *t, uint64_t id) {
  return t->slots[slot_of(t, id)].value;
}

void *pending_remove(struct pending_table *t, uint64_t id) {
  size_t i = slot_of(t, id);
  void *value = t->slots[i].value;
  if (value == NULL) {
    return NULL;
  }
  t->slots[i].value = NULL;
  t->count--;
  /* Later entries of the run move back into the hole unless their home lies
   * cyclically in (hole, j]: then the hole is before their home and a lookup
   * would not pass it. */
  for (size_t j = (i + 1) & MASK; t->slots[j].value != NULL; j = (j + 1) & MASK) {
    size_t h = home(t->slots[j].id);
    bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
    if (!stays) {
      t->slots[i] = t->slots[j];
      t->slots[j].value = NULL;
      i = j;
    }
  }
  return value;
}
