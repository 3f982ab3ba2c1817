/* storage/mvcc_release.c: dropping the store's mapping of the data file
 * from time to time, so that the mapped part follows the pages read, not the
 * file's size.
 *
 * LMDB reads through a shared read-only mapping of data.mdb and writes with
 * pwrite. The kernel maps more than each read fault asks for: the pages around
 * it that are in the page cache (fault-around, 64 KiB) and, on ext4 since
 * Linux 6.16, the whole large folio a fault lands in. The pages LMDB reads
 * after each commit (the copies the commit just wrote: the right edge of
 * `hist`, the `kv` path) sit next to the pages just appended, so every page of
 * history once written near the write edge stays mapped, and the mapped part
 * of the file grows with the file (measured: 83 MiB mapped of a 167 MiB file
 * after a 12 s put run, of which a few MiB are read again).
 *
 * So the store drops its mapping of the file (MADV_DONTNEED) from time to
 * time. A page read afterwards is mapped again from the page cache on first
 * touch (a minor fault, no I/O). Neither the file nor the page cache
 * changes: the kernel keeps or evicts those pages as it does for any file
 * written with pwrite.
 * - Every MVCC_RELEASE_BYTES of file growth: all but the file's last
 *   MVCC_RELEASE_KEEP_BYTES. While the file grows, LMDB's copies (the pages
 *   read again: `kv`, the branch pages, the right edge of `hist`) are taken
 *   from its end, so they stay mapped and nothing is faulted back (measured
 *   after a put run: every `kv` leaf in the file's last tenth).
 * - Every MVCC_RELEASE_COMMITS write commits: the whole mapping, for a file
 *   that does not grow (pages reused after a compaction lie anywhere). Each
 *   such release costs the minor faults of the working set.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "storage/mvcc_int.h"

/* The address range of the mapping of the data file at offset 0, from
 * /proc/self/maps, matched by device and inode. Read anew at each release:
 * only the owner remaps (store_grow_map, store_reopen) and the owner is the
 * caller, so the range cannot change between the lookup and the madvise. */
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

void store_note_commit(mvcc_store *s, uint64_t file_end) {
  s->release_commits++;
  if (file_end < s->release_at) {
    s->release_at = file_end; /* a replaced or compacted file */
  }
  bool all = s->release_commits >= MVCC_RELEASE_COMMITS;
  if (!all && file_end - s->release_at < MVCC_RELEASE_BYTES) {
    return;
  }
  s->release_at = file_end;
  uintptr_t start, end;
  if (map_find(s, &start, &end) != 0) {
    return; /* not found (unlikely): the mapping stays as it is */
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

uint64_t mvcc_map_releases(const mvcc_store *s) {
  return s->releases;
}
