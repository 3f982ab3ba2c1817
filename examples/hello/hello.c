/* examples/hello/hello.c: the smallest program on libcairn's blocking API,
 * built outside the tree against an installed libcairn:
 *
 *   cmake --install build --prefix /opt/cairn
 *   export PKG_CONFIG_PATH=/opt/cairn/lib/pkgconfig
 *   cc -o hello hello.c $(pkg-config --cflags --libs libcairn)
 *   LD_LIBRARY_PATH=/opt/cairn/lib ./hello 127.0.0.1:2379,127.0.0.1:2381 greeting hello
 *
 * It puts KEY=VALUE, reads it back linearizably and prints
 * "KEY=VALUE at revision N". Exit status 1 with the server's text on
 * failure. */
#include <cairn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HELLO_ENDPOINTS_MAX 16

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s ENDPOINT[,ENDPOINT...] KEY VALUE\n", argv[0]);
    return 2;
  }
  const char *eps[HELLO_ENDPOINTS_MAX];
  size_t n = 0;
  for (char *tok = strtok(argv[1], ","); tok != NULL && n < HELLO_ENDPOINTS_MAX;
       tok = strtok(NULL, ",")) {
    eps[n++] = tok;
  }
  struct cairn_config cfg = {.endpoints = eps, .n_endpoints = n};
  cairn_sync *s;
  int rc = cairn_sync_new(&cfg, &s);
  if (rc != 0) {
    fprintf(stderr, "hello: %s\n", cairn_strerror(rc));
    return 1;
  }
  struct cairn_error err;
  Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
  put.key = (ProtobufCBinaryData){strlen(argv[2]), (uint8_t *)argv[2]};
  put.value = (ProtobufCBinaryData){strlen(argv[3]), (uint8_t *)argv[3]};
  rc = cairn_sync_put(s, &put, NULL, NULL, &err);
  if (rc == 0) {
    Etcdserverpb__RangeRequest get = ETCDSERVERPB__RANGE_REQUEST__INIT;
    get.key = put.key;
    Etcdserverpb__RangeResponse *resp = NULL;
    rc = cairn_sync_range(s, &get, NULL, &resp, &err);
    if (rc == 0 && resp->n_kvs == 1) {
      const Mvccpb__KeyValue *kv = resp->kvs[0];
      printf("%.*s=%.*s at revision %lld\n", (int)kv->key.len, (const char *)kv->key.data,
             (int)kv->value.len, (const char *)kv->value.data, (long long)kv->mod_revision);
    } else if (rc == 0) {
      snprintf(err.message, sizeof err.message, "the key is gone");
      rc = 1;
    }
    if (resp != NULL) {
      cairn_response_free(&resp->base);
    }
  }
  if (rc != 0) {
    fprintf(stderr, "hello: %s\n", err.message[0] ? err.message : cairn_strerror(rc));
  }
  cairn_sync_close(s);
  return rc == 0 ? 0 : 1;
}
