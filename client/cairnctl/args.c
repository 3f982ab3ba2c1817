/* client/cairnctl/args.c: flags the way etcdctl's pflag reads them:
 * --name=value, --name value, -c value, -cvalue, booleans as --name or
 * --name=true|false, flags anywhere among the arguments, "--" ends them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

int ctl_parse_i64(const char *s, int base, int64_t *out) {
  char *end;
  if (s == NULL || *s == '\0')
    return -1;
  errno = 0;
  long long v = strtoll(s, &end, base);
  if (errno != 0 || *end != '\0')
    return -1;
  *out = (int64_t)v;
  return 0;
}

int ctl_parse_u64(const char *s, int base, uint64_t *out) {
  char *end;
  if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, base);
  if (errno != 0 || *end != '\0')
    return -1;
  *out = (uint64_t)v;
  return 0;
}

/* Go's time.ParseDuration, reduced to what a timeout needs: a sequence of
 * <decimal><unit> with units ns us µs ms s m h. */
int ctl_parse_duration_ms(const char *s, uint64_t *out) {
  static const struct {
    const char *unit;
    double ms;
  } units[] = {{"ns", 1e-6}, {"us", 1e-3}, {"\xc2\xb5s", 1e-3}, {"ms", 1.0},
               {"s", 1e3},   {"m", 6e4},   {"h", 3.6e6}};
  double total = 0;
  if (s == NULL || *s == '\0')
    return -1;
  if (strcmp(s, "0") == 0) {
    *out = 0;
    return 0;
  }
  while (*s != '\0') {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || v < 0)
      return -1;
    s = end;
    size_t best = 0, best_len = 0;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
      size_t len = strlen(units[i].unit);
      /* Longest match: "ms" before "m". */
      if (strncmp(s, units[i].unit, len) == 0 && len > best_len) {
        best = i;
        best_len = len;
      }
    }
    if (best_len == 0)
      return -1;
    total += v * units[best].ms;
    s += best_len;
  }
  *out = (uint64_t)(total + 0.5);
  return 0;
}

void ctl_strings_clear(struct ctl_strings *s) {
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i]);
  s->n = 0;
}

int ctl_strings_add_list(struct ctl_strings *s, const char *list) {
  const char *p = list;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
    if (len > 0) {
      if (s->n == CTL_STRINGS_MAX)
        return ctl_error(CTL_EXIT_BAD_ARGS, "too many items in \"%s\" (at most %u)", list,
                         CTL_STRINGS_MAX);
      char *item = strndup(p, len);
      if (item == NULL)
        return ctl_error(CTL_EXIT_ERROR, "out of memory");
      s->v[s->n++] = item;
    }
    if (comma == NULL)
      return 0;
    p = comma + 1;
  }
}

static int parse_bool(const char *v, bool *out) {
  static const char *const yes[] = {"1", "t", "T", "true", "TRUE", "True"};
  static const char *const no[] = {"0", "f", "F", "false", "FALSE", "False"};
  for (size_t i = 0; i < 6; i++) {
    if (strcmp(v, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcmp(v, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return -1;
}

/* Sets a flag from its text; prints pflag's error on a bad value. */
static int flag_set(const struct ctl_flag *f, const char *value) {
  int bad = 0;
  switch (f->type) {
    case CTL_FLAG_BOOL:
      bad = parse_bool(value, f->dst);
      break;
    case CTL_FLAG_STRING:
      *(const char **)f->dst = value;
      break;
    case CTL_FLAG_INT:
      bad = ctl_parse_i64(value, 0, f->dst);
      break;
    case CTL_FLAG_DURATION:
      bad = ctl_parse_duration_ms(value, f->dst);
      break;
    case CTL_FLAG_STRINGS: {
      /* A flag given again replaces what the environment said: etcdctl's
       * --endpoints is one value, not an accumulation over sources. */
      struct ctl_strings *s = f->dst;
      ctl_strings_clear(s);
      return ctl_strings_add_list(s, value);
    }
  }
  if (bad != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS, "invalid argument \"%s\" for \"--%s\" flag", value,
                     f->name);
  return 0;
}

static const struct ctl_flag *flag_find(const struct ctl_flag *flags,
                                        const struct ctl_flag *globals, const char *name,
                                        size_t len, char shorthand) {
  const struct ctl_flag *tables[2] = {flags, globals};
  for (size_t t = 0; t < 2; t++) {
    for (const struct ctl_flag *f = tables[t]; f != NULL && f->name != NULL; f++) {
      if (shorthand != 0 ? f->shorthand == shorthand
                         : strlen(f->name) == len && strncmp(f->name, name, len) == 0)
        return f;
    }
  }
  return NULL;
}

int ctl_apply_env(const struct ctl_flag *flags) {
  for (const struct ctl_flag *f = flags; f->name != NULL; f++) {
    const char *v = f->env != NULL ? getenv(f->env) : NULL;
    if (v == NULL || *v == '\0')
      continue;
    int rc = flag_set(f, v);
    if (rc != 0)
      return rc;
  }
  return 0;
}

int ctl_parse_flags(int argc, char **argv, const struct ctl_flag *flags,
                    const struct ctl_flag *globals, int *n_pos) {
  int pos = 0;
  bool flags_done = false;
  for (int i = 0; i < argc; i++) {
    char *a = argv[i];
    if (flags_done || a[0] != '-' || a[1] == '\0') {
      argv[pos++] = a;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      flags_done = true;
      continue;
    }
    const struct ctl_flag *f;
    const char *value = NULL;
    if (a[1] == '-') {
      const char *name = a + 2;
      const char *eq = strchr(name, '=');
      size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
      f = flag_find(flags, globals, name, len, 0);
      if (f == NULL)
        return ctl_error(CTL_EXIT_BAD_ARGS, "unknown flag: --%.*s", (int)len, name);
      if (eq != NULL)
        value = eq + 1;
    } else {
      f = flag_find(flags, globals, NULL, 0, a[1]);
      if (f == NULL)
        return ctl_error(CTL_EXIT_BAD_ARGS, "unknown shorthand flag: '%c' in %s", a[1], a);
      if (a[2] != '\0')
        value = a[2] == '=' ? a + 3 : a + 2;
    }
    if (value == NULL) {
      if (f->type == CTL_FLAG_BOOL) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return ctl_error(CTL_EXIT_BAD_ARGS, "flag needs an argument: --%s", f->name);
      }
    }
    int rc = flag_set(f, value);
    if (rc != 0)
      return rc;
  }
  *n_pos = pos;
  return 0;
}
