/* storage/mvcc_release.c: keeping the store's mapping of the data file to
 * the pages it reads, not the file's size.
 *
 * LMDB reads through a shared read-only mapping of data.mdb and writes with
 * pwrite. Left alone, the kernel maps far more than the pages read:
 * - Fault-around: a read fault also maps the pages around it (64 KiB) that
 *   are in the page cache, and all the file's recent pages are, since LMDB
 *   wrote them.
 * - Large folios (ext4, Linux 6.16 and later): LMDB's multi-page writes make
 *   page-cache folios of several pages, and a fault maps its folio's pages
 *   within that window.
 * Both map `hist` pages that nothing reads again beside the `kv` and branch
 * pages that are read. A pagemap walk of a mixed run (90% reads) found about
 * 1000 `kv` leaves mapped beside 2600 `hist` leaves interleaved with them.
 *
 * Three measures:
 * 1. Fault-around off. Linux turns fault-around off for a mapping registered
 *    with a userfaultfd for write-protect tracking (it must see each page).
 *    In asynchronous mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7) the kernel
 *    resolves write-protect faults itself, so nothing ever waits on the
 *    descriptor; and the mapping is read-only and never write-protected, so
 *    there are none. The only effect is that a read fault maps its own page
 *    (also inside a large folio). Where this is unavailable (an older
 *    kernel, a seccomp filter, no userfaultfd), the store runs with
 *    fault-around, and mvcc_map_exact() says so.
 * 2. With fault-around off: after each commit, the `hist` leaves the commit
 *    finished are unmapped (unmap_finished). They were read while they were
 *    the right edge, and nothing reads them again but history reads.
 * 3. Releases (MADV_DONTNEED) of the whole mapping every
 *    MVCC_RELEASE_COMMITS write commits, for whatever else was read once
 *    (old history, compaction, pages reused since). With fault-around on,
 *    also every MVCC_RELEASE_BYTES of file growth: all but the file's last
 *    MVCC_RELEASE_KEEP_BYTES, where LMDB's copies (`kv`, the branch pages,
 *    the right edge of `hist`) are taken from while the file grows, with the
 *    neighbours fault-around mapped.
 * A page read after a release or an unmap is mapped again from the page cache
 * on first touch (a minor fault, no I/O). Neither the file nor the page cache
 * changes: nothing is written through the mapping.
 *
 * Cost, measured on 2 vCPUs (docs/performance.md): with fault-around off, a
 * put run takes about twice the minor faults (each maps one page), 5-10%
 * more server CPU per put; a mixed run none measurable.
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "storage/mvcc_int.h"

/* The address range of the mapping of the data file at offset 0, from
 * /proc/self/maps, matched by device and inode. Read after each (re)map
 * (store_map_changed), and kept: only the owner remaps (store_env_open,
 * store_grow_map), on the thread that also releases. */
static int map_find(mvcc_store *s, uintptr_t *start, uintptr_t *end) {
  int fd = mvcc_fd(s);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    return CAIRN_EIO;
  }
  FILE *f = fopen("/proc/self/maps", "re");
  if (f == NULL) {
    return CAIRN_EIO;
  }
  char line[512];
  int rc = CAIRN_EIO; /* no such mapping */
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long lo, hi, off, ino;
    unsigned maj, mnr;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off, &maj, &mnr, &ino) != 7) {
      continue;
    }
    if (off == 0 && ino == (unsigned long)st.st_ino && makedev(maj, mnr) == st.st_dev) {
      *start = lo;
      *end = hi;
      rc = 0;
      break;
    }
  }
  fclose(f);
  return rc;
}

/* Walks hist back from its last entry after a commit; how many entries at
 * most, so that a huge batch does not hold the loop (what is left mapped
 * goes with the next whole release). */
#define UNMAP_WALK_MAX 4096u

/* Exact mapping only: unmaps the hist leaves the last commit finished.
 * hist is written in key order at its right edge (MDB_APPEND), so each commit
 * reads the right-most leaf, copies it and, when it is full, starts a new one
 * after it. A finished leaf is never changed again (compaction aside) and
 * nothing reads it but history reads; yet it stays mapped, because LMDB read it
 * while it was the right-most one. The walk goes back from the last entry
 * over the entries of the previous right-most leaf (from its first key,
 * hist_edge): every leaf met other than the new right-most one was finished
 * by this commit. Pages are found from LMDB's key pointers, which point into
 * the leaf's page of the mapping. */
static void unmap_run(mvcc_store *s, uintptr_t lo, uintptr_t hi, uintptr_t ps) {
  if (hi > lo && madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) {
    s->hist_unmapped += (hi - lo) / ps;
  }
}

static void unmap_finished(mvcc_store *s) {
  struct ctx c;
  if (ctx_read_begin(s, &c) != 0) {
    return;
  }
  MDB_cursor *cur;
  if (mdb_cursor_open(c.txn, s->dbi_hist, &cur) != 0) {
    ctx_read_end(s, &c);
    return;
  }
  const uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE); /* LMDB's page size */
  const uintptr_t mask = ~(ps - 1);
  MDB_val k, v;
  int mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  uintptr_t edge = mrc == 0 ? (uintptr_t)k.mv_data & mask : 0;
  uint8_t new_edge[HIST_KEY_LEN];
  bool found = false;
  uintptr_t lo = 0, hi = 0; /* a run of finished pages not yet unmapped */
  unsigned steps = 0;
  while (mrc == 0 && k.mv_size == HIST_KEY_LEN && steps++ < UNMAP_WALK_MAX) {
    uintptr_t page = (uintptr_t)k.mv_data & mask;
    if (page == edge) {
      memcpy(new_edge, k.mv_data, HIST_KEY_LEN); /* the edge leaf's first key so far */
      found = true;
    } else if (!s->have_edge || page < s->map_start || page >= s->map_end) {
      break; /* the first walk only finds the edge */
    } else if (page + ps == lo) {
      lo = page; /* the run grows down */
    } else if (page != lo) {
      unmap_run(s, lo, hi, ps);
      lo = page;
      hi = page + ps;
    }
    if (s->have_edge && memcmp(k.mv_data, s->hist_edge, HIST_KEY_LEN) <= 0) {
      break; /* back at the previous edge leaf's first key */
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
  }
  unmap_run(s, lo, hi, ps);
  s->have_edge = found;
  if (found) {
    memcpy(s->hist_edge, new_edge, HIST_KEY_LEN);
  }
  mdb_cursor_close(cur);
  ctx_read_end(s, &c);
}

void store_note_commit(mvcc_store *s, uint64_t file_end) {
  if (s->map_exact) {
    unmap_finished(s);
  }
  s->release_commits++;
  if (file_end < s->release_at) {
    s->release_at = file_end; /* a replaced or compacted file */
  }
  bool all = s->release_commits >= MVCC_RELEASE_COMMITS;
  if (!all && (s->map_exact || file_end - s->release_at < MVCC_RELEASE_BYTES)) {
    return; /* an exact mapping holds no neighbours: the commit count will do */
  }
  s->release_at = file_end;
  uintptr_t start = s->map_start, end = s->map_end;
  if (start == 0) {
    return; /* not found at the last remap (unlikely): it stays as it is */
  }
  if (all) {
    s->release_commits = 0;
  } else if (file_end <= MVCC_RELEASE_KEEP_BYTES) {
    return;
  } else if (file_end - MVCC_RELEASE_KEEP_BYTES < end - start) {
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE); /* LMDB's page size too */
    end = start + ((file_end - MVCC_RELEASE_KEEP_BYTES) & ~(page - 1));
  }
  if (madvise((void *)start, end - start, MADV_DONTNEED) == 0) {
    s->releases++;
  }
}

/* Linux 6.7's asynchronous write-protect mode; Debian 12's kernel headers
 * predate it. */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ull << 15)
#endif

/* The store's userfaultfd, made on first use: user-mode faults only (what
 * an unprivileged process may ask for), asynchronous write-protect. */
static int uffd_get(mvcc_store *s) {
  if (s->uffd != -1) {
    return s->uffd;
  }
  s->uffd = -2;
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    return -2;
  }
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC};
  if (ioctl(fd, UFFDIO_API, &api) != 0 || (api.features & UFFD_FEATURE_WP_ASYNC) == 0) {
    close(fd);
    return -2;
  }
  s->uffd = fd;
  return fd;
}

void store_map_changed(mvcc_store *s) {
  s->map_exact = false;
  s->have_edge = false;
  s->map_start = s->map_end = 0;
  uintptr_t start, end;
  if (s->env == NULL || map_find(s, &start, &end) != 0) {
    return;
  }
  s->map_start = start;
  s->map_end = end;
  int fd = uffd_get(s);
  if (fd < 0) {
    return;
  }
  struct uffdio_register reg = {.range = {.start = start, .len = end - start},
                                .mode = UFFDIO_REGISTER_MODE_WP};
  /* A failure (ENOMEM) leaves fault-around on for this mapping. */
  s->map_exact = ioctl(fd, UFFDIO_REGISTER, &reg) == 0;
}

bool mvcc_map_exact(const mvcc_store *s) {
  return s->map_exact;
}

uint64_t mvcc_map_unmapped(const mvcc_store *s) {
  return s->hist_unmapped;
}

uint64_t mvcc_map_releases(const mvcc_store *s) {
  return s->releases;
}
