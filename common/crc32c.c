/* common/crc32c.c: CRC-32C (Castagnoli), as Go's hash/crc32 with
 * MakeTable(Castagnoli): etcd's snapshot and hash checksums, and the raft
 * log's record checksums (storage/wal.c). */
#include "common/crc32c.h"

#include <pthread.h>
#include <string.h>

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

#define CRC32C_POLY 0x82F63B78u /* reflected */

/* Filled once (pthread_once) before the first use; read-only afterwards. */
static uint32_t crc32c_table[8][256];
static uint32_t crc32c_x2n[32]; /* x^(2^n) mod P */

static void combine_init(void);

static void tables_init(void) {
  combine_init();
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) {
      c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
    }
    crc32c_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++) {
    for (int t = 1; t < 8; t++) {
      uint32_t prev = crc32c_table[t - 1][i];
      crc32c_table[t][i] = (prev >> 8) ^ crc32c_table[0][prev & 0xff];
    }
  }
}

uint32_t crc32c_update(uint32_t crc, const void *data, size_t n) {
  pthread_once(&tables_once, tables_init);
  const uint8_t *p = data;
  crc = ~crc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc;
    crc = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^
          crc32c_table[5][(w >> 16) & 0xff] ^ crc32c_table[4][(w >> 24) & 0xff] ^
          crc32c_table[3][(w >> 32) & 0xff] ^ crc32c_table[2][(w >> 40) & 0xff] ^
          crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
    p += 8;
    n -= 8;
  }
#endif
  while (n-- > 0) {
    crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  }
  return ~crc;
}

/* a * b modulo the polynomial (zlib's multmodp, reflected bit order). */
static uint32_t crc32c_multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) {
        break;
      }
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
  }
  return p;
}

static void combine_init(void) {
  uint32_t p = 1u << 30; /* x^1 */
  crc32c_x2n[0] = p;
  for (int n = 1; n < 32; n++) {
    crc32c_x2n[n] = p = crc32c_multmodp(p, p);
  }
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  pthread_once(&tables_once, tables_init);
  uint32_t p = 1u << 31; /* x^0 */
  unsigned k = 3;        /* bytes: x^(8 len) */
  for (uint64_t n = len_b; n != 0; n >>= 1, k++) {
    if (n & 1) {
      p = crc32c_multmodp(crc32c_x2n[k & 31], p);
    }
  }
  return crc32c_multmodp(p, crc_a) ^ crc_b;
}
