/* raft/membertable.c: the member table's encoding and edits. */
#include "membertable.h"

#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "common/cairn_error.h"

#define MAGIC "CMT1"

/* ---- encoding --------------------------------------------------------------- */

struct enc {
  uint8_t *p;
  size_t len, cap;
  bool oom;
};

static void put(struct enc *e, const void *data, size_t n) {
  if (e->oom) {
    return;
  }
  if (e->len + n > e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 256;
    while (cap < e->len + n) {
      cap *= 2;
    }
    uint8_t *np = realloc(e->p, cap);
    if (np == NULL) {
      e->oom = true;
      return;
    }
    e->p = np;
    e->cap = cap;
  }
  memcpy(e->p + e->len, data, n);
  e->len += n;
}

static void put_u64(struct enc *e, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) {
    b[i] = (uint8_t)(v >> (8 * i));
  }
  put(e, b, 8);
}

static void put_u32(struct enc *e, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++) {
    b[i] = (uint8_t)(v >> (8 * i));
  }
  put(e, b, 4);
}

static void put_u8(struct enc *e, uint8_t v) {
  put(e, &v, 1);
}

static void put_str(struct enc *e, const char *s) {
  size_t n = strlen(s);
  CAIRN_ASSERT(n <= MEMBERTABLE_STRING_MAX);
  uint8_t b[2] = {(uint8_t)n, (uint8_t)(n >> 8)};
  put(e, b, 2);
  put(e, s, n + 1);
}

static bool str_ok(const char *s) {
  return s != NULL && strlen(s) <= MEMBERTABLE_STRING_MAX;
}

int membertable_encode(const struct membertable *t, uint8_t **out, size_t *len) {
  CAIRN_ASSERT(t->n <= MEMBERTABLE_MEMBERS_MAX && t->n_removed <= MEMBERTABLE_REMOVED_MAX);
  for (size_t i = 0; i < t->n; i++) {
    const struct membertable_member *m = &t->members[i];
    CAIRN_ASSERT(i == 0 || t->members[i - 1].id < m->id);
    CAIRN_ASSERT(m->n_peer_urls <= MEMBERTABLE_URLS_MAX &&
                 m->n_client_urls <= MEMBERTABLE_URLS_MAX);
    if (!str_ok(m->name)) {
      return CAIRN_EINVAL;
    }
    for (size_t j = 0; j < m->n_peer_urls; j++) {
      if (!str_ok(m->peer_urls[j])) {
        return CAIRN_EINVAL;
      }
    }
    for (size_t j = 0; j < m->n_client_urls; j++) {
      if (!str_ok(m->client_urls[j])) {
        return CAIRN_EINVAL;
      }
    }
  }
  for (size_t i = 1; i < t->n_removed; i++) {
    CAIRN_ASSERT(t->removed[i - 1] < t->removed[i]);
  }
  struct enc e = {0};
  put(&e, MAGIC, 4);
  put_u64(&e, t->cluster_id);
  put_u32(&e, (uint32_t)t->n);
  put_u32(&e, (uint32_t)t->n_removed);
  for (size_t i = 0; i < t->n; i++) {
    const struct membertable_member *m = &t->members[i];
    put_u64(&e, m->id);
    put_u8(&e, m->is_learner ? 1 : 0);
    put_str(&e, m->name);
    put_u8(&e, (uint8_t)m->n_peer_urls);
    for (size_t j = 0; j < m->n_peer_urls; j++) {
      put_str(&e, m->peer_urls[j]);
    }
    put_u8(&e, (uint8_t)m->n_client_urls);
    for (size_t j = 0; j < m->n_client_urls; j++) {
      put_str(&e, m->client_urls[j]);
    }
  }
  for (size_t i = 0; i < t->n_removed; i++) {
    put_u64(&e, t->removed[i]);
  }
  if (e.oom) {
    free(e.p);
    return CAIRN_ENOMEM;
  }
  *out = e.p;
  *len = e.len;
  return 0;
}

/* ---- decoding --------------------------------------------------------------- */

struct dec {
  uint8_t *p;
  size_t len, at;
  bool bad;
};

static const uint8_t *take(struct dec *d, size_t n) {
  if (d->bad || d->len - d->at < n) {
    d->bad = true;
    return NULL;
  }
  const uint8_t *p = d->p + d->at;
  d->at += n;
  return p;
}

static uint64_t get_u64(struct dec *d) {
  const uint8_t *p = take(d, 8);
  uint64_t v = 0;
  for (int i = 0; p != NULL && i < 8; i++) {
    v |= (uint64_t)p[i] << (8 * i);
  }
  return v;
}

static uint32_t get_u32(struct dec *d) {
  const uint8_t *p = take(d, 4);
  uint32_t v = 0;
  for (int i = 0; p != NULL && i < 4; i++) {
    v |= (uint32_t)p[i] << (8 * i);
  }
  return v;
}

static uint8_t get_u8(struct dec *d) {
  const uint8_t *p = take(d, 1);
  return p != NULL ? *p : 0;
}

static const char *get_str(struct dec *d) {
  const uint8_t *l = take(d, 2);
  if (l == NULL) {
    return "";
  }
  size_t n = (size_t)l[0] | (size_t)l[1] << 8;
  const uint8_t *s = take(d, n + 1);
  if (s == NULL || n > MEMBERTABLE_STRING_MAX || s[n] != 0 || memchr(s, 0, n) != NULL) {
    d->bad = true;
    return "";
  }
  return (const char *)s;
}

int membertable_decode(const void *buf, size_t len, struct membertable *t) {
  memset(t, 0, sizeof *t);
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL) {
    return CAIRN_ENOMEM;
  }
  memcpy(copy, buf, len);
  struct dec d = {.p = copy, .len = len};
  const uint8_t *magic = take(&d, 4);
  if (magic == NULL || memcmp(magic, MAGIC, 4) != 0) {
    free(copy);
    return CAIRN_ECORRUPT;
  }
  t->cluster_id = get_u64(&d);
  uint32_t n = get_u32(&d), n_removed = get_u32(&d);
  if (n > MEMBERTABLE_MEMBERS_MAX || n_removed > MEMBERTABLE_REMOVED_MAX) {
    d.bad = true;
  }
  for (uint32_t i = 0; i < n && !d.bad; i++) {
    struct membertable_member *m = &t->members[i];
    m->id = get_u64(&d);
    uint8_t flags = get_u8(&d);
    m->is_learner = flags & 1;
    m->name = get_str(&d);
    m->n_peer_urls = get_u8(&d);
    if (flags > 1 || m->id == 0 || (i > 0 && t->members[i - 1].id >= m->id) ||
        m->n_peer_urls > MEMBERTABLE_URLS_MAX) {
      d.bad = true;
      break;
    }
    for (size_t j = 0; j < m->n_peer_urls; j++) {
      m->peer_urls[j] = get_str(&d);
    }
    m->n_client_urls = get_u8(&d);
    if (m->n_client_urls > MEMBERTABLE_URLS_MAX) {
      d.bad = true;
      break;
    }
    for (size_t j = 0; j < m->n_client_urls; j++) {
      m->client_urls[j] = get_str(&d);
    }
    t->n = i + 1;
  }
  for (uint32_t i = 0; i < n_removed && !d.bad; i++) {
    t->removed[i] = get_u64(&d);
    if (i > 0 && t->removed[i - 1] >= t->removed[i]) {
      d.bad = true;
    }
    t->n_removed = i + 1;
  }
  if (d.bad || d.at != d.len) {
    free(copy);
    memset(t, 0, sizeof *t);
    return CAIRN_ECORRUPT;
  }
  t->buf = copy;
  return 0;
}

void membertable_free(struct membertable *t) {
  free(t->buf);
  memset(t, 0, sizeof *t);
}

/* ---- edits ------------------------------------------------------------------ */

const struct membertable_member *membertable_find(const struct membertable *t, uint64_t id) {
  for (size_t i = 0; i < t->n; i++) {
    if (t->members[i].id == id) {
      return &t->members[i];
    }
  }
  return NULL;
}

bool membertable_is_removed(const struct membertable *t, uint64_t id) {
  for (size_t i = 0; i < t->n_removed; i++) {
    if (t->removed[i] == id) {
      return true;
    }
  }
  return false;
}

int membertable_insert(struct membertable *t, const struct membertable_member *m) {
  if (t->n == MEMBERTABLE_MEMBERS_MAX || membertable_find(t, m->id) != NULL) {
    return CAIRN_EINVAL;
  }
  size_t at = 0;
  while (at < t->n && t->members[at].id < m->id) {
    at++;
  }
  memmove(&t->members[at + 1], &t->members[at], (t->n - at) * sizeof t->members[0]);
  t->members[at] = *m;
  t->n++;
  return 0;
}

void membertable_remove(struct membertable *t, uint64_t id) {
  for (size_t i = 0; i < t->n; i++) {
    if (t->members[i].id == id) {
      memmove(&t->members[i], &t->members[i + 1], (t->n - i - 1) * sizeof t->members[0]);
      t->n--;
      break;
    }
  }
  if (membertable_is_removed(t, id)) {
    return;
  }
  if (t->n_removed == MEMBERTABLE_REMOVED_MAX) {
    memmove(&t->removed[0], &t->removed[1], (t->n_removed - 1) * sizeof t->removed[0]);
    t->n_removed--;
  }
  size_t at = 0;
  while (at < t->n_removed && t->removed[at] < id) {
    at++;
  }
  memmove(&t->removed[at + 1], &t->removed[at], (t->n_removed - at) * sizeof t->removed[0]);
  t->removed[at] = id;
  t->n_removed++;
}

void membertable_unremove(struct membertable *t, uint64_t id) {
  for (size_t i = 0; i < t->n_removed; i++) {
    if (t->removed[i] == id) {
      memmove(&t->removed[i], &t->removed[i + 1], (t->n_removed - i - 1) * sizeof t->removed[0]);
      t->n_removed--;
      return;
    }
  }
}

bool membertable_peer_url_taken(const struct membertable *t, const char *const *urls, size_t n,
                                uint64_t except_id) {
  for (size_t i = 0; i < t->n; i++) {
    const struct membertable_member *m = &t->members[i];
    if (m->id == except_id) {
      continue;
    }
    for (size_t j = 0; j < m->n_peer_urls; j++) {
      for (size_t k = 0; k < n; k++) {
        if (strcmp(m->peer_urls[j], urls[k]) == 0) {
          return true;
        }
      }
    }
  }
  return false;
}
