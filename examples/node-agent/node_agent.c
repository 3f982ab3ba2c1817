/* examples/node-agent/node_agent.c: a stateless node agent on libcairn.
 *
 *   cairn-node-agent --name NODE --endpoints a,b,c --dir DIR
 *                    [--exec "COMMAND"] [--cacert F --cert F --key F]
 *
 * It keeps no configuration of its own: a cairn informer mirrors the
 * prefix /nodes/NODE/ and the agent makes DIR match the mirror, one file
 * per key (README.md has the details and an example). The agent owns DIR:
 * after each list (at start and after a re-list) every file of DIR that is
 * not a key of the mirror is removed. After each synced revision that
 * changed DIR (and once after the first list, since a previous run may have
 * died before its command ran) it runs COMMAND with /bin/sh -c and
 * CAIRN_REVISION=<revision> in its environment; while a run is going, later
 * revisions are coalesced into one more run after it.
 *
 * Disk writes happen on the loop thread, synchronously (write, fsync,
 * rename, fsync of the directory). That breaks Cairn's "the loop never
 * blocks" on purpose: the loop serves this one informer and nothing else,
 * the files must reach the disk in the informer's order before the
 * revision is reported and the command runs, and a queue of uv_fs requests
 * would have to serialize them all the same.
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 when the informer ends (its
 * bounds were reached) or the directory cannot be opened, 2 on bad flags. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/cairn.h"

extern char **environ;

#define AGENT_PROG "cairn-node-agent"
#define AGENT_REL_MAX 1024u        /* bytes of a key after the prefix */
#define AGENT_DEPTH_MAX 32u        /* components of a key after the prefix */
#define AGENT_SCAN_DEPTH_MAX 64u   /* directory levels walked when cleaning DIR */
#define AGENT_TMP_PREFIX ".cairn-tmp." /* temp files; keys may not start so */
#define AGENT_ENDPOINT_LEN_MAX 512u

struct agent {
  uv_loop_t *loop;
  cairn_client *client;
  cairn_informer *inf; /* NULL once stopped or over */
  const char *name;
  char *prefix; /* "/nodes/NODE/" */
  size_t prefix_len;
  const char *dir;
  int dirfd;
  const char *exec_cmd; /* NULL: no command */
  uv_signal_t sig_term, sig_int;
  uv_process_t proc;
  bool exec_running;  /* proc is a running child, or closing */
  bool exec_again;    /* run once more when it is over */
  int64_t exec_rev;   /* the revision the next run gets */
  bool batch_changed; /* DIR changed since the last synced */
  bool synced_once;
  bool stopping;
  unsigned tmp_seq;
  int exit_code;
};

/* ---- logs ----------------------------------------------------------------- */

static void log_line(struct agent *a, FILE *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void log_line(struct agent *a, FILE *f, const char *fmt, ...) {
  va_list ap;
  fprintf(f, "%s[%s]: ", AGENT_PROG, a->name);
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fflush(f);
}

/* A key for the logs: printable ASCII as is, other bytes as \xNN. */
static void key_for_log(const uint8_t *p, size_t len, char *out, size_t out_max) {
  size_t o = 0;
  for (size_t k = 0; k < len && o + 5 < out_max; k++) {
    if (p[k] >= ' ' && p[k] <= '~' && p[k] != '\\')
      out[o++] = (char)p[k];
    else
      o += (size_t)snprintf(out + o, out_max - o, "\\x%02x", (unsigned)p[k]);
  }
  out[o] = '\0';
}

/* ---- key names -> relative paths ---------------------------------------- */

/* The path of a key below DIR, copied to rel (NUL-terminated), or NULL and
 * *why when the name is unsafe: empty, absolute, with a NUL, an empty, "."
 * or ".." component, a component starting with the agent's temp prefix,
 * too long or too deep. */
static bool key_to_rel(const struct agent *a, const Mvccpb__KeyValue *kv, char *rel,
                       const char **why) {
  const uint8_t *k = kv->key.data;
  size_t len = kv->key.len;
  if (len < a->prefix_len || memcmp(k, a->prefix, a->prefix_len) != 0) {
    *why = "not under the prefix";
    return false;
  }
  k += a->prefix_len;
  len -= a->prefix_len;
  if (len == 0) {
    *why = "empty name";
    return false;
  }
  if (len >= AGENT_REL_MAX) {
    *why = "name too long";
    return false;
  }
  if (memchr(k, '\0', len) != NULL) {
    *why = "NUL in the name";
    return false;
  }
  if (k[0] == '/') {
    *why = "absolute path";
    return false;
  }
  memcpy(rel, k, len);
  rel[len] = '\0';
  unsigned depth = 0;
  for (const char *c = rel; *c != '\0';) {
    const char *slash = strchr(c, '/');
    size_t clen = slash ? (size_t)(slash - c) : strlen(c);
    if (clen == 0) {
      *why = "empty path component";
      return false;
    }
    if ((clen == 1 && c[0] == '.') || (clen == 2 && c[0] == '.' && c[1] == '.')) {
      *why = "\".\" or \"..\" component";
      return false;
    }
    if (clen > NAME_MAX) {
      *why = "path component too long";
      return false;
    }
    if (strncmp(c, AGENT_TMP_PREFIX, sizeof AGENT_TMP_PREFIX - 1) == 0) {
      *why = "reserved name (" AGENT_TMP_PREFIX "*)";
      return false;
    }
    if (++depth > AGENT_DEPTH_MAX) {
      *why = "too many path components";
      return false;
    }
    c += clen;
    if (*c == '/')
      c++;
  }
  return true;
}

/* ---- files ------------------------------------------------------------------ */

/* Opens the directory that holds rel's file (rel is modified in place: its
 * last '/' becomes NUL) and returns its fd, or -errno. *base is the file's
 * name. With create, missing directories are made (and their parents
 * fsynced). Directories are opened without following symlinks. */
static int open_parent(struct agent *a, char *rel, bool create, const char **base) {
  int fd = dup(a->dirfd);
  if (fd < 0)
    return -errno;
  char *c = rel;
  for (;;) {
    char *slash = strchr(c, '/');
    if (slash == NULL)
      break;
    *slash = '\0';
    bool made = false;
    if (create) {
      if (mkdirat(fd, c, 0755) == 0)
        made = true;
      else if (errno != EEXIST) {
        int e = -errno;
        close(fd);
        *slash = '/';
        return e;
      }
    }
    int sub = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = -errno;
    if (made)
      (void)fsync(fd);
    close(fd);
    *slash = '/';
    if (sub < 0)
      return e;
    fd = sub;
    c = slash + 1;
  }
  *base = c;
  return fd;
}

/* 1 if the file base in pfd holds exactly data, else 0. */
static int same_content(int pfd, const char *base, const uint8_t *data, size_t len) {
  int fd = openat(pfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return 0;
  struct stat st;
  int same = 0;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == (uint64_t)len) {
    uint8_t buf[4096];
    size_t off = 0;
    same = 1;
    while (off < len) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0 || memcmp(buf, data + off, (size_t)n) != 0) {
        same = 0;
        break;
      }
      off += (size_t)n;
    }
  }
  close(fd);
  return same;
}

/* Makes DIR/rel hold data, atomically: a temp file in the same directory,
 * written and fsynced, renamed over the old one, the directory fsynced.
 * Returns 1 if the file changed, 0 if it already held data, -errno. */
static int write_file(struct agent *a, const char *rel_in, const uint8_t *data, size_t len) {
  char rel[AGENT_REL_MAX];
  snprintf(rel, sizeof rel, "%s", rel_in);
  const char *base = NULL;
  int pfd = open_parent(a, rel, true, &base);
  if (pfd < 0)
    return pfd;
  if (same_content(pfd, base, data, len)) {
    close(pfd);
    return 0;
  }
  char tmp[64];
  snprintf(tmp, sizeof tmp, "%s%ld.%u", AGENT_TMP_PREFIX, (long)getpid(), a->tmp_seq++);
  int rc = 0;
  int fd = openat(pfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = -errno;
    goto err_close_parent;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, data + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      goto err_unlink_tmp;
    }
    off += (size_t)n;
  }
  if (fsync(fd) != 0) {
    rc = -errno;
    goto err_unlink_tmp;
  }
  if (close(fd) != 0) {
    fd = -1;
    rc = -errno;
    goto err_unlink_tmp;
  }
  fd = -1;
  if (renameat(pfd, tmp, pfd, base) != 0) {
    rc = -errno;
    goto err_unlink_tmp;
  }
  if (fsync(pfd) != 0)
    rc = -errno;
  close(pfd);
  return rc == 0 ? 1 : rc;

err_unlink_tmp:
  if (fd >= 0)
    close(fd);
  (void)unlinkat(pfd, tmp, 0);
err_close_parent:
  close(pfd);
  return rc;
}

/* Removes the now empty directories of rel's path, deepest first (up to,
 * not including, DIR). */
static void remove_empty_dirs(struct agent *a, const char *rel_in) {
  char rel[AGENT_REL_MAX];
  snprintf(rel, sizeof rel, "%s", rel_in);
  for (;;) {
    char *slash = strrchr(rel, '/');
    if (slash == NULL)
      return;
    *slash = '\0';
    if (unlinkat(a->dirfd, rel, AT_REMOVEDIR) != 0)
      return; /* not empty (ENOTEMPTY), or gone: stop there */
  }
}

/* Removes DIR/rel. 1 if a file was removed, 0 if there was none, -errno. */
static int remove_file(struct agent *a, const char *rel_in) {
  char rel[AGENT_REL_MAX];
  snprintf(rel, sizeof rel, "%s", rel_in);
  const char *base = NULL;
  int pfd = open_parent(a, rel, false, &base);
  if (pfd == -ENOENT || pfd == -ENOTDIR)
    return 0;
  if (pfd < 0)
    return pfd;
  int rc = 1;
  if (unlinkat(pfd, base, 0) != 0)
    rc = errno == ENOENT ? 0 : -errno;
  if (rc == 1 && fsync(pfd) != 0)
    rc = -errno;
  close(pfd);
  if (rc == 1)
    remove_empty_dirs(a, rel_in);
  return rc;
}

/* ---- the command --------------------------------------------------------- */

static void exec_start(struct agent *a);

static void on_proc_closed(uv_handle_t *h) {
  struct agent *a = h->data;
  a->exec_running = false;
  if (a->exec_again && !a->stopping) {
    a->exec_again = false;
    exec_start(a);
  }
}

static void on_proc_exit(uv_process_t *p, int64_t status, int term_signal) {
  struct agent *a = p->data;
  if (term_signal != 0)
    log_line(a, stderr, "exec (pid %d) killed by signal %d", p->pid, term_signal);
  else if (status != 0)
    log_line(a, stderr, "exec (pid %d) exited with status %" PRId64, p->pid, status);
  else
    log_line(a, stdout, "exec (pid %d) done", p->pid);
  uv_close((uv_handle_t *)p, on_proc_closed);
}

/* Starts COMMAND for a->exec_rev. A failure to start is logged; the next
 * change tries again. */
static void exec_start(struct agent *a) {
  size_t n_env = 0;
  while (environ[n_env] != NULL)
    n_env++;
  char **env = calloc(n_env + 2, sizeof *env);
  if (env == NULL) {
    log_line(a, stderr, "exec: out of memory");
    return;
  }
  size_t o = 0;
  for (size_t k = 0; k < n_env; k++)
    if (strncmp(environ[k], "CAIRN_REVISION=", sizeof "CAIRN_REVISION=" - 1) != 0)
      env[o++] = environ[k];
  char rev_var[64];
  snprintf(rev_var, sizeof rev_var, "CAIRN_REVISION=%" PRId64, a->exec_rev);
  env[o++] = rev_var;
  env[o] = NULL;

  char *args[] = {"/bin/sh", "-c", (char *)(uintptr_t)a->exec_cmd, NULL};
  uv_stdio_container_t stdio[3] = {
      {.flags = UV_IGNORE},
      {.flags = UV_INHERIT_FD, .data.fd = 1},
      {.flags = UV_INHERIT_FD, .data.fd = 2},
  };
  uv_process_options_t opts = {
      .exit_cb = on_proc_exit,
      .file = "/bin/sh",
      .args = args,
      .env = env,
      .stdio_count = 3,
      .stdio = stdio,
  };
  a->proc.data = a;
  int rc = uv_spawn(a->loop, &a->proc, &opts);
  free(env);
  if (rc != 0) {
    log_line(a, stderr, "exec: cannot start /bin/sh: %s", uv_strerror(rc));
    /* libuv: the handle must be closed even when the spawn failed. */
    a->exec_running = true;
    uv_close((uv_handle_t *)&a->proc, on_proc_closed);
    return;
  }
  a->exec_running = true;
  log_line(a, stdout, "exec (pid %d) for revision %" PRId64, a->proc.pid, a->exec_rev);
}

static void exec_request(struct agent *a, int64_t rev) {
  if (a->exec_cmd == NULL || a->stopping)
    return;
  a->exec_rev = rev;
  if (a->exec_running)
    a->exec_again = true; /* coalesced: one more run, with the latest revision */
  else
    exec_start(a);
}

/* ---- the informer's callbacks ------------------------------------------- */

static void apply_put(struct agent *a, const Mvccpb__KeyValue *kv) {
  char rel[AGENT_REL_MAX];
  const char *why = NULL;
  if (!key_to_rel(a, kv, rel, &why)) {
    char shown[256];
    key_for_log(kv->key.data, kv->key.len, shown, sizeof shown);
    log_line(a, stderr, "skip key '%s': unsafe file name (%s)", shown, why);
    return;
  }
  int rc = write_file(a, rel, kv->value.data, kv->value.len);
  if (rc < 0) {
    log_line(a, stderr, "write %s/%s: %s", a->dir, rel, strerror(-rc));
    return;
  }
  if (rc == 1) {
    a->batch_changed = true;
    log_line(a, stdout, "put %s (revision %" PRId64 ", %zu bytes)", rel, kv->mod_revision,
             kv->value.len);
  }
}

static void on_add(void *data, const Mvccpb__KeyValue *kv) {
  apply_put(data, kv);
}

static void on_update(void *data, const Mvccpb__KeyValue *old, const Mvccpb__KeyValue *kv) {
  (void)old;
  apply_put(data, kv);
}

static void on_delete(void *data, const Mvccpb__KeyValue *old) {
  struct agent *a = data;
  char rel[AGENT_REL_MAX];
  const char *why = NULL;
  if (!key_to_rel(a, old, rel, &why))
    return; /* never written */
  int rc = remove_file(a, rel);
  if (rc < 0) {
    log_line(a, stderr, "remove %s/%s: %s", a->dir, rel, strerror(-rc));
    return;
  }
  if (rc == 1) {
    a->batch_changed = true;
    log_line(a, stdout, "delete %s", rel);
  }
}

/* After a list: every entry of DIR (walked depth first from fd, whose path
 * below DIR is rel, rel_len bytes) that is not a key of the mirror goes:
 * files, symlinks and leftover temp files; directories once empty. Keys
 * whose files differ from the mirror (edited by hand) are written again.
 * Returns the number of entries removed or rewritten. */
static unsigned scan_dir(struct agent *a, int fd, char *rel, size_t rel_len, unsigned depth) {
  unsigned changed = 0;
  if (depth > AGENT_SCAN_DEPTH_MAX) {
    log_line(a, stderr, "clean %s/%s: deeper than %u levels; not cleaned", a->dir, rel,
             AGENT_SCAN_DEPTH_MAX);
    close(fd);
    return 0;
  }
  DIR *d = fdopendir(fd);
  if (d == NULL) {
    log_line(a, stderr, "clean %s/%s: %s", a->dir, rel, strerror(errno));
    close(fd);
    return 0;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    size_t nlen = strlen(e->d_name);
    if (rel_len + nlen + 2 > AGENT_REL_MAX)
      continue; /* no key can name it; too long to handle */
    memcpy(rel + rel_len, e->d_name, nlen + 1);
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      continue;
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0)
        continue;
      rel[rel_len + nlen] = '/';
      rel[rel_len + nlen + 1] = '\0';
      changed += scan_dir(a, sub, rel, rel_len + nlen + 1, depth + 1);
      rel[rel_len + nlen] = '\0';
      if (unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) == 0)
        log_line(a, stdout, "remove directory %s (no key below it)", rel);
      continue;
    }
    bool tmp = strncmp(e->d_name, AGENT_TMP_PREFIX, sizeof AGENT_TMP_PREFIX - 1) == 0;
    const Mvccpb__KeyValue *kv = NULL;
    if (!tmp) {
      char key[AGENT_REL_MAX + 512];
      size_t klen = a->prefix_len + rel_len + nlen;
      if (klen <= sizeof key) {
        memcpy(key, a->prefix, a->prefix_len);
        memcpy(key + a->prefix_len, rel, rel_len + nlen);
        kv = cairn_informer_get(a->inf, key, klen);
      }
    }
    if (kv != NULL && S_ISREG(st.st_mode)) {
      if (!same_content(dirfd(d), e->d_name, kv->value.data, kv->value.len)) {
        char copy[AGENT_REL_MAX];
        snprintf(copy, sizeof copy, "%s", rel);
        if (write_file(a, copy, kv->value.data, kv->value.len) == 1) {
          changed++;
          log_line(a, stdout, "put %s (revision %" PRId64 ", %zu bytes; the file differed)", rel,
                   kv->mod_revision, kv->value.len);
        }
      }
      continue;
    }
    if (unlinkat(dirfd(d), e->d_name, 0) == 0) {
      changed++;
      if (!tmp)
        log_line(a, stdout, "remove %s (no key)", rel);
    } else {
      log_line(a, stderr, "remove %s/%s: %s", a->dir, rel, strerror(errno));
    }
  }
  (void)fsync(dirfd(d));
  closedir(d);
  rel[rel_len] = '\0';
  return changed;
}

static void on_synced(void *data, int64_t revision, bool relisted) {
  struct agent *a = data;
  if (relisted) {
    int fd = dup(a->dirfd);
    if (fd >= 0) {
      char rel[AGENT_REL_MAX] = "";
      if (scan_dir(a, fd, rel, 0, 0) > 0)
        a->batch_changed = true;
    }
    log_line(a, stdout, "listed at revision %" PRId64 ": %zu keys", revision,
             cairn_informer_size(a->inf));
  }
  if (a->batch_changed || !a->synced_once)
    exec_request(a, revision);
  a->batch_changed = false;
  a->synced_once = true;
}

static void on_error(void *data, int code, const char *message) {
  log_line(data, stderr, "informer: %d %s (retrying)", code, message);
}

static void shutdown_agent(struct agent *a) {
  a->stopping = true;
  uv_close((uv_handle_t *)&a->sig_term, NULL);
  uv_close((uv_handle_t *)&a->sig_int, NULL);
  cairn_client_close(a->client, NULL, NULL);
  /* A command still running is waited for (the loop keeps its handle);
   * no new run starts. */
}

static void on_end(void *data, int code, const char *message) {
  struct agent *a = data;
  a->inf = NULL;
  log_line(a, stderr, "informer ended: %d %s", code, message);
  a->exit_code = 1;
  shutdown_agent(a);
}

static void on_signal(uv_signal_t *h, int signum) {
  struct agent *a = h->data;
  if (a->stopping)
    return;
  log_line(a, stdout, "signal %d: stopping", signum);
  if (a->inf != NULL) {
    cairn_informer_stop(a->inf);
    a->inf = NULL;
  }
  a->exit_code = 0;
  shutdown_agent(a);
}

/* ---- main -------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: %s --name NODE --endpoints a,b,c --dir DIR [--exec COMMAND]\n"
          "          [--cacert FILE] [--cert FILE --key FILE]\n",
          AGENT_PROG);
  exit(2);
}

/* Splits "a,b,c" into endpoints (malloc'ed strings); with tls, an endpoint
 * without a scheme gets https:// (as etcdctl does). Returns the count. */
static size_t split_endpoints(const char *list, bool tls, char **out) {
  size_t n = 0;
  const char *p = list;
  while (*p != '\0') {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (len > 0) {
      if (n == CAIRN_ENDPOINTS_MAX || len >= AGENT_ENDPOINT_LEN_MAX) {
        fprintf(stderr, "%s: too many or too long endpoints in '%s'\n", AGENT_PROG, list);
        exit(2);
      }
      char *e = malloc(len + sizeof "https://");
      if (e == NULL) {
        fprintf(stderr, "%s: out of memory\n", AGENT_PROG);
        exit(1);
      }
      bool scheme = false;
      for (size_t k = 0; k + 2 < len; k++)
        if (p[k] == ':' && p[k + 1] == '/' && p[k + 2] == '/')
          scheme = true;
      size_t o = 0;
      if (tls && !scheme) {
        memcpy(e, "https://", sizeof "https://" - 1);
        o = sizeof "https://" - 1;
      }
      memcpy(e + o, p, len);
      e[o + len] = '\0';
      out[n++] = e;
    }
    p += len;
    if (*p == ',')
      p++;
  }
  return n;
}

int main(int argc, char **argv) {
  struct agent a = {.loop = uv_default_loop(), .dirfd = -1};
  const char *endpoints = NULL, *cacert = NULL, *cert = NULL, *key = NULL;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    if (i + 1 >= argc)
      usage();
    const char *v = argv[++i];
    if (strcmp(f, "--name") == 0)
      a.name = v;
    else if (strcmp(f, "--endpoints") == 0)
      endpoints = v;
    else if (strcmp(f, "--dir") == 0)
      a.dir = v;
    else if (strcmp(f, "--exec") == 0)
      a.exec_cmd = v;
    else if (strcmp(f, "--cacert") == 0)
      cacert = v;
    else if (strcmp(f, "--cert") == 0)
      cert = v;
    else if (strcmp(f, "--key") == 0)
      key = v;
    else
      usage();
  }
  if (a.name == NULL || endpoints == NULL || a.dir == NULL)
    usage();
  if (a.name[0] == '\0' || strchr(a.name, '/') != NULL) {
    fprintf(stderr, "%s: --name must be non-empty and without '/'\n", AGENT_PROG);
    return 2;
  }
  a.prefix_len = strlen("/nodes/") + strlen(a.name) + 1;
  a.prefix = malloc(a.prefix_len + 1);
  if (a.prefix == NULL)
    return 1;
  snprintf(a.prefix, a.prefix_len + 1, "/nodes/%s/", a.name);

  if (mkdir(a.dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: mkdir %s: %s\n", AGENT_PROG, a.dir, strerror(errno));
    return 1;
  }
  a.dirfd = open(a.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (a.dirfd < 0) {
    fprintf(stderr, "%s: open %s: %s\n", AGENT_PROG, a.dir, strerror(errno));
    return 1;
  }

  char *eps[CAIRN_ENDPOINTS_MAX];
  bool tls = cacert != NULL || cert != NULL || key != NULL;
  size_t n_eps = split_endpoints(endpoints, tls, eps);
  struct cairn_config cfg = {.endpoints = (const char *const *)eps,
                             .n_endpoints = n_eps,
                             .ca_file = cacert,
                             .cert_file = cert,
                             .key_file = key};
  int rc = cairn_client_new(a.loop, &cfg, &a.client);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create the client (%s): %s\n", AGENT_PROG, endpoints,
            cairn_strerror(rc));
    return 2;
  }
  struct cairn_informer_opts io = {.prefix = a.prefix, .prefix_len = a.prefix_len};
  struct cairn_informer_handlers ih = {.on_add = on_add,
                                       .on_update = on_update,
                                       .on_delete = on_delete,
                                       .on_synced = on_synced,
                                       .on_error = on_error,
                                       .on_end = on_end};
  rc = cairn_informer_start(a.client, &io, &ih, &a, &a.inf);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot start the informer: %s\n", AGENT_PROG, cairn_strerror(rc));
    cairn_client_close(a.client, NULL, NULL);
    uv_run(a.loop, UV_RUN_DEFAULT);
    return 1;
  }
  uv_signal_init(a.loop, &a.sig_term);
  uv_signal_init(a.loop, &a.sig_int);
  a.sig_term.data = &a;
  a.sig_int.data = &a;
  uv_signal_start(&a.sig_term, on_signal, SIGTERM);
  uv_signal_start(&a.sig_int, on_signal, SIGINT);
  log_line(&a, stdout, "mirroring %s of %s into %s", a.prefix, endpoints, a.dir);

  uv_run(a.loop, UV_RUN_DEFAULT);
  uv_loop_close(a.loop);
  for (size_t k = 0; k < n_eps; k++)
    free(eps[k]);
  free(a.prefix);
  close(a.dirfd);
  log_line(&a, stdout, "stopped");
  return a.exit_code;
}
