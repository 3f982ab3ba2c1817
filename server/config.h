/* server/config.h: the daemon's configuration from etcd's flag names and
 * ETCD_* environment variables.
 *
 * A flag given on the command line wins over its environment variable. An
 * unknown flag, or an etcd flag Cairn does not support, is refused with a
 * clear message. */
#ifndef CAIRN_CONFIG_H
#define CAIRN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_URLS_MAX 16
#define CONFIG_MEMBERS_MAX 16

struct config_url {
  char scheme[8]; /* "http" or "https" */
  char host[256];
  int port;
};

struct config_member {
  char name[128];
  struct config_url peer;
  char peer_url[300]; /* as given */
};

enum config_compaction_mode { COMPACTION_PERIODIC, COMPACTION_REVISION };

struct config {
  char name[128];
  char data_dir[1024];
  struct config_url listen_client[CONFIG_URLS_MAX];
  size_t n_listen_client;
  char advertise_client_urls[1024];
  struct config_url listen_peer[CONFIG_URLS_MAX];
  size_t n_listen_peer;
  char initial_advertise_peer_urls[1024];
  struct config_member initial_cluster[CONFIG_MEMBERS_MAX];
  size_t n_initial_cluster;
  bool initial_cluster_new; /* --initial-cluster-state new | existing */
  char initial_cluster_token[256];
  uint64_t snapshot_count;
  unsigned heartbeat_ms;
  unsigned election_ms;
  uint64_t quota_backend_bytes; /* 0: the storage default (2 GiB) */
  uint64_t max_request_bytes;
  unsigned max_txn_ops;
  enum config_compaction_mode auto_compaction_mode;
  /* periodic: seconds (0 = off); revision: revisions to keep (0 = off) */
  uint64_t auto_compaction_retention;
  char cert_file[1024];
  char key_file[1024];
  char trusted_ca_file[1024];
  bool client_cert_auth;
  int log_level; /* 0 debug, 1 info, 2 warn, 3 error */
};

enum config_result { CONFIG_OK = 0, CONFIG_EXIT_OK = 1, CONFIG_ERROR = 2 };

/* Parses argv and the environment into *c. CONFIG_EXIT_OK: --help or
 * --version was printed to stdout (exit 0); CONFIG_ERROR: a message is on
 * stderr (exit 2 as etcd does for bad flags). */
enum config_result config_parse(struct config *c, int argc, char **argv);

/* Parses "http://host:port" into u; false if malformed. */
bool config_parse_url(const char *s, struct config_url *u);

#define CAIRN_VERSION "0.1.0"
/* The etcd version Cairn reports to clients (Status, /version). */
#define CAIRN_ETCD_VERSION "3.4.23"
#define CAIRN_ETCD_CLUSTER_VERSION "3.4.0"

#endif
