/* client/cairnctl/cairnctl.h: what cairnctl's files share.
 *
 * cairnctl is etcdctl's v3 command line on libcairn's blocking API. main.c
 * parses the global flags (and their CAIRNCTL_* environment variables),
 * finds the command in its table and runs it; each command family has a
 * file (kv.c, txn.c, watch.c, lease.c, member.c, endpoint.c, snapshot.c,
 * maintenance.c); output.c prints what etcdctl prints (simple, json,
 * table); args.c parses flags the way etcdctl's pflag does.
 *
 * Exit codes are etcdctl's (CTL_EXIT_*). A command returns its exit code;
 * it prints its own errors with ctl_error() ("Error: <text>" on stderr). */
#ifndef CAIRNCTL_H
#define CAIRNCTL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "client/cairn.h"

/* etcdctl's exit codes (etcdctl/ctlv3/command/error.go). */
enum {
  CTL_EXIT_OK = 0,
  CTL_EXIT_ERROR = 1,
  CTL_EXIT_BAD_CONNECTION = 2,
  CTL_EXIT_INVALID_INPUT = 3,
  CTL_EXIT_BAD_FEATURE = 4,
  CTL_EXIT_IO = 6,
  CTL_EXIT_BAD_ARGS = 128,
};

enum ctl_format { CTL_OUT_SIMPLE, CTL_OUT_JSON, CTL_OUT_TABLE };

/* ---- flags (args.c) ------------------------------------------------------ */

enum ctl_flag_type {
  CTL_FLAG_BOOL,
  CTL_FLAG_STRING,
  CTL_FLAG_INT,
  CTL_FLAG_DURATION,
  CTL_FLAG_STRINGS
};

/* One flag: --name (and -c when shorthand is nonzero). dst points to a
 * bool, a const char * (pointing into argv or the environment), an
 * int64_t, a uint64_t of milliseconds (Go durations: "2s", "500ms"), or a
 * struct ctl_strings (a comma list, appended to). env, when non-NULL, is
 * the environment variable that sets the flag's default. */
struct ctl_flag {
  const char *name;
  char shorthand;
  enum ctl_flag_type type;
  void *dst;
  const char *env;
};

#define CTL_STRINGS_MAX 64u
struct ctl_strings {
  char *v[CTL_STRINGS_MAX]; /* malloc'ed, freed by ctl_strings_free() */
  size_t n;
};
/* Appends the items of a comma list. CTL_EXIT_BAD_ARGS beyond CTL_STRINGS_MAX. */
int ctl_strings_add_list(struct ctl_strings *s, const char *list);
void ctl_strings_clear(struct ctl_strings *s);

/* Parses argv[0..argc) against flags (terminated by a NULL name; may be
 * NULL) and then globals (the same); flags may come anywhere, "--" ends them.
 * Positional arguments are moved to the front of argv in order; *n_pos is
 * their number. Prints "Error: ..." and returns CTL_EXIT_BAD_ARGS on an
 * unknown flag or a bad value, else 0. */
int ctl_parse_flags(int argc, char **argv, const struct ctl_flag *flags,
                    const struct ctl_flag *globals, int *n_pos);

/* Applies the env of each flag that has one and is set. Same errors. */
int ctl_apply_env(const struct ctl_flag *flags);

/* Go's strconv-like parsers. 0 on success, -1 on a syntax or range error. */
int ctl_parse_i64(const char *s, int base, int64_t *out);
int ctl_parse_u64(const char *s, int base, uint64_t *out);
/* A Go duration ("1m30s", "250ms", "2s") in milliseconds. */
int ctl_parse_duration_ms(const char *s, uint64_t *out);

/* ---- the session (main.c) ------------------------------------------------- */

struct ctl {
  struct ctl_strings endpoints;
  const char *cacert, *cert, *key;
  bool insecure_skip_tls_verify;
  uint64_t dial_timeout_ms;
  uint64_t command_timeout_ms;
  const char *write_out;
  enum ctl_format format;
  bool hex;
  const struct ctl_flag *globals; /* the table of the flags above */
  cairn_sync *sync;               /* NULL until ctl_client() */
  /* The endpoints as the client knows them (a scheme added for TLS). */
  struct ctl_strings urls;
};

/* Parses a command's arguments: its flags, then the global ones (see
 * ctl_parse_flags()), and checks --write-out against the formats the
 * command offers (a mask of 1 << CTL_OUT_*). Returns an exit code. */
int ctl_args(struct ctl *ctl, int argc, char **argv, const struct ctl_flag *flags, unsigned formats,
             int *n_pos);
#define CTL_FORMATS_SJ ((1u << CTL_OUT_SIMPLE) | (1u << CTL_OUT_JSON))
#define CTL_FORMATS_ALL (CTL_FORMATS_SJ | (1u << CTL_OUT_TABLE))

/* The blocking client, created on first use from the global flags. Prints
 * the error and returns NULL when it cannot be created. */
cairn_sync *ctl_client(struct ctl *ctl);

/* A client for other endpoints (endpoint --cluster, defrag --cluster):
 * same TLS and timeouts. Close with cairn_sync_close(). */
int ctl_client_for(struct ctl *ctl, const struct ctl_strings *endpoints, cairn_sync **out);

/* The URL the client was given for endpoint i of ctl->endpoints. */
const char *ctl_endpoint_url(const struct ctl *ctl, size_t i);

/* Per-call options with the command timeout. */
struct cairn_call_opts ctl_opts(const struct ctl *ctl);

/* For commands that run until a signal (watch, keep-alive): SIGINT and
 * SIGTERM get their default action back (a shell starts background jobs
 * with SIGINT ignored, and an ignored signal never reaches sigwait()),
 * then SIGINT, SIGTERM and SIGUSR1 (the command's own end) are blocked in
 * *set for sigwait(). Call before ctl_client(): the library's thread
 * inherits the mask. */
void ctl_signals_block(sigset_t *set);

/* "Error: <fmt>" on stderr; returns code. */
int ctl_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The error of a failed blocking call: "Error: <server text>" (or the
 * library's text for a negative code), with prefix "<prefix> (<text>)"
 * when prefix is non-NULL (etcdctl's "failed to revoke lease (...)"). */
int ctl_call_error(int rc, const struct cairn_error *err, const char *prefix);

/* A command: name (possibly two words: "lease grant"), its function. */
struct ctl_command {
  const char *name;
  const char *sub;
  int (*run)(struct ctl *ctl, int argc, char **argv);
  const char *usage;
};

/* The commands, by family. argv[0] is the first argument after the
 * command's name (argc may be 0); flags are still in argv. */
int cmd_get(struct ctl *ctl, int argc, char **argv);
int cmd_put(struct ctl *ctl, int argc, char **argv);
int cmd_del(struct ctl *ctl, int argc, char **argv);
int cmd_txn(struct ctl *ctl, int argc, char **argv);
int cmd_watch(struct ctl *ctl, int argc, char **argv);
int cmd_lease_grant(struct ctl *ctl, int argc, char **argv);
int cmd_lease_revoke(struct ctl *ctl, int argc, char **argv);
int cmd_lease_timetolive(struct ctl *ctl, int argc, char **argv);
int cmd_lease_list(struct ctl *ctl, int argc, char **argv);
int cmd_lease_keepalive(struct ctl *ctl, int argc, char **argv);
int cmd_member_list(struct ctl *ctl, int argc, char **argv);
int cmd_member_add(struct ctl *ctl, int argc, char **argv);
int cmd_member_remove(struct ctl *ctl, int argc, char **argv);
int cmd_member_update(struct ctl *ctl, int argc, char **argv);
int cmd_member_promote(struct ctl *ctl, int argc, char **argv);
int cmd_endpoint_status(struct ctl *ctl, int argc, char **argv);
int cmd_endpoint_health(struct ctl *ctl, int argc, char **argv);
int cmd_snapshot_save(struct ctl *ctl, int argc, char **argv);
int cmd_compaction(struct ctl *ctl, int argc, char **argv);
int cmd_defrag(struct ctl *ctl, int argc, char **argv);
int cmd_move_leader(struct ctl *ctl, int argc, char **argv);
int cmd_version(struct ctl *ctl, int argc, char **argv);

/* The client URLs of every member (member list), for --cluster. */
int member_cluster_endpoints(struct ctl *ctl, struct ctl_strings *out);

/* Calls fn once per endpoint (the ones given, or with cluster every
 * member's client URLs), with o->endpoint set to it; name is the endpoint
 * as printed. Returns the last nonzero code fn returned, or 0. */
int endpoint_each(struct ctl *ctl, bool cluster,
                  int (*fn)(struct ctl *ctl, cairn_sync *s, const char *name,
                            const struct cairn_call_opts *o, void *data),
                  void *data);

/* Parses a member ID (hex) as etcdctl does; prints its error. */
int member_parse_id(const char *arg, uint64_t *id);

/* ---- requests shared by kv.c and txn.c ------------------------------------ */

/* Builds a request from a get/put/del command line (flags included, as the
 * command takes them; txn's operations use the same syntax). Strings in
 * the request point into argv, or into buf (the range end of --prefix;
 * buf holds the key's length + 1 bytes). Prints the error; returns an
 * exit code. */
struct ctl_get_opts {
  bool keys_only, count_only, print_value_only;
};
int kv_build_range(int argc, char **argv, Etcdserverpb__RangeRequest *req,
                   struct ctl_get_opts *gopts, uint8_t *buf);
int kv_build_put(int argc, char **argv, Etcdserverpb__PutRequest *req);
int kv_build_delete(int argc, char **argv, Etcdserverpb__DeleteRangeRequest *req, uint8_t *buf);

/* The largest key kv_build_* accept in buf, plus one. */
size_t kv_buf_size(int argc, char **argv);

/* ---- output (output.c) ---------------------------------------------------- */

/* Simple printers, byte for byte etcdctl's. */
void out_kv(const struct ctl *ctl, const Mvccpb__KeyValue *kv, bool value_only);
void out_range(const struct ctl *ctl, const Etcdserverpb__RangeResponse *r, bool value_only);
void out_put(const struct ctl *ctl, const Etcdserverpb__PutResponse *r);
void out_delete(const struct ctl *ctl, const Etcdserverpb__DeleteRangeResponse *r);

/* JSON as etcdctl -w json writes it (Go's encoding/json of the gogo
 * structs: fields omitted when zero, bytes in base64, int64 as numbers).
 * A writer for one object at a time. */
struct jw {
  FILE *f;
  bool first; /* no field written yet in the current object */
};
void jw_begin(struct jw *j, FILE *f);         /* "{" */
void jw_end(struct jw *j);                    /* "}" */
void jw_key(struct jw *j, const char *name);  /* ,"name": */
void jw_open(struct jw *j, const char *name); /* ,"name":{ (a nested object) */
void jw_close(struct jw *j);                  /* } of a nested object */
void jw_i64(struct jw *j, const char *name, int64_t v, bool always);
void jw_u64(struct jw *j, const char *name, uint64_t v, bool always);
void jw_bool(struct jw *j, const char *name, bool v, bool always);
void jw_str(struct jw *j, const char *name, const char *s, bool always);
void jw_bytes(struct jw *j, const char *name, const ProtobufCBinaryData *b, bool always);
void jw_string_value(FILE *f, const char *s, size_t len); /* "..." escaped */
void jw_b64_value(FILE *f, const uint8_t *p, size_t len); /* "..." base64 */

/* Fields of a ResponseHeader (inline: into the current object). */
void json_header_fields(struct jw *j, const Etcdserverpb__ResponseHeader *h);
/* "header":{...} when h is non-NULL. */
void json_header(struct jw *j, const Etcdserverpb__ResponseHeader *h);
/* A KeyValue object as a value. */
void json_kv(FILE *f, const Mvccpb__KeyValue *kv);
void json_range(FILE *f, const Etcdserverpb__RangeResponse *r);
void json_put(FILE *f, const Etcdserverpb__PutResponse *r);
void json_delete(FILE *f, const Etcdserverpb__DeleteRangeResponse *r);
void json_txn(FILE *f, const Etcdserverpb__TxnResponse *r);
void json_member(FILE *f, const Etcdserverpb__Member *m);
/* "members":[...] (omitted when n is 0). */
void json_members(struct jw *j, Etcdserverpb__Member **m, size_t n);

/* Tables as etcdctl's (olekukonko/tablewriter, right-aligned cells,
 * centred upper-case headers). cells holds n_rows * n_cols strings. */
void out_table(FILE *f, const char *const *headers, size_t n_cols, const char *const *cells,
               size_t n_rows);

/* go-humanize's Bytes(): "20 kB", "1.2 MB". */
void out_humanize_bytes(char *buf, size_t size, uint64_t n);
/* Go's time.Duration String() of ns: "13.265137ms", "1.5s". */
void out_go_duration(char *buf, size_t size, uint64_t ns);

#endif
