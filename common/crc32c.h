/* common/crc32c.h: CRC-32C (Castagnoli), bit-compatible with Go's
 * hash/crc32 MakeTable(Castagnoli). Thread-safe; the tables are built on the
 * first call. */
#ifndef CAIRN_CRC32C_H
#define CAIRN_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc continues a CRC-32C over n bytes at data (crc 0 to start), as Go's
 * crc32.Update. */
uint32_t crc32c_update(uint32_t crc, const void *data, size_t n);

/* The CRC of A||B from crc(A), crc(B) and len(B) (zlib's crc32_combine). */
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

#endif
