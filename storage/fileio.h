/* storage/fileio.h: asynchronous file I/O for the storage engine.
 *
 * A fileio object is bound to one libuv loop and runs positional reads,
 * writes and fsyncs off that loop, so the loop never blocks on the disk. Two
 * backends do the work:
 *   - io_uring (storage/uring.c): one ring per fileio; completions are
 *     signalled through an eventfd that the loop watches;
 *   - the libuv thread pool (storage/fileio_pool.c, uv_queue_work): used when
 *     FILEIO_FORCE_FALLBACK is given, when the environment variable
 *     CAIRN_NO_URING is "1", or when the kernel refuses io_uring (ENOSYS,
 *     EPERM under seccomp, io_uring_disabled...), silently.
 * Both backends behave the same from the caller's side. See docs/storage-io.md.
 *
 * Descriptors: fileio is for regular files (and block devices). On a pipe or
 * socket the backends differ (io_uring ignores the offset and may wait for
 * data; pread fails with ESPIPE), so do not pass one.
 *
 * Threading: every function is called on the loop thread, and every callback
 * runs on the loop thread, always from the loop (never from inside the call
 * that submitted the operation).
 *
 * Errors: functions return 0 or a negative CAIRN_E* code; a function that
 * returns an error never calls its callback. The result an operation's
 * callback receives is different: it is the kernel's answer, the byte count
 * (read, write) or 0 (fsync), or a negative errno value (-EBADF, -EIO,
 * -ENOSPC...), exactly as pread/pwrite/fsync would have said.
 *
 * Bounds: at most FILEIO_INFLIGHT_MAX operations are in flight per fileio;
 * one more is refused with CAIRN_EBUSY (backpressure: retry from a later
 * callback). When a callback runs, its operation's slot is already free, so a
 * callback can always submit one follow-up operation. */
#ifndef CAIRN_FILEIO_H
#define CAIRN_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../common/cairn_error.h"

typedef struct fileio fileio;

/* Operations in flight per fileio; the next one gets CAIRN_EBUSY. */
#define FILEIO_INFLIGHT_MAX 256u

/* Largest transfer of one read or write (Linux's MAX_RW_COUNT); a longer
 * request is clamped to it and reported as the short transfer it is. */
#define FILEIO_IO_BYTES_MAX 0x7ffff000u

/* fileio_init() flags. */
#define FILEIO_FORCE_FALLBACK 1u /* use the thread pool even if io_uring works */

/* result: bytes transferred (read, write), 0 (fsync), or a negative errno. */
typedef void (*fileio_cb)(void *data, int64_t result);

/* Creates a fileio on loop (which must outlive it). *out is owned by the
 * caller and released with fileio_close(). Errors: CAIRN_EINVAL (unknown
 * flag), CAIRN_ENOMEM, CAIRN_EIO (neither backend could start). */
int fileio_init(uv_loop_t *loop, unsigned flags, fileio **out);

/* true when f runs on io_uring, false on the thread pool. */
bool fileio_uses_uring(const fileio *f);

/* The loop f is bound to. */
uv_loop_t *fileio_loop(const fileio *f);

/* Operations in flight right now (0..FILEIO_INFLIGHT_MAX). */
unsigned fileio_inflight(const fileio *f);

/* Reads up to len bytes at offset of fd into buf (pread). buf must stay valid
 * until cb runs; fd must stay open until then. A short count is reported as
 * it is (0 at end of file): the caller loops. Errors: CAIRN_EINVAL (buf NULL
 * with len > 0, offset > INT64_MAX), CAIRN_EBUSY (FILEIO_INFLIGHT_MAX in
 * flight), CAIRN_ESTOPPED (fileio_close() was called). */
int fileio_read(fileio *f, int fd, void *buf, size_t len, uint64_t offset, void *data,
                fileio_cb cb);

/* Writes up to len bytes of buf at offset of fd (pwrite). As fileio_read: buf
 * stays valid and unchanged until cb; a short count is reported as it is. */
int fileio_write(fileio *f, int fd, const void *buf, size_t len, uint64_t offset, void *data,
                 fileio_cb cb);

/* Flushes fd to stable storage: fdatasync when datasync, else fsync. The
 * flush covers every write to the file that completed before this call.
 * Errors: CAIRN_EBUSY, CAIRN_ESTOPPED. */
int fileio_fsync(fileio *f, int fd, bool datasync, void *data, fileio_cb cb);

/* Write-back step of fileio_fsync_paced(). */
#define FILEIO_PACE_BYTES (256u << 10)

/* fdatasync(fd), after writing the file's dirty pages back one
 * FILEIO_PACE_BYTES range at a time, waiting for each range
 * (sync_file_range), so that a large sync never queues more than one range
 * on the device ahead of other writers (the raft log's synchronous writes,
 * which otherwise wait behind the whole burst). Pages dirtied again while
 * it runs are written by the final fdatasync, so it covers what fsync
 * would. Runs on the libuv thread pool whichever the backend. Same result
 * and errors as fileio_fsync(). */
int fileio_fsync_paced(fileio *f, int fd, void *data, fileio_cb cb);

/* Closes f: new operations are refused with CAIRN_ESTOPPED from now on, the
 * ones in flight complete and their callbacks run with their real results,
 * then the backend's handles are closed and close_cb(data) runs on the loop
 * (always later, never from inside this call). f is freed before close_cb
 * runs. close_cb may be NULL. Calling it twice is a bug (asserted). */
void fileio_close(fileio *f, void (*close_cb)(void *data), void *data);

#endif
