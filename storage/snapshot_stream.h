/* storage/snapshot_stream.h: streaming a snapshot file in chunks, through
 * fileio, so that sending or receiving a snapshot never blocks the loop.
 *
 * The reader hands out a snapshot file (as mvcc_snapshot_export() writes it)
 * chunk by chunk; the writer builds one from chunks in a temporary file and
 * makes it appear under its final name only once it is complete and durable.
 * Neither looks inside the file: verification is mvcc_snapshot_import()'s.
 *
 * Threading: the loop thread of the fileio, as for fileio itself. Callbacks
 * run on the loop, never from inside the call that started the operation.
 *
 * Bounds: a chunk is at most SNAPSTREAM_CHUNK_MAX bytes, and a reader or
 * writer has at most one operation outstanding: a second call while one is
 * pending returns CAIRN_EBUSY. Each operation uses one fileio slot at a
 * time, so a fileio at its bound refuses it with CAIRN_EBUSY too.
 *
 * Errors: functions return 0 or a negative CAIRN_E* code (a function that
 * returns an error never calls its callback); callbacks get 0 or a negative
 * CAIRN_E* code as status. I/O failures are CAIRN_EIO, with the file name and
 * the system's reason on stderr. Errors are sticky: after a failed operation
 * every later one on the same reader or writer fails with the same code. */
#ifndef CAIRN_SNAPSHOT_STREAM_H
#define CAIRN_SNAPSHOT_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "fileio.h"

#define SNAPSTREAM_CHUNK_MAX (4u * 1024u * 1024u)
#define SNAPSTREAM_CHUNK_DEFAULT (1u * 1024u * 1024u)

typedef struct snapstream_reader snapstream_reader;
typedef struct snapstream_writer snapstream_writer;

/* status 0: chunk holds len bytes, the next ones of the file; len 0 means the
 * end of the file. chunk belongs to the reader and stays valid until the next
 * snapstream_reader_next() or snapstream_reader_close(). On an error chunk is
 * NULL and len 0. */
typedef void (*snapstream_read_cb)(void *data, int status, const uint8_t *chunk, size_t len);

/* status: 0 or a negative CAIRN_E* code. */
typedef void (*snapstream_write_cb)(void *data, int status);

/* Opens the file at path for reading in chunks of chunk_bytes (0:
 * SNAPSTREAM_CHUNK_DEFAULT). Its size is taken now (open and fstat are done
 * on the calling thread: they touch metadata only); the reader delivers
 * exactly that many bytes. f must outlive the reader. *out is the caller's,
 * released with snapstream_reader_close(). Errors: CAIRN_EINVAL (chunk_bytes
 * > SNAPSTREAM_CHUNK_MAX, not a regular file), CAIRN_EIO (cannot open),
 * CAIRN_ENOMEM. */
int snapstream_reader_open(fileio *f, const char *path, size_t chunk_bytes,
                           snapstream_reader **out);

/* The file's size in bytes, as at open. */
uint64_t snapstream_reader_size(const snapstream_reader *r);

/* Bytes delivered so far. */
uint64_t snapstream_reader_offset(const snapstream_reader *r);

/* Reads the next chunk and hands it to cb: chunk_bytes bytes, fewer for the
 * last one, then a 0-length chunk at the end (and again on every later
 * call). Short reads are retried until the chunk is full; a file that turns
 * out shorter than its size at open is CAIRN_EIO. Errors: CAIRN_EBUSY (a
 * next is pending, or fileio is at its bound), CAIRN_ESTOPPED (fileio is
 * closing), or the sticky error of an earlier failure. */
int snapstream_reader_next(snapstream_reader *r, void *data, snapstream_read_cb cb);

/* Closes the file and frees r. May be called while a next is pending: that
 * next's callback will then never run, and r is freed when its read
 * completes (the fileio must not be closed before that: fileio_close()
 * waits for it anyway). */
void snapstream_reader_close(snapstream_reader *r);

/* Creates final_path.tmp (O_CREAT|O_EXCL, mode 0600) to build a snapshot
 * that will appear at final_path. f must outlive the writer. *out is the
 * caller's until snapstream_writer_finish() succeeds or
 * snapstream_writer_abort() is called. Errors: CAIRN_EBUSY (final_path.tmp
 * exists: another writer is building it, or an interrupted one left it;
 * remove it when no writer runs), CAIRN_EIO, CAIRN_ENOMEM, CAIRN_EINVAL. */
int snapstream_writer_open(fileio *f, const char *final_path, snapstream_writer **out);

/* Appends len bytes of buf (1 <= len <= SNAPSTREAM_CHUNK_MAX); cb runs once
 * they are all written (short writes are continued). buf must stay valid and
 * unchanged until cb runs. Errors: CAIRN_EINVAL (len out of range, buf NULL),
 * CAIRN_EBUSY, CAIRN_ESTOPPED, the sticky error. */
int snapstream_writer_write(snapstream_writer *w, const void *buf, size_t len, void *data,
                            snapstream_write_cb cb);

/* Bytes appended so far. */
uint64_t snapstream_writer_size(const snapstream_writer *w);

/* Completes the file: fsyncs it, renames it to final_path (replacing a file
 * there), and fsyncs final_path's directory, then calls cb. If this returns
 * 0 the writer is consumed: it is freed after cb runs, whatever the status.
 * status 0: the snapshot is durable at final_path. On a failure neither the
 * temporary file nor final_path is left. Errors (the writer stays the
 * caller's): CAIRN_EBUSY (a write is pending), CAIRN_ESTOPPED, the sticky
 * error. */
int snapstream_writer_finish(snapstream_writer *w, void *data, snapstream_write_cb cb);

/* Abandons the snapshot: removes the temporary file and frees w. Not after
 * snapstream_writer_finish() returned 0. May be called while a write is
 * pending: its callback will then never run, and w is freed when it
 * completes (see snapstream_reader_close()). */
void snapstream_writer_abort(snapstream_writer *w);

#endif
