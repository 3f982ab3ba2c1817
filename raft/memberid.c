/* raft/memberid.c: etcd-compatible member and cluster ids (SHA-1 through
 * OpenSSL's low-level SHA1_* functions).
 *
 * Not EVP: in OpenSSL 3 the first EVP digest loads and initialises the
 * default provider, which touches about 1.8 MiB of libcrypto that then stays
 * resident for the life of the daemon, for a few hashes at start. SHA1_* are
 * deprecated since 3.0 but still built and supported, and they run without
 * a provider. (TLS and the snapshot checksums use EVP; they load the
 * provider when, and only if, they are used.) */
#include "memberid.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Declares SHA1_Init and friends without the deprecation warning. */
#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/sha.h>

#include "common/cairn_assert.h"

/* Entries of --initial-cluster (a member may have several). */
#define MEMBERID_URLS_MAX 256u
#define MEMBERID_URL_MAX MEMBERID_ADDRESS_MAX /* a host:port is shorter than its URL */

struct url {
  char text[MEMBERID_URL_MAX]; /* trimmed, as hashed */
  size_t member;               /* index into the members being built */
};

/* The first 8 bytes of SHA-1(data), big-endian. */
static int sha1_u64(const void *data, size_t len, uint64_t *out) {
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA_CTX c;
  if (SHA1_Init(&c) != 1 || SHA1_Update(&c, data, len) != 1 || SHA1_Final(md, &c) != 1) {
    fprintf(stderr, "cairn: raft: SHA-1 failed\n");
    return CAIRN_EIO;
  }
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) {
    v = v << 8 | md[i];
  }
  *out = v;
  return 0;
}

/* Trims ASCII white space into dst (as etcd's strings.TrimSpace). */
static int trim_copy(const char *src, char *dst, size_t cap) {
  while (*src != 0 && isspace((unsigned char)*src)) {
    src++;
  }
  size_t len = strlen(src);
  while (len > 0 && isspace((unsigned char)src[len - 1])) {
    len--;
  }
  if (len >= cap) {
    return CAIRN_EINVAL;
  }
  memcpy(dst, src, len);
  dst[len] = 0;
  return 0;
}

/* http(s)://host:port with no path, query or fragment (etcd's NewURLs
 * rules, minus the unix schemes raft's TCP transport cannot use). On
 * success *hostport points into url. */
static bool url_check(const char *url, const char **hostport) {
  const char *rest;
  if (strncmp(url, "http://", 7) == 0) {
    rest = url + 7;
  } else if (strncmp(url, "https://", 8) == 0) {
    rest = url + 8;
  } else {
    return false;
  }
  if (*rest == 0 || strpbrk(rest, "/?#") != NULL) {
    return false;
  }
  const char *colon = strrchr(rest, ':');
  if (colon == NULL || colon == rest || colon[1] == 0) {
    return false;
  }
  for (const char *p = colon + 1; *p != 0; p++) {
    if (!isdigit((unsigned char)*p)) {
      return false;
    }
  }
  *hostport = rest;
  return true;
}

static int cmp_url(const void *a, const void *b) {
  const struct url *x = a, *y = b;
  if (x->member != y->member) {
    return x->member < y->member ? -1 : 1;
  }
  return strcmp(x->text, y->text);
}

static int cmp_member(const void *a, const void *b) {
  const struct memberid_member *x = a, *y = b;
  return x->id < y->id ? -1 : x->id > y->id ? 1 : 0;
}

int memberid_cluster(const char *self_name, const struct raftnode_member *initial, size_t n,
                     const char *token, struct memberid_cluster *out) {
  CAIRN_ASSERT(out != NULL);
  memset(out, 0, sizeof *out);
  if (token == NULL || *token == 0) {
    token = MEMBERID_DEFAULT_TOKEN;
  }
  if (n == 0 || initial == NULL || self_name == NULL) {
    fprintf(stderr, "cairn: raft: the initial cluster is empty\n");
    return CAIRN_EINVAL;
  }
  if (n > MEMBERID_URLS_MAX) {
    fprintf(stderr, "cairn: raft: more than %u initial cluster entries\n", MEMBERID_URLS_MAX);
    return CAIRN_EINVAL;
  }
  struct url *urls = calloc(n, sizeof *urls);
  if (urls == NULL) {
    return CAIRN_ENOMEM;
  }
  int rc = CAIRN_EINVAL;
  /* Group the entries by name. */
  for (size_t i = 0; i < n; i++) {
    const char *name = initial[i].name;
    const char *hostport;
    if (name == NULL || *name == 0) {
      fprintf(stderr, "cairn: raft: initial cluster entry %zu has no name\n", i);
      goto out;
    }
    if (initial[i].peer_url == NULL ||
        trim_copy(initial[i].peer_url, urls[i].text, sizeof urls[i].text) != 0 ||
        !url_check(urls[i].text, &hostport)) {
      fprintf(stderr, "cairn: raft: member %s: bad peer URL \"%s\" (want http://host:port)\n", name,
              initial[i].peer_url ? initial[i].peer_url : "");
      goto out;
    }
    size_t m = 0;
    while (m < out->n && strcmp(out->members[m].name, name) != 0) {
      m++;
    }
    if (m == out->n) {
      if (out->n == MEMBERID_MEMBERS_MAX) {
        fprintf(stderr, "cairn: raft: more than %u members\n", MEMBERID_MEMBERS_MAX);
        goto out;
      }
      out->members[out->n++].name = name;
    }
    urls[i].member = m;
  }
  qsort(urls, n, sizeof *urls, cmp_url);
  /* Hash each member's sorted URLs and the token. */
  size_t token_len = strlen(token);
  for (size_t m = 0, i = 0; m < out->n; m++) {
    size_t first = i, len = token_len;
    for (; i < n && urls[i].member == m; i++) {
      len += strlen(urls[i].text);
    }
    char *buf = malloc(len + 1);
    if (buf == NULL) {
      rc = CAIRN_ENOMEM;
      goto out;
    }
    size_t at = 0;
    for (size_t j = first; j < i; j++) {
      size_t l = strlen(urls[j].text);
      memcpy(buf + at, urls[j].text, l);
      at += l;
    }
    memcpy(buf + at, token, token_len);
    int hrc = sha1_u64(buf, len, &out->members[m].id);
    free(buf);
    if (hrc != 0) {
      rc = hrc;
      goto out;
    }
    if (out->members[m].id == 0) {
      fprintf(stderr, "cairn: raft: member %s: id 0 cannot be used\n", out->members[m].name);
      goto out;
    }
    const char *hostport = NULL;
    CAIRN_ASSERT(url_check(urls[first].text, &hostport));
    snprintf(out->members[m].address, sizeof out->members[m].address, "%s", hostport);
  }
  qsort(out->members, out->n, sizeof out->members[0], cmp_member);
  uint8_t ids[8 * MEMBERID_MEMBERS_MAX];
  bool found = false;
  for (size_t m = 0; m < out->n; m++) {
    if (m > 0 && out->members[m].id == out->members[m - 1].id) {
      fprintf(stderr, "cairn: raft: members %s and %s have the same id\n", out->members[m - 1].name,
              out->members[m].name);
      goto out;
    }
    for (int b = 0; b < 8; b++) {
      ids[8 * m + (size_t)b] = (uint8_t)(out->members[m].id >> (56 - 8 * b));
    }
    if (strcmp(out->members[m].name, self_name) == 0) {
      out->self_id = out->members[m].id;
      found = true;
    }
  }
  if (!found) {
    fprintf(stderr, "cairn: raft: member %s is not in the initial cluster\n", self_name);
    goto out;
  }
  rc = sha1_u64(ids, 8 * out->n, &out->cluster_id);
out:
  free(urls);
  if (rc != 0) {
    memset(out, 0, sizeof *out);
  }
  return rc;
}

/* ---- members added at run time -------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

#define ADDED_PREFIX "cairn-added:"
#define ADDED_URLS_MAX 16u

int memberid_added(const char *const *peer_urls, size_t n, uint64_t *out) {
  if (n == 0 || n > ADDED_URLS_MAX) {
    return CAIRN_EINVAL;
  }
  char text[ADDED_URLS_MAX][MEMBERID_URL_MAX];
  const char *sorted[ADDED_URLS_MAX];
  size_t len = strlen(ADDED_PREFIX);
  for (size_t i = 0; i < n; i++) {
    const char *hostport;
    if (peer_urls[i] == NULL || trim_copy(peer_urls[i], text[i], sizeof text[i]) != 0 ||
        !url_check(text[i], &hostport)) {
      return CAIRN_EINVAL;
    }
    sorted[i] = text[i];
    len += strlen(text[i]);
  }
  qsort(sorted, n, sizeof sorted[0], cmp_str);
  char *buf = malloc(len + 1);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  size_t at = strlen(ADDED_PREFIX);
  memcpy(buf, ADDED_PREFIX, at);
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(sorted[i]);
    memcpy(buf + at, sorted[i], l);
    at += l;
  }
  int rc = sha1_u64(buf, at, out);
  free(buf);
  if (rc == 0 && *out == 0) {
    rc = CAIRN_EINVAL;
  }
  return rc;
}

int memberid_url_address(const char *url, char *buf, size_t cap) {
  char text[MEMBERID_URL_MAX];
  const char *hostport;
  if (url == NULL || trim_copy(url, text, sizeof text) != 0 || !url_check(text, &hostport) ||
      strlen(hostport) >= cap) {
    return CAIRN_EINVAL;
  }
  const char *colon = strrchr(hostport, ':');
  char host[MEMBERID_URL_MAX];
  size_t hl = (size_t)(colon - hostport);
  memcpy(host, hostport, hl);
  host[hl] = 0;
  struct in_addr a;
  if (inet_pton(AF_INET, host, &a) != 1) {
    return CAIRN_EINVAL;
  }
  snprintf(buf, cap, "%s", hostport);
  return 0;
}
