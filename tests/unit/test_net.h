/* tests/unit/test_net.h: ports for tests that start servers. Apart from
 * test.h because <sys/socket.h> names clash with some tests' own. */
#ifndef CAIRN_TEST_NET_H
#define CAIRN_TEST_NET_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

/* A free TCP port on 127.0.0.1: the kernel's pick, bound and closed, and
 * none of the last 64 this process got (the kernel may pick a closed port
 * again, and callers take several before binding any). A fixed port in the
 * ephemeral range may be held by another test's client connection (bind:
 * address already in use under ctest -j). */
static inline int test_free_port(void) {
  static int recent[64];
  static unsigned n_recent;
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    int port = ntohs(a.sin_port);
    bool seen = false;
    for (unsigned i = 0; i < n_recent && i < 64; i++) {
      seen = seen || recent[i] == port;
    }
    if (!seen) {
      recent[n_recent++ % 64] = port;
      return port;
    }
  }
}

#endif
